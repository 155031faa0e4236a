//! FurnaceApp created → its pod's create request, as the operator's
//! reconcile pass does it against the mock API server (`mock_api`), which
//! answers at once: the guest lookup, the pod lookup (not found), then the
//! pod create, whose arrival stops the clock. The pass's Event and status
//! writes after it are answered too but not timed. What this measures is
//! the operator's own work per new app; the apiserver's is the cluster
//! tests'.
//!
//! Target (issue 16): p50 ≤ 50 ms.
//! `cargo bench -p furnace-operator --features mock-api --bench create_to_pod`

use furnace_crd::{FurnaceApp, FurnaceGuest};
use furnace_operator::metrics::Metrics;
use furnace_operator::mock_api::{self, Call};
use furnace_operator::{reconcile, Context};
use http::Method;
use kube::runtime::events::Recorder;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SAMPLES: usize = 2000;
const WARMUP: usize = 200;
const LIMIT: Duration = Duration::from_secs(5);

fn app(n: usize) -> FurnaceApp {
    mock_api::app("tenant", &format!("app-{n}"))
}

fn guest() -> FurnaceGuest {
    mock_api::guest("tenant", "node-a")
}

/// Answers one pass's requests; returns when the pod create arrived.
async fn serve_pass(handle: &mut mock_api::Handle, app: &FurnaceApp) -> Option<Instant> {
    let mut created = None;
    while let Some(call) = Call::next(handle, LIMIT).await {
        match (
            &call.method,
            call.path.rsplit('/').next().unwrap_or_default(),
        ) {
            (&Method::GET, "guest-1") => call.reply(200, &guest()),
            (&Method::GET, _) => call.not_found(),
            (&Method::POST, "pods") => {
                created = Some(Instant::now());
                call.echo();
            }
            (&Method::POST, "events") => call.echo(),
            (&Method::PATCH, "status") => {
                let mut body = serde_json::to_value(app).unwrap();
                body["status"] = call.body["status"].clone();
                call.reply(200, &body);
                return created;
            }
            _ => call.not_found(),
        }
    }
    created
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for n in 0..WARMUP + SAMPLES {
        let (client, mut handle) = mock_api::client();
        let ctx = Arc::new(Context {
            recorder: Recorder::new(client.clone(), "furnace-operator".into()),
            client,
            metrics: Arc::new(Metrics::default()),
        });
        let app = app(n);
        let server = {
            let app = app.clone();
            tokio::spawn(async move { serve_pass(&mut handle, &app).await })
        };
        let started = Instant::now();
        reconcile(Arc::new(app), ctx)
            .await
            .expect("the pass succeeds");
        let created = server.await.unwrap().expect("the pass created a pod");
        if n >= WARMUP {
            samples.push(created - started);
        }
    }
    samples.sort();
    println!(
        "create_to_pod: FurnaceApp → pod create request, {SAMPLES} passes after {WARMUP}: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  (target p50 <= 50 ms: {})",
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        if percentile(&samples, 0.5) <= 50.0 { "pass" } else { "miss" }
    );
}
