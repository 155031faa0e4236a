//! `furnace sidecar`: the admin side of a guest's VMI sidecar.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use furnace_api::v1::{Permission, RegisterRequest};
use furnace_api::Admin;
use furnace_config::ProviderConfig;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SidecarArgs {
    #[command(subcommand)]
    command: SidecarCommand,
    /// The guest whose sidecar to talk to.
    #[arg(long, global = true)]
    guest: Option<String>,
    /// Root of Furnace's sockets. Default: `socket_root` of the provider
    /// config (/run/furnace unless the file says otherwise).
    #[arg(long, global = true)]
    socket_root: Option<PathBuf>,
    /// The provider config the shim and the sidecar read. Default:
    /// /etc/furnace/furnace.toml if it exists.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
}

impl SidecarArgs {
    /// `--socket-root`, else the provider config's `socket_root`.
    pub fn socket_root(&self) -> Result<PathBuf> {
        match &self.socket_root {
            Some(root) => Ok(root.clone()),
            None => Ok(ProviderConfig::load_from(self.config.as_deref())?.socket_root),
        }
    }
}

#[derive(Debug, Subcommand)]
enum SidecarCommand {
    /// Register an app; prints its socket path.
    Register {
        #[arg(long)]
        app: String,
        /// Comma list of read, write, pause, events, syscalls.
        #[arg(long, default_value = "read")]
        permissions: String,
        /// Owner of the app's socket.
        #[arg(long, default_value_t = 0)]
        uid: u32,
        #[arg(long, default_value_t = 0)]
        gid: u32,
    },
    /// Unregister an app: its socket goes, its connections close, its pauses end.
    Unregister {
        #[arg(long)]
        app: String,
    },
    /// List registered apps.
    List,
    /// The sidecar's view of its guest.
    Health,
}

pub fn parse_permissions(list: &str) -> Result<Vec<Permission>> {
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            Ok(match p {
                "read" => Permission::Read,
                "write" => Permission::Write,
                "pause" => Permission::Pause,
                "events" => Permission::Events,
                "syscalls" => Permission::Syscalls,
                other => bail!(
                    "unknown permission {other:?}; expected read, write, pause, events or syscalls"
                ),
            })
        })
        .collect()
}

pub fn run(args: SidecarArgs) -> Result<()> {
    let Some(guest) = args.guest.clone() else {
        bail!("--guest NAME is required")
    };
    let admin = Admin::connect(
        &args
            .socket_root()?
            .join("guests")
            .join(&guest)
            .join("admin.sock"),
    )?;
    match args.command {
        SidecarCommand::Register {
            app,
            permissions,
            uid,
            gid,
        } => {
            let permissions = parse_permissions(&permissions)?
                .into_iter()
                .map(|p| p as i32)
                .collect();
            let reply = admin.register(&RegisterRequest {
                app_id: app,
                permissions,
                uid,
                gid,
            })?;
            println!("{}", reply.socket_path);
        }
        SidecarCommand::Unregister { app } => {
            admin.unregister(&app)?;
        }
        SidecarCommand::List => {
            for app in admin.list_apps()? {
                let permissions: Vec<&str> = app
                    .permissions
                    .iter()
                    .filter_map(|p| Permission::try_from(*p).ok())
                    .map(|p| p.as_str_name().trim_start_matches("PERMISSION_"))
                    .collect();
                println!(
                    "{}\t{}\tconnections={}\tleases={}\t{}",
                    app.app_id,
                    permissions.join(",").to_lowercase(),
                    app.connections,
                    app.leases,
                    app.socket_path
                );
            }
        }
        SidecarCommand::Health => {
            let h = admin.health()?;
            println!(
                "guest {}\nstate {}\napps {}\nkernel {}",
                h.guest, h.run_state, h.apps, h.kernel_banner
            );
        }
    }
    Ok(())
}
