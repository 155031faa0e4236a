//! A FurnaceApp's status, computed from what the operator observed.

use furnace_crd::app::{Phase, GUEST_FOUND, READY, SCHEDULED};
use furnace_crd::conditions::{condition, settle};
use furnace_crd::{FurnaceApp, FurnaceAppStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

/// What the operator saw of the app's world on this pass.
pub enum Observed<'a> {
    /// `spec.guest` names no FurnaceGuest in the app's namespace.
    GuestMissing,
    /// The guest exists; the app's pod, if any, is this.
    Guest { pod: Option<&'a Pod> },
    /// A pod of the app's name exists and belongs to something else.
    NameTaken(&'a str),
    /// The apiserver refused to create the pod, for this reason.
    PodRefused(&'a str),
}

/// The status `app` should show. Conditions whose status did not change keep
/// their old transition time, so an unchanged world computes an unchanged
/// status and nothing is written.
pub fn compute(app: &FurnaceApp, observed: Observed<'_>, now: &Time) -> FurnaceAppStatus {
    let generation = app.metadata.generation;
    let ns = app.namespace().unwrap_or_default();
    let guest = &app.spec.guest;
    let mut status = FurnaceAppStatus {
        observed_generation: generation,
        ..Default::default()
    };
    let found = || {
        condition(
            GUEST_FOUND,
            true,
            "GuestFound",
            &format!("FurnaceGuest {guest:?}"),
        )
    };
    let conditions = match observed {
        Observed::GuestMissing => {
            status.phase = Some(Phase::Pending);
            let message = format!(
                "FurnaceGuest {guest:?} is not in namespace {ns:?}; create it there, or correct spec.guest"
            );
            status.message = Some(message.clone());
            vec![
                condition(GUEST_FOUND, false, "GuestMissing", &message),
                condition(
                    SCHEDULED,
                    false,
                    "GuestMissing",
                    "no pod until the guest exists",
                ),
                condition(
                    READY,
                    false,
                    "GuestMissing",
                    "no pod until the guest exists",
                ),
            ]
        }
        Observed::NameTaken(name) => {
            status.phase = Some(Phase::Pending);
            let message = format!(
                "pod {name:?} exists in namespace {ns:?} and is not this FurnaceApp's; delete or rename it"
            );
            status.message = Some(message.clone());
            vec![
                found(),
                condition(SCHEDULED, false, "NameTaken", &message),
                condition(READY, false, "NameTaken", &message),
            ]
        }
        Observed::PodRefused(why) => {
            status.phase = Some(Phase::Pending);
            status.message = Some(why.to_string());
            vec![
                found(),
                condition(SCHEDULED, false, "PodRefused", why),
                condition(READY, false, "PodRefused", why),
            ]
        }
        Observed::Guest { pod: None } => {
            status.phase = Some(Phase::Pending);
            status.message = Some("creating the app's pod".into());
            vec![
                found(),
                condition(SCHEDULED, false, "NoPod", "the pod is not created yet"),
                condition(READY, false, "NoPod", "the pod is not created yet"),
            ]
        }
        Observed::Guest { pod: Some(pod) } => {
            status.pod_name = Some(pod.name_any());
            status.node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            let (phase, message) = phase_of(pod);
            status.phase = Some(phase);
            status.message = message;
            let scheduled = match &status.node {
                Some(node) => condition(SCHEDULED, true, "Bound", &format!("on node {node}")),
                None => {
                    let why = pod_condition(pod, "PodScheduled")
                        .and_then(|c| c.message.clone())
                        .unwrap_or_else(|| "waiting for the scheduler".into());
                    condition(SCHEDULED, false, "Unscheduled", &why)
                }
            };
            let ready = match pod_condition(pod, "Ready") {
                Some(c) if c.status == "True" => {
                    condition(READY, true, "ContainerReady", "the app runs")
                }
                Some(c) => condition(
                    READY,
                    false,
                    c.reason.as_deref().unwrap_or("NotReady"),
                    c.message
                        .as_deref()
                        .unwrap_or("the app's container is not running"),
                ),
                None => condition(
                    READY,
                    false,
                    "NotReady",
                    "the app's container is not running",
                ),
            };
            vec![found(), scheduled, ready]
        }
    };
    let old = app
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    status.conditions = settle(conditions, old, generation, now);
    status
}

/// The app's phase from its pod's, and for a failed pod what ended it.
fn phase_of(pod: &Pod) -> (Phase, Option<String>) {
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => (Phase::Running, None),
        Some("Succeeded") => (Phase::Succeeded, Some("the app exited 0".into())),
        Some("Failed") => (Phase::Failed, Some(failure(pod))),
        _ => (
            Phase::Pending,
            Some(format!("pod {} is pending", pod.name_any())),
        ),
    }
}

/// "exit code 3 (Error)", from the app container's last termination, or the
/// pod's own reason (an eviction, a refused admission).
pub fn failure(pod: &Pod) -> String {
    let status = pod.status.as_ref();
    let terminated = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .next();
    if let Some(t) = terminated {
        let mut text = format!("the app exited with code {}", t.exit_code);
        if let Some(reason) = &t.reason {
            text += &format!(" ({reason})");
        }
        if let Some(message) = t.message.as_deref().filter(|m| !m.is_empty()) {
            text += &format!(": {message}");
        }
        return text;
    }
    let reason = status.and_then(|s| s.reason.as_deref()).unwrap_or("Failed");
    let message = status
        .and_then(|s| s.message.as_deref())
        .unwrap_or("the pod failed");
    format!("pod {}: {reason}: {message}", pod.name_any())
}

fn pod_condition<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}
