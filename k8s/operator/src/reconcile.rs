//! One pass over one FurnaceApp: make its pod match its spec, on its
//! guest's node, and say in its status what came of it.

use crate::metrics::Metrics;
use crate::pod;
use crate::status::{self, Observed};
use furnace_crd::app::{Phase, RestartPolicy};
use furnace_crd::{FurnaceApp, FurnaceAppStatus, FurnaceGuest};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{finalizer, Event as Finalized};
use kube::{Api, Client, Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;

/// Held until the app's pod is gone: its containers stopped, which is when
/// the shim unregisters the app from its guest's sidecar.
pub const FINALIZER: &str = "operator.furnace.dev/unregister";
/// The field manager of everything the operator writes.
pub const MANAGER: &str = "furnace-operator";

/// A missing guest is also watched for; this is the backstop.
const GUEST_RECHECK: Duration = Duration::from_secs(60);
/// How often a settled app is looked at again without any change seen.
const RESYNC: Duration = Duration::from_secs(300);
/// While a pod is going away (a roll, a deletion).
const POD_GOING: Duration = Duration::from_secs(2);

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("FurnaceApp {0} has no namespace; FurnaceApps are namespaced")]
    NoNamespace(String),
    #[error("pod {0} is still stopping; the finalizer stays until it is gone")]
    PodStillStopping(String),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// A label for the error-count metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Api(_) => "api",
            Error::NoNamespace(_) => "no_namespace",
            Error::PodStillStopping(_) => "pod_stopping",
            Error::Finalizer(e) => match &**e {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
        }
    }
}

pub async fn reconcile(app: Arc<FurnaceApp>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let ns = app
        .namespace()
        .ok_or_else(|| Error::NoNamespace(app.name_any()))?;
    let apps: Api<FurnaceApp> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&apps, FINALIZER, app, |event| async {
        let pass = Pass {
            ctx: &ctx,
            apps: &apps,
            pods: Api::namespaced(ctx.client.clone(), &ns),
            guests: Api::namespaced(ctx.client.clone(), &ns),
        };
        match event {
            Finalized::Apply(app) => pass.apply(&app).await,
            Finalized::Cleanup(app) => pass.cleanup(&app).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Requeues a failed pass: soon while a pod stops, later for the rest.
pub fn error_policy(_app: Arc<FurnaceApp>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error.kind());
    match error.kind() {
        "pod_stopping" => Action::requeue(POD_GOING),
        _ => Action::requeue(Duration::from_secs(15)),
    }
}

struct Pass<'a> {
    ctx: &'a Context,
    apps: &'a Api<FurnaceApp>,
    pods: Api<Pod>,
    guests: Api<FurnaceGuest>,
}

impl Pass<'_> {
    async fn apply(&self, app: &FurnaceApp) -> Result<Action, Error> {
        let Some(guest) = self.guests.get_opt(&app.spec.guest).await? else {
            self.write_status(app, Observed::GuestMissing).await?;
            return Ok(Action::requeue(GUEST_RECHECK));
        };
        let desired = pod::desired(app, &guest);
        let name = pod::pod_name(app);
        let current = self.pods.get_opt(&name).await?;
        let pod = match current {
            None => {
                let params = PostParams {
                    field_manager: Some(MANAGER.into()),
                    ..Default::default()
                };
                let created = match self.pods.create(&params, &desired).await {
                    Ok(created) => created,
                    // Refused as it stands (a quota, an admission policy, a
                    // forbidden field): retrying at once would not help, and
                    // the tenant needs to read why.
                    Err(kube::Error::Api(e)) if (400..500).contains(&e.code) && e.code != 409 => {
                        let why = format!("the pod was refused: {}", e.message);
                        self.event(
                            app,
                            EventType::Warning,
                            "PodRefused",
                            "CreatePod",
                            why.clone(),
                        )
                        .await;
                        self.write_status(app, Observed::PodRefused(&why)).await?;
                        return Ok(Action::requeue(GUEST_RECHECK));
                    }
                    Err(e) => return Err(e.into()),
                };
                self.ctx.metrics.pod_created();
                let note = format!("pod {name} on node {}", guest.spec.node);
                self.event(app, EventType::Normal, "PodCreated", "CreatePod", note)
                    .await;
                Some(created)
            }
            Some(p) if !pod::is_owned_by(&p, app) => {
                self.write_status(app, Observed::NameTaken(&name)).await?;
                return Ok(Action::requeue(GUEST_RECHECK));
            }
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                self.write_status(app, Observed::Guest { pod: None })
                    .await?;
                return Ok(Action::requeue(POD_GOING));
            }
            Some(p) if pod::revision_of(&p) != pod::revision_of(&desired) => {
                self.delete_pod(
                    app,
                    &name,
                    "PodRolled",
                    "the spec changed; the pod is replaced",
                )
                .await?;
                self.write_status(app, Observed::Guest { pod: None })
                    .await?;
                return Ok(Action::requeue(POD_GOING));
            }
            Some(p) if failed(&p) && app.spec.restart_policy != RestartPolicy::Never => {
                // kubelet restarts a container in place; a pod that failed as
                // a whole (evicted, its node lost) needs a new pod.
                let why = format!(
                    "{}; restartPolicy {}: a new pod replaces it",
                    status::failure(&p),
                    app.spec.restart_policy.name()
                );
                self.delete_pod(app, &name, "PodReplaced", &why).await?;
                self.write_status(app, Observed::Guest { pod: None })
                    .await?;
                return Ok(Action::requeue(POD_GOING));
            }
            Some(p) => Some(p),
        };
        self.write_status(app, Observed::Guest { pod: pod.as_ref() })
            .await?;
        Ok(Action::requeue(RESYNC))
    }

    /// Deletes the pod and keeps the finalizer until it is gone.
    async fn cleanup(&self, app: &FurnaceApp) -> Result<Action, Error> {
        let name = pod::pod_name(app);
        match self.pods.get_opt(&name).await? {
            Some(p) if pod::is_owned_by(&p, app) => {
                if p.metadata.deletion_timestamp.is_none() {
                    self.delete_pod(app, &name, "PodDeleted", "the FurnaceApp is being deleted")
                        .await?;
                }
                Err(Error::PodStillStopping(name))
            }
            _ => {
                let note = format!("pod {name} is gone; the app is unregistered from its sidecar");
                self.event(app, EventType::Normal, "Unregistered", "DeletePod", note)
                    .await;
                Ok(Action::await_change())
            }
        }
    }

    async fn delete_pod(
        &self,
        app: &FurnaceApp,
        name: &str,
        reason: &str,
        why: &str,
    ) -> Result<(), Error> {
        match self.pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        self.event(
            app,
            EventType::Normal,
            reason,
            "DeletePod",
            format!("pod {name}: {why}"),
        )
        .await;
        Ok(())
    }

    /// Writes the status by server-side apply, only when it changed, and
    /// records the transition as an Event.
    async fn write_status(&self, app: &FurnaceApp, observed: Observed<'_>) -> Result<(), Error> {
        let now = Time(jiff_now());
        let status = status::compute(app, observed, &now);
        let old = app.status.clone().unwrap_or_default();
        if old == status {
            return Ok(());
        }
        let body = serde_json::json!({
            "apiVersion": "furnace.dev/v1alpha1",
            "kind": "FurnaceApp",
            "status": status,
        });
        let params = PatchParams::apply(MANAGER).force();
        self.apps
            .patch_status(&app.name_any(), &params, &Patch::Apply(&body))
            .await?;
        if let Some((type_, reason)) = transition(&old, &status) {
            let note = status.message.clone().unwrap_or_default();
            self.event(app, type_, reason, "UpdateStatus", note).await;
        }
        Ok(())
    }

    /// Events are best effort: a refused Event must not fail the pass.
    async fn event(
        &self,
        app: &FurnaceApp,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self
            .ctx
            .recorder
            .publish(&event, &app.object_ref(&()))
            .await
        {
            tracing::warn!(app = %app.name_any(), error = %e, "could not record an event");
        }
    }
}

fn failed(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

/// The Event a status change deserves: one per new phase, or per a guest
/// found or lost.
fn transition(old: &FurnaceAppStatus, new: &FurnaceAppStatus) -> Option<(EventType, &'static str)> {
    let found = |s: &FurnaceAppStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == furnace_crd::app::GUEST_FOUND)
            .map(|c| c.status.clone())
    };
    if found(old) != found(new) && found(new).as_deref() == Some("False") {
        return Some((EventType::Warning, "GuestMissing"));
    }
    if old.phase == new.phase && found(old) == found(new) {
        return None;
    }
    Some(match new.phase {
        Some(Phase::Failed) => (EventType::Warning, "Failed"),
        Some(Phase::Succeeded) => (EventType::Normal, "Succeeded"),
        Some(Phase::Running) => (EventType::Normal, "Running"),
        Some(Phase::Pending) | None => (EventType::Normal, "Pending"),
    })
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}
