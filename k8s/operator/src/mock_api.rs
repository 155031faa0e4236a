//! A mock Kubernetes API server on tower-test, for `reconcile`'s unit tests
//! and the create-to-pod bench (feature `mock-api`): the client it hands
//! out sends each request to the test, which reads it as a [`Call`] and
//! answers it. The real apiserver is the cluster tests'.

use furnace_crd::app::RestartPolicy;
use furnace_crd::guest::Driver;
use furnace_crd::{FurnaceApp, FurnaceAppSpec, FurnaceGuest, FurnaceGuestSpec};
use http::{Method, Request, Response};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use std::time::Duration;

pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose every request goes to the returned handle.
pub fn client() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// One request the client made, held until it is answered.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Call {
    /// The next request, or `None` if the client went away or `limit` passed.
    pub async fn next(handle: &mut Handle, limit: Duration) -> Option<Call> {
        let (request, respond) = tokio::time::timeout(limit, handle.next_request())
            .await
            .ok()??;
        let uri = request.uri().clone();
        let method = request.method().clone();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = request.into_body().collect_bytes().await.ok()?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Some(Call {
            method,
            path: uri.path().to_string(),
            query: uri.query().unwrap_or_default().to_string(),
            content_type,
            body,
            respond,
        })
    }

    pub fn reply(self, code: u16, body: &impl serde::Serialize) {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let response = Response::builder()
            .status(code)
            .body(Body::from(bytes))
            .expect("a status and a body make a response");
        self.respond.send_response(response);
    }

    pub fn not_found(self) {
        self.reply(
            404,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        );
    }

    /// Answers with the request's own body, as a create or patch would.
    pub fn echo(self) {
        let body = self.body.clone();
        self.reply(200, &body);
    }
}

/// A FurnaceApp `name` in `namespace` as the apiserver would hand it over
/// once it holds the operator's finalizer: the ps image on `guest-1`.
pub fn app(namespace: &str, name: &str) -> FurnaceApp {
    let mut app = FurnaceApp::new(
        name,
        FurnaceAppSpec {
            guest: "guest-1".into(),
            image: "furnace/ps:dev".into(),
            args: vec!["--json".into()],
            permissions: vec![],
            limits: None,
            backend: None,
            app_key_secret_ref: None,
            restart_policy: RestartPolicy::Never,
        },
    );
    app.metadata.namespace = Some(namespace.into());
    app.metadata.uid = Some(format!("uid-{name}"));
    app.metadata.generation = Some(1);
    app.metadata.finalizers = Some(vec![crate::FINALIZER.into()]);
    app
}

/// FurnaceGuest `guest-1` in `namespace`, on `node`.
pub fn guest(namespace: &str, node: &str) -> FurnaceGuest {
    let mut g = FurnaceGuest::new(
        "guest-1",
        FurnaceGuestSpec {
            node: node.into(),
            driver: Driver::Qemu,
            guest_dir: "/run/furnace/guests/guest-1".into(),
            profile: None,
        },
    );
    g.metadata.namespace = Some(namespace.into());
    g
}
