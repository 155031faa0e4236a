//! The node agent's sidecar supervision and health probe with the real
//! `furnace-vmi-sidecar` on a real booted guest. No apiserver is needed for
//! this part (the cluster tests run the whole agent against a real one):
//! the supervisor starts the sidecar as the agent would, the probe asks its
//! admin API, and the banner it reports is checked against the kernel the
//! guest was booted with.

use furnace_crd::guest::Driver;
use furnace_crd::FurnaceGuestSpec;
use furnace_node_agent::reconcile::{AdminProbe, Health, HealthProbe};
use furnace_node_agent::supervisor::{SidecarCommand, Supervisor};
use furnace_tests::{bin_dir, TestGuest};
use std::path::Path;
use std::time::{Duration, Instant};

/// Probes until the sidecar answers, at most 30 s.
async fn healthy(socket: &Path) -> Health {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match AdminProbe.health(socket.to_owned()).await {
            Ok(h) => return h,
            Err(e) if Instant::now() > deadline => panic!("the sidecar never answered: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_the_real_sidecar_restarts_it_and_stops_it() {
    let guest = TestGuest::start("agent", &[]).expect("the guest boots");
    let booted: serde_json::Value =
        serde_json::from_slice(&std::fs::read(guest.dir.join("guest.json")).unwrap()).unwrap();
    let release = booted["kernel_release"].as_str().unwrap().to_owned();
    let supervisor = Supervisor::new(SidecarCommand {
        program: bin_dir().join("furnace-vmi-sidecar"),
        config: None,
        socket_root: "/run/furnace".into(),
    });
    let spec = FurnaceGuestSpec {
        node: "node-a".into(),
        driver: Driver::Qemu,
        guest_dir: guest.dir_str().into(),
        profile: None,
    };
    let owner = ("tenant".to_string(), "uid-guest".to_string());
    supervisor
        .ensure(owner.clone(), &guest.name, &spec)
        .await
        .unwrap();
    let socket = supervisor.command().admin_socket(&guest.name);
    assert_eq!(
        socket,
        guest.dir.join("admin.sock"),
        "where the node's shim looks"
    );

    let health = healthy(&socket).await;
    assert!(
        health
            .kernel_banner
            .starts_with(&format!("Linux version {release} ")),
        "banner {:?} is not of the booted kernel {release}",
        health.kernel_banner
    );
    let first = supervisor.state(&guest.name).unwrap().pid.unwrap();

    // A crash: the agent starts it again, and it answers again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let second = loop {
        match supervisor.state(&guest.name).unwrap().pid {
            Some(pid) if pid != first => break pid,
            _ if Instant::now() > deadline => panic!("the sidecar was not restarted"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(healthy(&socket).await.kernel_banner, health.kernel_banner);
    assert_eq!(supervisor.state(&guest.name).unwrap().restarts, 1);

    supervisor.stop(&owner, &guest.name).await;
    assert!(
        !Path::new(&format!("/proc/{second}")).exists(),
        "the sidecar outlived its guest"
    );
    assert!(
        AdminProbe.health(socket).await.is_err(),
        "the stopped sidecar still answers"
    );
}
