//! `reconcile` against a mock API server (tower-test), as kube-rs's
//! controller-rs does it: each test scripts the requests one pass must make,
//! in order, checks each method, path and body, and answers it. A pass that
//! makes a request the script does not expect hangs on it and fails by the
//! time limit; one that makes fewer leaves the script waiting, and fails the
//! same way. This is a unit-level mock beside the real cluster tests, which
//! run the operator against a real apiserver.

use crate::metrics::Metrics;
use crate::mock_api::{Call, Handle};
use crate::pod::{self, APP_KEY_PATH, REVISION, RUNTIME_CLASS};
use crate::status::{self, Observed};
use crate::{reconcile, Context, Error, FINALIZER};
use furnace_crd::app::{Backend, Phase, RestartPolicy, SecretKeyRef};
use furnace_crd::{FurnaceApp, FurnaceGuest};
use http::Method;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const NS: &str = "tenant";
const NODE: &str = "node-a";
const LIMIT: Duration = Duration::from_secs(5);

struct ApiServer(Handle);

impl ApiServer {
    async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = Call::next(&mut self.0, LIMIT)
            .await
            .unwrap_or_else(|| panic!("the pass never sent {method} {path}"));
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "the pass sent {} {}?{}",
            call.method,
            call.path,
            call.query
        );
        call
    }

    /// An Event about the app, with this reason; answered as created.
    async fn expect_event(&mut self, reason: &str) -> Value {
        let call = self
            .expect(
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"),
            )
            .await;
        assert_eq!(call.body["reason"], reason, "{}", call.body);
        assert_eq!(call.body["regarding"]["kind"], "FurnaceApp");
        assert_eq!(call.body["regarding"]["name"], "scan");
        let body = call.body.clone();
        call.echo();
        body
    }

    /// The status, written by server-side apply; returns what was written.
    async fn expect_status(&mut self) -> Value {
        let call = self
            .expect(Method::PATCH, &format!("{}/status", app_path()))
            .await;
        assert_eq!(call.content_type, "application/apply-patch+yaml");
        assert!(
            call.query.contains("fieldManager=furnace-operator")
                && call.query.contains("force=true"),
            "{}",
            call.query
        );
        let status = call.body["status"].clone();
        let mut patched = serde_json::to_value(app()).unwrap();
        patched["status"] = status.clone();
        call.reply(200, &patched);
        status
    }

    async fn get_guest(&mut self, guest: Option<&FurnaceGuest>) {
        let call = self
            .expect(
                Method::GET,
                &format!("/apis/furnace.dev/v1alpha1/namespaces/{NS}/furnaceguests/guest-1"),
            )
            .await;
        match guest {
            Some(g) => call.reply(200, g),
            None => call.not_found(),
        }
    }

    async fn get_pod(&mut self, pod: Option<&Pod>) {
        let call = self.expect(Method::GET, &pod_path()).await;
        match pod {
            Some(p) => call.reply(200, p),
            None => call.not_found(),
        }
    }
}

fn app_path() -> String {
    format!("/apis/furnace.dev/v1alpha1/namespaces/{NS}/furnaceapps/scan")
}

fn pod_path() -> String {
    format!("/api/v1/namespaces/{NS}/pods/scan")
}

fn app() -> FurnaceApp {
    crate::mock_api::app(NS, "scan")
}

fn guest() -> FurnaceGuest {
    crate::mock_api::guest(NS, NODE)
}

/// The pod a previous pass created, as the apiserver shows it once bound
/// and in `phase`.
fn pod_of(app: &FurnaceApp, phase: &str, ready: bool) -> Pod {
    let mut pod = pod::desired(app, &guest());
    pod.spec.as_mut().unwrap().node_name = Some(NODE.into());
    pod.status = Some(PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    });
    pod
}

/// `app` as it stands after a pass that saw `observed`.
fn settled(mut app: FurnaceApp, observed: Observed<'_>) -> FurnaceApp {
    app.status = Some(status::compute(
        &app,
        observed,
        &Time(k8s_openapi::jiff::Timestamp::now()),
    ));
    app
}

async fn run<F>(app: FurnaceApp, script: impl FnOnce(ApiServer) -> F) -> Result<Action, Error>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (client, handle) = crate::mock_api::client();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), "furnace-operator".into()),
        client,
        metrics: Arc::new(Metrics::default()),
    });
    let server = tokio::spawn(script(ApiServer(handle)));
    let result = tokio::time::timeout(LIMIT, reconcile(Arc::new(app), ctx))
        .await
        .expect("the pass hung: it sent a request the script did not expect");
    tokio::time::timeout(LIMIT, server)
        .await
        .expect("the script was left waiting")
        .unwrap();
    result
}

#[tokio::test]
async fn a_new_app_first_gets_the_finalizer() {
    let mut fresh = app();
    fresh.metadata.finalizers = None;
    let action = run(fresh, |mut s| async move {
        let call = s.expect(Method::PATCH, &app_path()).await;
        assert_eq!(call.content_type, "application/json-patch+json");
        assert_eq!(
            call.body[1],
            json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]})
        );
        let mut patched = app();
        patched.metadata.finalizers = Some(vec![FINALIZER.into()]);
        call.reply(200, &patched);
    })
    .await
    .unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn an_app_gets_its_pod_on_its_guests_node_under_the_furnace_runtime() {
    let mut a = app();
    a.spec.permissions = vec![
        furnace_crd::app::Permission::Read,
        furnace_crd::app::Permission::Events,
    ];
    a.spec.backend = Some(Backend {
        address: "backend.example.org:7443".into(),
        public_key: format!("{}=", "A".repeat(43)),
    });
    a.spec.app_key_secret_ref = Some(SecretKeyRef {
        name: "scan-key".into(),
        key: "scan.key".into(),
    });
    a.spec.restart_policy = RestartPolicy::OnFailure;
    run(a, |mut s| async move {
        s.get_guest(Some(&guest())).await;
        s.get_pod(None).await;
        let call = s
            .expect(Method::POST, &format!("/api/v1/namespaces/{NS}/pods"))
            .await;
        assert!(
            call.query.contains("fieldManager=furnace-operator"),
            "{}",
            call.query
        );
        let p = &call.body;
        assert_eq!(p["metadata"]["name"], "scan");
        assert_eq!(p["metadata"]["ownerReferences"][0]["uid"], "uid-scan");
        assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);
        let annotations = &p["metadata"]["annotations"];
        assert_eq!(annotations["furnace.dev/guest"], "guest-1");
        assert_eq!(annotations["furnace.dev/permissions"], "events,read");
        assert_eq!(
            annotations["furnace.dev/backend"],
            "backend.example.org:7443"
        );
        assert!(
            annotations[REVISION]
                .as_str()
                .is_some_and(|r| r.len() == 16),
            "{annotations}"
        );
        let spec = &p["spec"];
        assert_eq!(spec["runtimeClassName"], RUNTIME_CLASS);
        assert_eq!(spec["restartPolicy"], "OnFailure");
        assert_eq!(spec["automountServiceAccountToken"], false);
        let term = &spec["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0];
        assert_eq!(
            term["matchFields"][0],
            json!({"key": "metadata.name", "operator": "In", "values": [NODE]})
        );
        let container = &spec["containers"][0];
        assert_eq!(
            (&container["image"], &container["args"]),
            (&json!("furnace/ps:dev"), &json!(["--json"]))
        );
        assert_eq!(container["volumeMounts"][0]["mountPath"], APP_KEY_PATH);
        assert_eq!(container["volumeMounts"][0]["readOnly"], true);
        let secret = &spec["volumes"][0]["secret"];
        assert_eq!(secret["secretName"], "scan-key");
        assert_eq!(
            secret["items"][0],
            json!({"key": "scan.key", "path": "app.key", "mode": 0o400})
        );
        call.echo();
        s.expect_event("PodCreated").await;
        let status = s.expect_status().await;
        assert_eq!(status["phase"], "Pending");
        assert_eq!(status["podName"], "scan");
        let conditions: Vec<(&str, &str)> = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
            .collect();
        assert_eq!(
            conditions,
            [
                ("GuestFound", "True"),
                ("Scheduled", "False"),
                ("Ready", "False")
            ]
        );
        s.expect_event("Pending").await;
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn an_app_whose_pod_matches_and_runs_is_left_alone() {
    let running = pod_of(&app(), "Running", true);
    let a = settled(
        app(),
        Observed::Guest {
            pod: Some(&running),
        },
    );
    assert_eq!(a.status.as_ref().unwrap().phase, Some(Phase::Running));
    let action = run(a, |mut s| async move {
        s.get_guest(Some(&guest())).await;
        s.get_pod(Some(&running)).await;
    })
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
}

#[tokio::test]
async fn a_changed_spec_rolls_the_pod() {
    let running = pod_of(&app(), "Running", true);
    let mut a = settled(
        app(),
        Observed::Guest {
            pod: Some(&running),
        },
    );
    a.spec.image = "furnace/ps:v2".into();
    a.metadata.generation = Some(2);
    let action = run(a, |mut s| async move {
        s.get_guest(Some(&guest())).await;
        s.get_pod(Some(&running)).await;
        s.expect(Method::DELETE, &pod_path())
            .await
            .reply(200, &running);
        s.expect_event("PodRolled").await;
        let status = s.expect_status().await;
        assert_eq!(
            (&status["phase"], &status["observedGeneration"]),
            (&json!("Pending"), &json!(2))
        );
        s.expect_event("Pending").await;
    })
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
}

#[tokio::test]
async fn a_missing_guest_leaves_the_app_pending_with_a_reason_not_an_error() {
    let action = run(app(), |mut s| async move {
        s.get_guest(None).await;
        let status = s.expect_status().await;
        assert_eq!(status["phase"], "Pending");
        assert_eq!(status["conditions"][0]["type"], "GuestFound");
        assert_eq!(status["conditions"][0]["status"], "False");
        assert_eq!(status["conditions"][0]["reason"], "GuestMissing");
        let message = status["message"].as_str().unwrap();
        assert!(
            message.contains("\"guest-1\"") && message.contains("\"tenant\""),
            "{message}"
        );
        let event = s.expect_event("GuestMissing").await;
        assert_eq!(event["type"], "Warning");
    })
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
}

#[tokio::test]
async fn a_failed_pod_fails_the_app_with_its_exit_code() {
    let running = pod_of(&app(), "Running", true);
    let a = settled(
        app(),
        Observed::Guest {
            pod: Some(&running),
        },
    );
    let mut failed = pod_of(&app(), "Failed", false);
    failed.status.as_mut().unwrap().container_statuses = Some(vec![ContainerStatus {
        name: "app".into(),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 3,
                reason: Some("Error".into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    run(a, |mut s| async move {
        s.get_guest(Some(&guest())).await;
        s.get_pod(Some(&failed)).await;
        let status = s.expect_status().await;
        assert_eq!(status["phase"], "Failed");
        assert_eq!(status["message"], "the app exited with code 3 (Error)");
        assert_eq!(s.expect_event("Failed").await["type"], "Warning");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failed_pod_of_an_app_that_restarts_is_replaced() {
    let mut a = app();
    a.spec.restart_policy = RestartPolicy::Always;
    let mut evicted = pod_of(&a, "Failed", false);
    evicted.status.as_mut().unwrap().reason = Some("Evicted".into());
    run(a, |mut s| async move {
        s.get_guest(Some(&guest())).await;
        s.get_pod(Some(&evicted)).await;
        s.expect(Method::DELETE, &pod_path())
            .await
            .reply(200, &evicted);
        let note = s.expect_event("PodReplaced").await["note"].clone();
        assert!(note.as_str().unwrap().contains("Evicted"), "{note}");
        s.expect_status().await;
        s.expect_event("Pending").await;
    })
    .await
    .unwrap();
}

/// A pod the apiserver refuses (here a quota) is no error to retry at
/// once: the app says why, in its status and an Event.
#[tokio::test]
async fn a_refused_pod_shows_why_in_the_status() {
    let action = run(app(), |mut s| async move {
        s.get_guest(Some(&guest())).await;
        s.get_pod(None).await;
        let quota = "pods \"scan\" is forbidden: exceeded quota: tenant-quota";
        s.expect(Method::POST, &format!("/api/v1/namespaces/{NS}/pods"))
            .await
            .reply(
                403,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": quota}),
            );
        let event = s.expect_event("PodRefused").await;
        assert_eq!(event["type"], "Warning");
        let status = s.expect_status().await;
        assert_eq!(status["phase"], "Pending");
        assert_eq!(status["message"], format!("the pod was refused: {quota}"));
        assert_eq!(status["conditions"][1]["reason"], "PodRefused");
        s.expect_event("Pending").await;
    })
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
}

#[tokio::test]
async fn a_pod_of_the_same_name_owned_by_another_is_not_touched() {
    let mut stranger = pod_of(&app(), "Running", true);
    stranger.metadata.owner_references = None;
    run(app(), |mut s| async move {
        s.get_guest(Some(&guest())).await;
        s.get_pod(Some(&stranger)).await;
        let status = s.expect_status().await;
        assert_eq!(status["conditions"][1]["reason"], "NameTaken");
        s.expect_event("Pending").await;
    })
    .await
    .unwrap();
}

/// Deletion: the pod is deleted and the finalizer kept while it stops; once
/// it is gone the finalizer, and only ours, is removed.
#[tokio::test]
async fn deleting_an_app_keeps_its_finalizer_until_its_pod_is_gone() {
    let running = pod_of(&app(), "Running", true);
    let mut deleting = settled(
        app(),
        Observed::Guest {
            pod: Some(&running),
        },
    );
    deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
    let result = run(deleting.clone(), |mut s| async move {
        s.get_pod(Some(&running)).await;
        s.expect(Method::DELETE, &pod_path())
            .await
            .reply(200, &running);
        s.expect_event("PodDeleted").await;
    })
    .await;
    match result {
        Err(Error::Finalizer(e)) => assert!(e.to_string().contains("still stopping"), "{e}"),
        other => panic!("the finalizer must stay while the pod stops: {other:?}"),
    }
    let action = run(deleting, |mut s| async move {
        s.get_pod(None).await;
        s.expect_event("Unregistered").await;
        let call = s.expect(Method::PATCH, &app_path()).await;
        assert_eq!(
            call.body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"},
            ])
        );
        call.reply(200, &app());
    })
    .await
    .unwrap();
    assert_eq!(action, Action::await_change());
}
