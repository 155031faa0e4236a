//! `furnace-operator`: the FurnaceApp controller, one active replica at a
//! time by a Lease.

use anyhow::Context as _;
use clap::Parser;
use furnace_crd::{FurnaceApp, FurnaceGuest};
use furnace_operator::metrics::{self, Metrics};
use furnace_operator::{error_policy, pod, reconcile, Context, MANAGER};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    version,
    about = "Reconciles FurnaceApps into pods under the furnace RuntimeClass"
)]
struct Args {
    /// Watch one namespace only; all namespaces when unset.
    #[arg(long)]
    namespace: Option<String>,
    /// Where `/metrics` and `/healthz` are served.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_address: std::net::SocketAddr,
    /// The namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "furnace-system")]
    lease_namespace: String,
    #[arg(long, default_value = "furnace-operator")]
    lease_name: String,
    /// This replica's name in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Run without a Lease (a single replica, or a test).
    #[arg(long)]
    no_leader_election: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let client = Client::try_default()
        .await
        .context("no Kubernetes API to talk to: run in a pod, or set KUBECONFIG")?;
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_address))?;
    tokio::spawn(metrics::serve(metrics.clone(), listener));

    let identity = args
        .identity
        .clone()
        .unwrap_or_else(|| format!("{MANAGER}-{}", std::process::id()));
    let mut leadership = None;
    if !args.no_leader_election {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
                .with_namespace(&args.lease_namespace)
                .with_identity(&identity)
                .with_field_manager(MANAGER)
                .with_duration(15)
                .with_grace(5)
                .build()
                .await
                .context("setting up the leader-election Lease")?;
        let (mut leader, task) = manager.watch().await;
        tracing::info!(lease = %args.lease_name, %identity, "waiting to lead");
        while !*leader.borrow_and_update() {
            leader
                .changed()
                .await
                .context("the Lease manager stopped")?;
        }
        tracing::info!(%identity, "leading");
        leadership = Some((leader, task));
    }

    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(identity),
            },
        ),
        metrics,
    });
    let (apps, pods, guests) = match &args.namespace {
        Some(ns) => (
            Api::<FurnaceApp>::namespaced(client.clone(), ns),
            Api::<Pod>::namespaced(client.clone(), ns),
            Api::<FurnaceGuest>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let controller = Controller::new(apps, watcher::Config::default());
    let store = controller.store();
    let run = controller
        .owns(pods, watcher::Config::default().labels(pod::APP_LABEL))
        .watches(
            guests,
            watcher::Config::default(),
            move |guest: FurnaceGuest| {
                let (ns, name) = (guest.namespace(), guest.name_any());
                store
                    .state()
                    .into_iter()
                    .filter(|app| app.namespace() == ns && app.spec.guest == name)
                    .map(|app| ObjectRef::from_obj(&*app))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((app, _)) => tracing::debug!(app = %app, "reconciled"),
                Err(e) => tracing::warn!(error = %e, "reconcile failed"),
            }
        });
    match leadership {
        None => run.await,
        Some((mut leader, _task)) => {
            tokio::select! {
                _ = run => {}
                _ = async { while leader.changed().await.is_ok() && *leader.borrow() {} } => {
                    // Another replica may be leading already: stop at once,
                    // and let the Deployment start this one afresh.
                    anyhow::bail!("lost the leader-election Lease");
                }
            }
        }
    }
    Ok(())
}
