//! `containerd-shim-furnace-v1`: containerd's runtime `io.furnace.v1`.
//!
//! - [`task`]: the Task API, RPC by RPC;
//! - [`instance`]: one task's partition, from bundle to teardown;
//! - [`shim`]: start/serve/delete as containerd drives a shim;
//! - [`exec`]: exec processes; [`process`]: what the init and they share;
//! - [`stdio`], [`events`], [`oom`], [`seccomp_agent`], [`defense`], [`metrics`], [`registration`],
//!   [`record`], [`options`], [`info`], [`id_ranges`]: one concern each.
//!
//! The partition itself (policy and libcontainer launcher) is `furnace-runtime`;
//! its launch helper is the second binary here, `furnace-launch-helper`.

mod defense;
mod events;
mod exec;
mod id_ranges;
mod info;
mod instance;
mod metrics;
mod oom;
mod options;
mod process;
mod record;
mod registration;
mod relay;
mod rootfs;
mod seccomp_agent;
mod shim;
mod stdio;
mod task;

pub const RUNTIME_ID: &str = "io.furnace.v1";

fn main() {
    match info::requested() {
        Some(info::Flag::Version) => info::print_version(),
        Some(info::Flag::Info) => {
            if let Err(e) = info::print_info() {
                eprintln!("{RUNTIME_ID}: -info: {e}");
                std::process::exit(1);
            }
        }
        None => {
            let config = containerd_shim::Config {
                default_log_level: "info".into(),
                ..Default::default()
            };
            containerd_shim::run::<shim::FurnaceShim>(RUNTIME_ID, Some(config));
        }
    }
}
