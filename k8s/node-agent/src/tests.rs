//! The supervisor with a stand-in for the sidecar: a shell script that
//! records its arguments and sleeps, so starting, restarting and stopping
//! are checked on real processes without a guest. The real sidecar under
//! the agent is exercised by the cluster tests. And the guest status the
//! agent computes from what it saw.

use crate::reconcile::{compute, Health, Seen};
use crate::supervisor::{ClaimError, ProcessState, SidecarCommand, Supervisor};
use furnace_crd::guest::Driver;
use furnace_crd::{FurnaceGuest, FurnaceGuestSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn spec(profile: Option<&str>) -> FurnaceGuestSpec {
    FurnaceGuestSpec {
        node: "node-a".into(),
        driver: Driver::Qemu,
        guest_dir: "/srv/guests/g1".into(),
        profile: profile.map(Into::into),
    }
}

fn owner(ns: &str) -> (String, String) {
    (ns.into(), format!("uid-{ns}"))
}

/// A stand-in sidecar writing `<pid> <args>` to `runs` for each start.
fn stand_in(dir: &Path) -> (Arc<Supervisor>, PathBuf) {
    let runs = dir.join("runs");
    let program = dir.join("sidecar");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\necho \"$$ $*\" >> {}\nexec sleep 600\n",
            runs.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let supervisor = Supervisor::new(SidecarCommand {
        program,
        config: Some("/etc/furnace/furnace.toml".into()),
        socket_root: dir.join("run"),
    });
    (supervisor, runs)
}

/// Polls `what` every 20 ms for at most 5 s.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..250 {
        if let Some(v) = f() {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} did not happen within 5 s");
}

fn alive(pid: u32) -> bool {
    // Reaped children are gone; a zombie would still answer, so this also
    // checks the supervisor waited for it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

fn runs(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// A stand-in sidecar for guest g1 of namespace t1, started; its pid.
async fn started() -> (tempfile::TempDir, Arc<Supervisor>, PathBuf, u32) {
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, runs_file) = stand_in(dir.path());
    supervisor
        .ensure(owner("t1"), "g1", &spec(None))
        .await
        .unwrap();
    let first = eventually("the first start", || supervisor.state("g1")?.pid).await;
    (dir, supervisor, runs_file, first)
}

#[tokio::test]
async fn a_sidecar_is_started_with_its_guest_restarted_when_it_dies_and_stopped_with_it() {
    let (dir, supervisor, runs_file, first) = started().await;
    let line = eventually("the start record", || runs(&runs_file).first().cloned()).await;
    let root = dir.path().join("run");
    assert_eq!(
        line,
        format!(
            "{first} --guest g1 --guest-dir /srv/guests/g1 --socket-root {} --config /etc/furnace/furnace.toml",
            root.display()
        )
    );
    assert_eq!(
        supervisor.command().admin_socket("g1"),
        root.join("guests/g1/admin.sock")
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let second = eventually("a restart", || {
        supervisor.state("g1")?.pid.filter(|p| *p != first)
    })
    .await;
    let state = supervisor.state("g1").unwrap();
    assert_eq!(state.restarts, 1);
    assert!(
        state.last_exit.as_deref().unwrap().contains("signal: 9"),
        "{state:?}"
    );
    assert!(!alive(first));

    // Asking again with the same spec changes nothing.
    supervisor
        .ensure(owner("t1"), "g1", &spec(None))
        .await
        .unwrap();
    assert_eq!(supervisor.state("g1").unwrap().pid, Some(second));

    supervisor.stop(&owner("t1"), "g1").await;
    assert!(supervisor.state("g1").is_none());
    assert!(!alive(second), "the sidecar outlived its guest");
    assert_eq!(runs(&runs_file).len(), 2);
}

#[tokio::test]
async fn a_changed_spec_restarts_the_sidecar_with_it() {
    let (_dir, supervisor, runs_file, first) = started().await;
    supervisor
        .ensure(owner("t1"), "g1", &spec(Some("/var/lib/furnace/p.json")))
        .await
        .unwrap();
    assert!(!alive(first), "the old sidecar still runs");
    let line = eventually("the second start", || runs(&runs_file).get(1).cloned()).await;
    assert!(line.contains("--profile /var/lib/furnace/p.json"), "{line}");
    supervisor.stop(&owner("t1"), "g1").await;
}

#[tokio::test]
async fn one_guest_name_serves_one_namespace() {
    let (_dir, supervisor, _, pid) = started().await;
    let refused = supervisor
        .ensure(owner("t2"), "g1", &spec(None))
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        ClaimError::NameInUse {
            name: "g1".into(),
            namespace: "t1".into()
        }
    );
    // Another namespace's delete does not stop it either.
    supervisor.stop(&owner("t2"), "g1").await;
    assert!(alive(pid));
    supervisor.stop(&owner("t1"), "g1").await;
    assert!(!alive(pid));
}

#[tokio::test]
async fn a_sidecar_that_cannot_start_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let supervisor = Supervisor::new(SidecarCommand {
        program: dir.path().join("missing"),
        config: None,
        socket_root: dir.path().into(),
    });
    supervisor
        .ensure(owner("t1"), "g1", &spec(None))
        .await
        .unwrap();
    let why = eventually("the failure", || supervisor.state("g1")?.last_exit).await;
    assert!(
        why.contains("could not start") && why.contains("missing"),
        "{why}"
    );
    supervisor.stop(&owner("t1"), "g1").await;
}

fn guest() -> FurnaceGuest {
    let mut g = FurnaceGuest::new("g1", spec(None));
    g.metadata.generation = Some(3);
    g
}

fn conditions(status: &furnace_crd::FurnaceGuestStatus) -> Vec<(String, String, String)> {
    status
        .conditions
        .iter()
        .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
        .collect()
}

fn owned(v: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    v.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect()
}

#[test]
fn the_guest_status_says_whether_the_sidecar_answers_and_what_it_attached_to() {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let socket = Path::new("/run/furnace/guests/g1/admin.sock");
    let running = |health| Seen::Running {
        process: ProcessState {
            pid: Some(42),
            restarts: 0,
            last_exit: None,
        },
        health: Some(health),
    };
    let banner = "Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org)";
    let healthy = compute(
        &guest(),
        "node-a",
        socket,
        running(Ok(Health {
            kernel_banner: banner.into(),
            run_state: "running".into(),
        })),
        &now,
    );
    assert_eq!(
        conditions(&healthy),
        owned(&[
            ("SidecarReady", "True", "Answering"),
            ("Attached", "True", "KernelFound")
        ])
    );
    assert_eq!(healthy.conditions[1].message, banner);
    assert_eq!(healthy.observed_generation, Some(3));
    let location = healthy.sidecar.clone().unwrap();
    assert_eq!(
        (
            location.node.as_str(),
            location.pid,
            location.admin_socket.as_str()
        ),
        ("node-a", Some(42), socket.to_str().unwrap())
    );

    // Computed again later over that status: nothing changes, so nothing is written.
    let mut settled = guest();
    settled.status = Some(healthy.clone());
    let later = Time(
        k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(60),
    );
    let again = compute(
        &settled,
        "node-a",
        socket,
        running(Ok(Health {
            kernel_banner: banner.into(),
            run_state: "running".into(),
        })),
        &later,
    );
    assert_eq!(again, healthy);

    let mute = compute(
        &settled,
        "node-a",
        socket,
        running(Err("connection refused".into())),
        &later,
    );
    assert_eq!(
        conditions(&mute),
        owned(&[
            ("SidecarReady", "False", "NotAnswering"),
            ("Attached", "False", "SidecarDown")
        ])
    );
    assert!(
        mute.conditions[0].message.contains("pid 42")
            && mute.conditions[0].message.contains("connection refused")
    );
    assert_eq!(
        mute.conditions[0].last_transition_time, later,
        "a changed condition gets a new time"
    );

    let dead = compute(
        &guest(),
        "node-a",
        socket,
        Seen::Running {
            process: ProcessState {
                pid: None,
                restarts: 4,
                last_exit: Some("the sidecar exited: exit status: 2".into()),
            },
            health: None,
        },
        &now,
    );
    assert_eq!(
        conditions(&dead),
        owned(&[
            ("SidecarReady", "False", "NotRunning"),
            ("Attached", "False", "SidecarDown")
        ])
    );
    assert_eq!(
        dead.conditions[0].message,
        "the sidecar exited: exit status: 2; restarted 4 times"
    );
    assert_eq!(dead.sidecar.unwrap().pid, None);

    let taken = compute(
        &guest(),
        "node-a",
        socket,
        Seen::Refused(ClaimError::NameInUse {
            name: "g1".into(),
            namespace: "t1".into(),
        }),
        &now,
    );
    assert_eq!(
        conditions(&taken),
        owned(&[
            ("SidecarReady", "False", "NameInUse"),
            ("Attached", "False", "NameInUse")
        ])
    );
    assert!(taken.conditions[0].message.contains("\"t1\""));
}
