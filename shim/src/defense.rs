//! The self-defense loop of one task (docs/defense.md): a thread that
//! samples the app partition's counters (its seccomp refusals, the
//! sidecar's refusals and pause overruns, the memory cgroup's OOM kills,
//! the relay's rate-limit refusals) and carries out what
//! `[defense]`'s rules decide, through the sidecar's admin API, containerd's
//! events and the partition's own kill. The rules and the audit log are
//! `furnace-defense`'s; this is the partition side of its `Guarded` seam.

use crate::events::Events;
use crate::instance::Instance;
use crate::registration::Registration;
use containerd_shim::protos::protobuf::well_known_types::wrappers::StringValue;
use furnace_api::v1::RestrictRequest;
use furnace_api::Admin;
use furnace_defense::{AuditLog, AuditRecord, Condition, Decision, Guarded, Response, Totals};
use furnace_runtime::config::DefenseConfig;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

/// The topic of the events the `event` response publishes; the payload is a
/// `google.protobuf.StringValue` holding the audit record's JSON.
pub const DEFENSE_TOPIC: &str = "/furnace/defense";

struct TaskGuard {
    instance: Weak<Instance>,
    events: Arc<Events>,
    /// `None` for an app with no guest: the sidecar's counters stay 0 and
    /// throttle and revoke fail.
    registration: Option<Registration>,
    cgroups_path: PathBuf,
    /// Kept between samples; dropped on an error and dialled again.
    admin: Mutex<Option<Admin>>,
}

impl TaskGuard {
    fn with_admin<T>(
        &self,
        call: impl Fn(&Admin) -> furnace_api::client::Result<T>,
    ) -> Result<T, String> {
        let registration = self
            .registration
            .as_ref()
            .ok_or("the app has no guest, so no sidecar")?;
        let mut admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        if admin.is_none() {
            let dialled = Admin::connect(&registration.admin_socket).map_err(|e| {
                format!(
                    "the sidecar of guest {} at {}: {e}",
                    registration.guest,
                    registration.admin_socket.display()
                )
            })?;
            *admin = Some(dialled);
        }
        let result = call(admin.as_ref().expect("dialled above"));
        if result.is_err() {
            *admin = None;
        }
        result.map_err(|e| e.to_string())
    }

    fn restrict(&self, request: RestrictRequest) -> Result<(), String> {
        self.with_admin(|admin| admin.restrict(&request)).map(drop)
    }
}

impl Guarded for TaskGuard {
    fn sample(&self, last: &Totals) -> Totals {
        let mut totals = *last;
        if let Some(registration) = &self.registration {
            let app = &registration.app_id;
            if let Ok(info) = self.with_admin(|admin| admin.get_app(app)) {
                totals.set(Condition::NotPermitted, info.not_permitted);
                totals.set(Condition::LimitExceeded, info.limit_exceeded);
                totals.set(Condition::PauseOverruns, info.pause_overruns);
            }
        }
        if let Some(kills) = crate::oom::kills(&self.cgroups_path) {
            totals.set(Condition::OomKills, kills);
        }
        if let Some(instance) = self.instance.upgrade() {
            if let Some(refused) = instance.relay_rate_limited() {
                totals.set(Condition::RelayRateLimited, refused);
            }
            if let Some(refused) = instance.seccomp_refused() {
                totals.set(Condition::SeccompViolations, refused);
            }
        }
        totals
    }

    fn respond(&self, decision: &Decision, record: &AuditRecord) -> Result<(), String> {
        let app_id = self
            .registration
            .as_ref()
            .map(|r| r.app_id.clone())
            .unwrap_or_default();
        match decision.response {
            Response::Log => Ok(()),
            Response::Event => {
                let mut event = StringValue::new();
                event.value = serde_json::to_string(record).map_err(|e| e.to_string())?;
                self.events.publish(DEFENSE_TOPIC, Box::new(event));
                Ok(())
            }
            Response::Throttle { calls_per_second } => self.restrict(RestrictRequest {
                app_id,
                calls_per_second,
                revoke: Vec::new(),
            }),
            Response::Revoke { permission } => self.restrict(RestrictRequest {
                app_id,
                calls_per_second: 0,
                revoke: vec![permission as i32],
            }),
            Response::Kill => {
                let instance = self.instance.upgrade().ok_or("the task is gone")?;
                instance
                    .partition()
                    .kill(libc::SIGKILL as u32, true)
                    .map_err(|e| e.to_string())
            }
        }
    }

    fn is_gone(&self) -> bool {
        self.instance
            .upgrade()
            .is_none_or(|instance| instance.init.status().1.is_some())
    }
}

/// Starts the loop for `instance`, an app, under `config`'s rules; it ends
/// with the task. Without rules, or for a sandbox, there is nothing to
/// watch.
pub fn watch(
    instance: &Arc<Instance>,
    partition: String,
    config: &DefenseConfig,
    events: Arc<Events>,
) {
    let registration = instance.registration().cloned();
    if registration.is_none() && instance.seccomp_refused().is_none() {
        return;
    }
    if config.rules.is_empty() {
        return;
    }
    let audit = match AuditLog::open(&config.audit_log) {
        Ok(log) => Some(log),
        Err(e) => {
            log::error!(
                "{partition}: the audit log {} cannot be opened ({e}); decisions go to this log only",
                config.audit_log.display()
            );
            None
        }
    };
    let guard = TaskGuard {
        instance: Arc::downgrade(instance),
        events,
        registration,
        cgroups_path: instance.record.cgroups_path.clone(),
        admin: Mutex::new(None),
    };
    let config = config.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("defense-{}", instance.id))
        .spawn(move || furnace_defense::guard(&guard, &partition, &config, audit.as_ref()));
    if let Err(e) = spawned {
        log::error!("{}: the self-defense loop cannot start: {e}", instance.id);
    }
}
