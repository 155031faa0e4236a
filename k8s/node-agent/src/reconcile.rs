//! One pass over one FurnaceGuest of this node: its sidecar runs as the spec
//! says, and the guest's status says whether it answers and what it attached to.

use crate::supervisor::{ClaimError, ProcessState, Supervisor};
use furnace_crd::conditions::{condition, settle};
use furnace_crd::guest::{SidecarLocation, ATTACHED, SIDECAR_READY};
use furnace_crd::{FurnaceGuest, FurnaceGuestStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalized};
use kube::{Api, Client, ResourceExt};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Held while the guest's sidecar runs, so deleting the guest stops it.
pub const FINALIZER: &str = "node.furnace.dev/sidecar";
pub const MANAGER: &str = "furnace-node-agent";
/// How often a guest's sidecar is health-checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(10);

/// What a sidecar's admin `Health` call told.
#[derive(Clone, Debug, PartialEq)]
pub struct Health {
    pub kernel_banner: String,
    pub run_state: String,
}

pub type HealthFuture = Pin<Box<dyn Future<Output = Result<Health, String>> + Send>>;

/// Asks the sidecar behind an admin socket for its health.
pub trait HealthProbe: Send + Sync {
    fn health(&self, admin_socket: PathBuf) -> HealthFuture;
}

/// The real probe: the sidecar's admin API, as the shim uses it.
pub struct AdminProbe;

impl HealthProbe for AdminProbe {
    fn health(&self, admin_socket: PathBuf) -> HealthFuture {
        Box::pin(async move {
            let call = tokio::task::spawn_blocking(move || {
                furnace_api::admin::Admin::connect(&admin_socket)?.health()
            });
            match call.await {
                Ok(Ok(h)) => Ok(Health {
                    kernel_banner: h.kernel_banner,
                    run_state: h.run_state,
                }),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("the health check failed: {e}")),
            }
        })
    }
}

pub struct Context {
    pub client: Client,
    pub node: String,
    pub supervisor: Arc<Supervisor>,
    pub probe: Box<dyn HealthProbe>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    #[error("FurnaceGuest {0} has no namespace or uid")]
    Unidentified(String),
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

pub async fn reconcile(guest: Arc<FurnaceGuest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = guest
        .namespace()
        .ok_or_else(|| Error::Unidentified(guest.name_any()))?;
    let api: Api<FurnaceGuest> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, guest, |event| async {
        match event {
            Finalized::Apply(g) => apply(&g, &ctx, &api).await,
            Finalized::Cleanup(g) => {
                ctx.supervisor.stop(&owner(&g)?, &g.name_any()).await;
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(_guest: Arc<FurnaceGuest>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "guest reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

fn owner(guest: &FurnaceGuest) -> Result<(String, String), Error> {
    match (guest.namespace(), guest.uid()) {
        (Some(ns), Some(uid)) => Ok((ns, uid)),
        _ => Err(Error::Unidentified(guest.name_any())),
    }
}

async fn apply(
    guest: &FurnaceGuest,
    ctx: &Context,
    api: &Api<FurnaceGuest>,
) -> Result<Action, Error> {
    let name = guest.name_any();
    if guest.spec.node != ctx.node {
        // Not this node's (the watch selects by node; this is the backstop).
        return Ok(Action::await_change());
    }
    let admin_socket = ctx.supervisor.command().admin_socket(&name);
    let seen = match ctx
        .supervisor
        .ensure(owner(guest)?, &name, &guest.spec)
        .await
    {
        Err(claim) => Seen::Refused(claim),
        Ok(()) => {
            let process = ctx.supervisor.state(&name).unwrap_or_default();
            let health = match process.pid {
                Some(_) => Some(ctx.probe.health(admin_socket.clone()).await),
                None => None,
            };
            Seen::Running { process, health }
        }
    };
    let status = compute(
        guest,
        &ctx.node,
        &admin_socket,
        seen,
        &Time(k8s_openapi::jiff::Timestamp::now()),
    );
    if guest.status.as_ref() != Some(&status) {
        let body = serde_json::json!({
            "apiVersion": "furnace.dev/v1alpha1",
            "kind": "FurnaceGuest",
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
    }
    Ok(Action::requeue(HEALTH_INTERVAL))
}

/// What the agent saw of a guest's sidecar on this pass.
pub enum Seen {
    Refused(ClaimError),
    Running {
        process: ProcessState,
        /// The health answer, when a process runs to ask.
        health: Option<Result<Health, String>>,
    },
}

/// The guest's status. Unchanged conditions keep their transition times, so
/// a healthy sidecar computes the status it already has and nothing is written.
pub fn compute(
    guest: &FurnaceGuest,
    node: &str,
    admin_socket: &Path,
    seen: Seen,
    now: &Time,
) -> FurnaceGuestStatus {
    let (ready, attached, pid) = match seen {
        Seen::Refused(claim) => {
            let m = claim.to_string();
            (
                condition(SIDECAR_READY, false, "NameInUse", &m),
                condition(ATTACHED, false, "NameInUse", &m),
                None,
            )
        }
        Seen::Running { process, health } => {
            let down = |why: &str| condition(ATTACHED, false, "SidecarDown", why);
            match (process.pid, health) {
                (Some(pid), Some(Ok(h))) => {
                    let ready = condition(
                        SIDECAR_READY,
                        true,
                        "Answering",
                        &format!("guest {}", h.run_state),
                    );
                    let attached = if h.kernel_banner.is_empty() {
                        condition(
                            ATTACHED,
                            false,
                            "NoKernel",
                            "the sidecar found no kernel banner in the guest",
                        )
                    } else {
                        condition(ATTACHED, true, "KernelFound", &h.kernel_banner)
                    };
                    (ready, attached, Some(pid))
                }
                (Some(pid), Some(Err(e))) => {
                    let why = format!(
                        "the sidecar (pid {pid}) does not answer on {}: {e}",
                        admin_socket.display()
                    );
                    (
                        condition(SIDECAR_READY, false, "NotAnswering", &why),
                        down(&why),
                        Some(pid),
                    )
                }
                _ => {
                    let why = process
                        .last_exit
                        .map(|e| format!("{e}; restarted {} times", process.restarts))
                        .unwrap_or_else(|| "starting the sidecar".into());
                    (
                        condition(SIDECAR_READY, false, "NotRunning", &why),
                        down(&why),
                        None,
                    )
                }
            }
        }
    };
    let old = guest
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let conditions = settle(vec![ready, attached], old, guest.metadata.generation, now);
    FurnaceGuestStatus {
        conditions,
        sidecar: Some(SidecarLocation {
            node: node.into(),
            pid: pid.map(i64::from),
            admin_socket: admin_socket.display().to_string(),
        }),
        observed_generation: guest.metadata.generation,
    }
}
