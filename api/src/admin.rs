//! The sidecar's admin API client: register, unregister and list apps, and
//! the sidecar's health.

use crate::client::{Result, ServiceClient, DEFAULT_TIMEOUT};
use crate::v1;
use crate::ADMIN_SERVICE;
use std::path::Path;

/// The sidecar's admin API (root only), used by the runtime and `furnace sidecar`.
pub struct Admin {
    client: ServiceClient,
}

impl Admin {
    pub fn connect(path: &Path) -> Result<Self> {
        Ok(Admin {
            client: ServiceClient::connect(ADMIN_SERVICE, path, DEFAULT_TIMEOUT)?,
        })
    }

    pub fn register(&self, request: &v1::RegisterRequest) -> Result<v1::RegisterResponse> {
        self.client.call("Register", request)
    }

    pub fn unregister(&self, app_id: &str) -> Result<v1::UnregisterResponse> {
        self.client.call(
            "Unregister",
            &v1::UnregisterRequest {
                app_id: app_id.into(),
            },
        )
    }

    pub fn list_apps(&self) -> Result<Vec<v1::AppInfo>> {
        Ok(self
            .client
            .call::<_, v1::ListAppsResponse>("ListApps", &v1::ListAppsRequest {})?
            .apps)
    }

    pub fn get_app(&self, app_id: &str) -> Result<v1::AppInfo> {
        self.client.call(
            "GetApp",
            &v1::GetAppRequest {
                app_id: app_id.into(),
            },
        )
    }

    pub fn restrict(&self, request: &v1::RestrictRequest) -> Result<v1::AppInfo> {
        self.client.call("Restrict", request)
    }

    pub fn health(&self) -> Result<v1::HealthResponse> {
        self.client.call("Health", &v1::HealthRequest {})
    }
}
