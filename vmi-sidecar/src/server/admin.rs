//! The admin service: register and unregister apps, list them, report health.

use super::apps::App;
use super::ops::{invalid, OpResult};
use super::vmi::permission_name;
use super::{accept_loop, connection, Sidecar};
use crate::driver::RunState;
use furnace_api::v1::{self, Permission};
use furnace_api::{ApiError, ErrorCode};
use prost::Message;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::sockets::{valid_app_id, MAX_APP_ID};

impl Sidecar {
    pub(super) fn handle_admin(
        self: &Arc<Self>,
        method: &str,
        payload: &[u8],
    ) -> OpResult<Vec<u8>> {
        let decode = |what| invalid(format!("undecodable {what} request"));
        match method {
            "Register" => {
                let r = v1::RegisterRequest::decode(payload).map_err(|_| decode("Register"))?;
                Ok(self.register(&r)?.encode_to_vec())
            }
            "Unregister" => {
                let r = v1::UnregisterRequest::decode(payload).map_err(|_| decode("Unregister"))?;
                Ok(self.unregister(&r.app_id)?.encode_to_vec())
            }
            "ListApps" => Ok(v1::ListAppsResponse {
                apps: self.list_apps(),
            }
            .encode_to_vec()),
            "Health" => Ok(self.health().encode_to_vec()),
            "GetApp" => {
                let r = v1::GetAppRequest::decode(payload).map_err(|_| decode("GetApp"))?;
                let app = self.registered(&r.app_id)?;
                Ok(self.app_info(&app).encode_to_vec())
            }
            "Restrict" => {
                let r = v1::RestrictRequest::decode(payload).map_err(|_| decode("Restrict"))?;
                Ok(self.restrict(&r)?.encode_to_vec())
            }
            _ => Err(ApiError::new(
                ErrorCode::Unsupported,
                format!("no method /furnace.vmi.v1.Admin/{method}"),
            )),
        }
    }

    /// Registers an app: binds `apps/<id>.sock` for its uid alone and serves it.
    pub fn register(
        self: &Arc<Self>,
        request: &v1::RegisterRequest,
    ) -> OpResult<v1::RegisterResponse> {
        let id = &request.app_id;
        if !valid_app_id(id) {
            return Err(invalid(format!("app id {id:?} must be 1-{MAX_APP_ID} characters of [A-Za-z0-9_.-], not starting with '.'")));
        }
        let mut permissions: BTreeSet<Permission> = permissions(&request.permissions)?;
        if permissions.is_empty() {
            permissions.insert(Permission::Read);
        }
        let socket = self.sockets.path(id);
        let app = Arc::new(App::new(
            id.clone(),
            permissions,
            socket.clone(),
            request.uid,
            request.gid,
        ));
        if !self.apps.insert(Arc::clone(&app)) {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!("app {id} is already registered"),
            ));
        }
        let listener = match self
            .sockets
            .bind(id, request.uid, request.gid)
            .and_then(|l| app.keep_listener(&l).map(|()| l))
        {
            Ok(l) => l,
            Err(e) => {
                self.sockets.remove(id);
                self.apps.remove(id);
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("binding {}: {e}", socket.display()),
                ));
            }
        };
        let sidecar = Arc::clone(self);
        let accepting = Arc::clone(&app);
        let spawned = std::thread::Builder::new()
            .name(format!("accept-{id}"))
            .spawn(move || {
                accept_loop(
                    &listener,
                    || accepting.is_closed(),
                    |stream| {
                        let (sidecar, app) = (Arc::clone(&sidecar), Arc::clone(&accepting));
                        connection::spawn(move || connection::serve_app(&sidecar, &app, stream));
                    },
                );
            });
        if let Err(e) = spawned {
            self.apps.remove(id);
            self.sockets.remove(id);
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("starting the app's accept thread: {e}"),
            ));
        }
        tracing::info!(app = %id, permissions = ?app.permissions.iter().map(|p| permission_name(*p)).collect::<Vec<_>>(), uid = request.uid, "registered");
        Ok(v1::RegisterResponse {
            socket_path: socket.display().to_string(),
        })
    }

    /// Unregisters an app: its socket disappears, its open connections close
    /// at once, and its pause leases end.
    pub fn unregister(&self, id: &str) -> OpResult<v1::UnregisterResponse> {
        let app = self.apps.remove(id).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("no app {id} is registered"))
        })?;
        app.closed.store(true, Ordering::Release);
        // The accept thread wakes, sees `closed` and drops the listener.
        app.wake_accept();
        self.sockets.remove(id);
        for stream in app.connections().values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let released = self.leases.release_where(|h| h.app == id);
        self.leases.forget(id);
        let subscriptions = self.events.remove_where(|o| o.app == id);
        tracing::info!(app = %id, released_leases = released, subscriptions, "unregistered");
        Ok(v1::UnregisterResponse {
            released_pause: released > 0,
        })
    }

    fn list_apps(&self) -> Vec<v1::AppInfo> {
        self.apps
            .all()
            .iter()
            .map(|app| self.app_info(app))
            .collect()
    }

    fn registered(&self, id: &str) -> OpResult<Arc<App>> {
        self.apps
            .get(id)
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("no app {id} is registered")))
    }

    fn app_info(&self, app: &App) -> v1::AppInfo {
        let r = &app.restrictions;
        v1::AppInfo {
            app_id: app.id.clone(),
            permissions: app.granted().iter().map(|p| *p as i32).collect(),
            socket_path: app.socket.display().to_string(),
            connections: app.connections().len() as u32,
            leases: self.leases.count_where(|h| h.app == app.id) as u32,
            subscriptions: self.events.subscription_count(&app.id) as u32,
            not_permitted: r.not_permitted(),
            limit_exceeded: r.limit_exceeded(),
            pause_overruns: self.leases.overruns(&app.id),
            throttle_calls_per_second: r.calls_per_second(),
            revoked: app
                .permissions
                .iter()
                .filter(|p| r.is_revoked(**p))
                .map(|p| *p as i32)
                .collect(),
        }
    }

    /// The self-defense loop's answers: a throttle on the app's calls, and
    /// permissions taken back along with what they hold.
    fn restrict(&self, request: &v1::RestrictRequest) -> OpResult<v1::AppInfo> {
        let app = self.registered(&request.app_id)?;
        let revoke: Vec<Permission> = permissions(&request.revoke)?;
        app.restrictions.throttle(request.calls_per_second);
        for p in &revoke {
            app.restrictions.revoke(*p);
        }
        let id = app.id.as_str();
        let released = if revoke.contains(&Permission::Pause) {
            self.leases.release_where(|h| h.app == id)
        } else {
            0
        };
        let ended =
            if revoke.contains(&Permission::Events) || revoke.contains(&Permission::Syscalls) {
                self.events.remove_where(|o| o.app == id)
            } else {
                0
            };
        tracing::warn!(
            app = %id,
            calls_per_second = request.calls_per_second,
            revoked = ?revoke.iter().map(|p| permission_name(*p)).collect::<Vec<_>>(),
            released_leases = released,
            ended_subscriptions = ended,
            "restricted by the provider"
        );
        Ok(self.app_info(&app))
    }

    fn health(&self) -> v1::HealthResponse {
        let run_state = match self.kernel.driver().control().map(|c| c.run_state()) {
            _ if self.guest_gone() => "gone".to_owned(),
            Some(Ok(RunState::Running)) => "running".to_owned(),
            Some(Ok(RunState::Paused)) => "paused".to_owned(),
            Some(Ok(RunState::Other(s))) => s,
            Some(Err(e)) => format!("unknown: {e}"),
            None => "snapshot".to_owned(),
        };
        let (event_breakpoints, debugger_attached) = self.events.debugger_status();
        v1::HealthResponse {
            guest: self.guest.clone(),
            run_state,
            kernel_banner: self
                .kernel
                .banner()
                .unwrap_or_else(|e| format!("unreadable: {e}")),
            apps: self.apps.ids().len() as u32,
            event_breakpoints,
            debugger_attached,
        }
    }
}

/// Permissions as the wire has them; an unknown or unspecified one is refused.
fn permissions<C: FromIterator<Permission>>(values: &[i32]) -> OpResult<C> {
    values
        .iter()
        .map(|&p| match Permission::try_from(p) {
            Ok(Permission::Unspecified) | Err(_) => Err(invalid(format!("unknown permission {p}"))),
            Ok(p) => Ok(p),
        })
        .collect()
}
