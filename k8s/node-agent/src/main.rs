//! `furnace-node-agent`: the sidecars of this node's FurnaceGuests.

use anyhow::Context as _;
use clap::Parser;
use furnace_crd::FurnaceGuest;
use furnace_node_agent::reconcile::{error_policy, reconcile, AdminProbe, Context};
use furnace_node_agent::supervisor::{SidecarCommand, Supervisor};
use futures::StreamExt;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(version, about = "Runs the VMI sidecars of this node's FurnaceGuests")]
struct Args {
    /// This node's name, as FurnaceGuests' `spec.node` gives it.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The sidecar binary.
    #[arg(long, default_value = "furnace-vmi-sidecar")]
    sidecar: PathBuf,
    /// The provider config the sidecars read (the shim's too).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Root of Furnace's sockets on the node.
    #[arg(long, default_value = "/run/furnace")]
    socket_root: PathBuf,
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
    let supervisor = Supervisor::new(SidecarCommand {
        program: args.sidecar,
        config: args.config,
        socket_root: args.socket_root,
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        node: args.node.clone(),
        supervisor,
        probe: Box::new(AdminProbe),
    });
    let guests = Api::<FurnaceGuest>::all(client);
    let mine = watcher::Config::default().fields(&format!("spec.node={}", args.node));
    tracing::info!(node = %args.node, "serving this node's guests");
    Controller::new(guests, mine)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::warn!(error = %e, "guest reconcile failed");
            }
        })
        .await;
    Ok(())
}
