//! Roles, namespaces, mounts and what the spec may not bring in.

use super::*;

#[test]
fn an_app_needs_a_guest_but_a_cri_sandbox_does_not() {
    let e = harden(
        Spec::default(),
        &ann(&[]),
        &ProviderConfig::default(),
        &app_sockets(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(GUEST), "{e}");

    let mut pod_ns = oci_spec::runtime::LinuxNamespace::default();
    pod_ns.set_typ(LinuxNamespaceType::Network);
    pod_ns.set_path(Some("/var/run/netns/cni-1234".into()));
    let mut spec = Spec::default();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_namespaces(Some(vec![pod_ns.clone()]));
    let h = harden(
        spec,
        &ann(&[(CRI_CONTAINER_TYPE, "sandbox")]),
        &ProviderConfig::default(),
        &HostBinds::default(),
    )
    .unwrap();
    assert_eq!(h.role, Role::Sandbox);
    assert_eq!(h.request.guest, None);
    assert_eq!(h.host_uid, None);
    let linux = h.spec.linux().as_ref().unwrap();
    let ns = linux.namespaces().as_ref().unwrap();
    assert!(ns.contains(&pod_ns), "the pod's network namespace is kept");
    assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
    assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::User));
    // Still locked down otherwise.
    assert_eq!(h.spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(
        h.spec.process().as_ref().unwrap().no_new_privileges(),
        Some(true)
    );
    assert!(linux.seccomp().is_some());
    assert!(find(&h.spec, VMI_SOCKET).is_empty());
    // And a sandbox may not be handed a socket.
    let e = harden(
        Spec::default(),
        &ann(&[(CRI_CONTAINER_TYPE, "sandbox")]),
        &ProviderConfig::default(),
        &HostBinds {
            ids: None,
            ..app_sockets()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("vmi"), "{e}");
}

#[test]
fn an_app_ignores_pod_namespaces() {
    let mut n = oci_spec::runtime::LinuxNamespace::default();
    n.set_typ(LinuxNamespaceType::Network);
    n.set_path(Some("/proc/1/ns/net".into()));
    let mut spec = Spec::default();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_namespaces(Some(vec![n]));
    let h = app(spec, &[]).unwrap();
    let ns = h
        .spec
        .linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .clone()
        .unwrap();
    let net: Vec<_> = ns
        .iter()
        .filter(|n| n.typ() == LinuxNamespaceType::Network)
        .collect();
    assert_eq!(net.len(), 1);
    assert_eq!(
        net[0].path(),
        &None,
        "the host's network namespace must not be joined"
    );
}

#[test]
fn fac_gets_an_empty_network_its_relay_files_and_nothing_of_the_apps() {
    let mut n = oci_spec::runtime::LinuxNamespace::default();
    n.set_typ(LinuxNamespaceType::Network);
    n.set_path(Some("/var/run/netns/fac".into()));
    let mut spec = Spec::default();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_namespaces(Some(vec![n.clone()]));
    let h = harden_as(
        Role::Fac,
        spec,
        &ann(&[]),
        &ProviderConfig::default(),
        &relay_binds(),
    )
    .unwrap();
    let linux = h.spec.linux().as_ref().unwrap();
    let namespaces = linux.namespaces().as_ref().unwrap();
    assert!(
        !namespaces.contains(&n),
        "a given network namespace is dropped"
    );
    let net: Vec<_> = namespaces
        .iter()
        .filter(|n| n.typ() == LinuxNamespaceType::Network)
        .collect();
    assert_eq!(net.len(), 1);
    assert!(net[0].path().is_none(), "a fresh, empty one");
    for (dest, read_only) in [
        (crate::policy::RELAY_PROGRAM, true),
        (crate::policy::BROKER_SOCKET, false),
        (crate::policy::STORAGE_DIR, false),
    ] {
        let m = find(&h.spec, dest);
        assert_eq!(m.len(), 1, "{dest}");
        let ro = m[0].options().iter().flatten().any(|o| o == "ro");
        assert_eq!(ro, read_only, "{dest}");
    }
    assert!(find(&h.spec, FAC_SOCKET).is_empty());
    let socket_rules: Vec<_> = linux
        .seccomp()
        .as_ref()
        .unwrap()
        .syscalls()
        .as_ref()
        .unwrap()
        .iter()
        .filter(|r| r.names().contains(&"socket".to_string()))
        .collect();
    assert_eq!(socket_rules.len(), 1, "AF_UNIX only, as for an app");
    assert_eq!(socket_rules[0].args().as_ref().unwrap()[0].value(), 1);
    // The relay's cgroups are the provider's relay limits.
    let limits = ProviderConfig::default().facilities.relay;
    assert_eq!(h.limits.memory, limits.memory);
    assert_eq!(h.limits.pids, limits.pids);

    for (binds, which) in [
        (app_sockets(), "vmi"),
        (
            HostBinds {
                fac: Some("/run/furnace/fac/ns/app1/fac.sock".into()),
                ..relay_binds()
            },
            "fac",
        ),
        (
            HostBinds {
                relay: None,
                ..relay_binds()
            },
            "relay",
        ),
    ] {
        let e = harden_as(
            Role::Fac,
            Spec::default(),
            &ann(&[]),
            &ProviderConfig::default(),
            &binds,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(&format!("host bind `{which}`")), "{which}: {e}");
    }
}

#[test]
fn an_app_with_a_backend_gets_its_socket_and_keys_read_only_and_no_relay_files() {
    let keys = crate::KeyFiles {
        app_key: "/etc/furnace/keys/alpha.key".into(),
        backend_key: "/run/furnace/fac/ns/app1/backend.pub".into(),
    };
    let binds = HostBinds {
        fac: Some("/run/furnace/fac/ns/app1/fac.sock".into()),
        keys: Some(keys.clone()),
        ..app_sockets()
    };
    let h = harden(
        Spec::default(),
        &ann(&[(GUEST, "g1")]),
        &ProviderConfig::default(),
        &binds,
    )
    .unwrap();
    assert_eq!(find(&h.spec, FAC_SOCKET).len(), 1);
    for (dest, source) in [
        (crate::policy::APP_KEY, &keys.app_key),
        (crate::policy::BACKEND_KEY, &keys.backend_key),
    ] {
        let m = find(&h.spec, dest);
        assert_eq!(m.len(), 1, "{dest}");
        assert_eq!(m[0].source().as_ref(), Some(source));
        assert!(m[0].options().iter().flatten().any(|o| o == "ro"), "{dest}");
    }
    for (bad, which) in [
        (
            HostBinds {
                keys: None,
                ..binds.clone()
            },
            "fac",
        ),
        (
            HostBinds {
                relay: relay_binds().relay,
                ..binds.clone()
            },
            "relay",
        ),
        (
            HostBinds {
                keys: Some(crate::KeyFiles {
                    app_key: "/etc/../etc/shadow".into(),
                    ..keys.clone()
                }),
                ..binds.clone()
            },
            "keys",
        ),
    ] {
        let e = harden(
            Spec::default(),
            &ann(&[(GUEST, "g1")]),
            &ProviderConfig::default(),
            &bad,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(&format!("host bind `{which}`")), "{which}: {e}");
    }
}

#[test]
fn host_bind_mounts_are_refused_and_cri_files_made_read_only() {
    let mut spec = Spec::default();
    spec.mounts_mut()
        .as_mut()
        .unwrap()
        .push(bind("/data", "/var/lib/secret"));
    let e = app(spec, &[]).unwrap_err().to_string();
    assert!(
        e.contains("/var/lib/secret") && e.contains("/data") && e.contains("mounts["),
        "{e}"
    );

    let mut spec = Spec::default();
    let m = spec.mounts_mut().as_mut().unwrap();
    m.push(bind(
        "/etc/resolv.conf",
        "/var/lib/containerd/sandboxes/x/resolv.conf",
    ));
    m.push(bind(
        "/var/run/secrets/kubernetes.io/serviceaccount",
        "/var/lib/kubelet/pods/x/token",
    ));
    m.push(bind(
        "/dev/termination-log",
        "/var/lib/kubelet/pods/x/termination",
    ));
    m.push(bind("/dev/shm", "/run/containerd/sandboxes/x/shm"));
    let h = app(spec, &[]).unwrap();
    let resolv = find(&h.spec, "/etc/resolv.conf");
    assert_eq!(resolv.len(), 1);
    let o = opts(resolv[0]);
    assert!(
        o.contains(&"ro".to_string()) && !o.contains(&"rw".to_string()),
        "{o:?}"
    );
    assert!(find(&h.spec, "/var/run/secrets/kubernetes.io/serviceaccount").is_empty());
    assert!(find(&h.spec, "/dev/termination-log").is_empty());
    let shm = find(&h.spec, "/dev/shm");
    assert_eq!(shm.len(), 1);
    assert_eq!(
        shm[0].typ().as_deref(),
        Some("tmpfs"),
        "the pod's shm is not shared"
    );
    assert_eq!(
        h.notes
            .iter()
            .filter(|n| n.contains("dropped the mount"))
            .count(),
        2
    );

    let mut spec = Spec::default();
    spec.mounts_mut().as_mut().unwrap().push(bind(
        "/run/furnace/admin.sock",
        "/run/furnace/guests/g1/admin.sock",
    ));
    let e = app(spec, &[]).unwrap_err().to_string();
    assert!(e.contains("Furnace manages"), "{e}");

    let mut spec = Spec::default();
    let mut nfs = bind("/mnt", "server:/export");
    nfs.set_typ(Some("nfs".into()));
    nfs.set_options(None);
    spec.mounts_mut().as_mut().unwrap().push(nfs);
    let e = app(spec, &[]).unwrap_err().to_string();
    assert!(e.contains("nfs mount"), "{e}");
}

#[test]
fn sockets_must_come_from_the_socket_root() {
    for bad in [
        "/tmp/x.sock",
        "run/furnace/x.sock",
        "/run/furnace/../../etc/shadow",
    ] {
        let s = HostBinds {
            vmi: Some(bad.into()),
            ..app_sockets()
        };
        let e = harden(
            Spec::default(),
            &ann(&[(GUEST, "g1")]),
            &ProviderConfig::default(),
            &s,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("socket_root"), "{bad}: {e}");
    }
    let e = harden(
        Spec::default(),
        &ann(&[(GUEST, "g1")]),
        &ProviderConfig::default(),
        &HostBinds {
            vmi: None,
            ..app_sockets()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("vmi") && e.contains("sidecar"), "{e}");
}

#[test]
fn hooks_sysctls_and_caps_from_the_spec_are_stripped() {
    let mut spec = Spec::default();
    spec.set_hooks(Some(
        serde_json::from_value(serde_json::json!({"prestart": [{"path": "/bin/evil"}]})).unwrap(),
    ));
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_sysctl(Some(ann(&[("kernel.shm_rmid_forced", "1")])));
    let h = app(spec, &[]).unwrap();
    assert!(h.spec.hooks().is_none());
    assert!(h.notes.iter().any(|n| n.contains("hooks")));
    assert!(h.notes.iter().any(|n| n.contains("sysctl")));
    // Spec::default() carries CAP_KILL etc.; they are gone.
    let caps = h
        .spec
        .process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap();
    assert!(caps.bounding().as_ref().unwrap().is_empty());
}

#[test]
fn no_partition_lowers_its_oom_score_but_one_may_raise_it() {
    for (asked, given) in [(-998, 0), (-1, 0), (0, 0), (500, 500), (1000, 1000)] {
        let mut spec = Spec::default();
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_oom_score_adj(Some(asked));
        let h = app(spec, &[]).unwrap();
        let adj = h.spec.process().as_ref().unwrap().oom_score_adj();
        assert_eq!(adj, Some(given), "asked {asked}");
    }
}

#[test]
fn users_outside_the_mapped_range_are_refused() {
    let mut spec = Spec::default();
    spec.process_mut()
        .as_mut()
        .unwrap()
        .user_mut()
        .set_uid(70_000);
    let e = app(spec, &[]).unwrap_err().to_string();
    assert!(e.contains("process.user.uid"), "{e}");
    let mut spec = Spec::default();
    spec.process_mut()
        .as_mut()
        .unwrap()
        .user_mut()
        .set_uid(1000);
    spec.process_mut()
        .as_mut()
        .unwrap()
        .user_mut()
        .set_gid(1000);
    let h = app(spec, &[]).unwrap();
    assert_eq!((h.host_uid, h.host_gid), (Some(101_000), Some(101_000)));
}

#[test]
fn kill_mode_and_tmp_exec_follow_the_config() {
    let config = ProviderConfig::from_toml(
        "tmp_exec = true\ntmp_size = \"4Mi\"\n[seccomp]\nmode = \"kill\"\n",
    )
    .unwrap();
    let h = harden(
        Spec::default(),
        &ann(&[(GUEST, "g1")]),
        &config,
        &app_sockets(),
    )
    .unwrap();
    let linux = h.spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.seccomp().as_ref().unwrap().default_action(),
        LinuxSeccompAction::ScmpActKillProcess
    );
    let o = opts(find(&h.spec, "/tmp")[0]);
    assert!(!o.contains(&"noexec".to_string()), "{o:?}");
    assert!(o.contains(&"size=4194304".to_string()), "{o:?}");
}

#[test]
fn an_exec_runs_what_it_asks_as_the_hardened_init_runs() {
    let h = app(Spec::default(), &[]).unwrap();
    let init = h.spec.process().clone().unwrap();
    let mut requested = Spec::default().process().clone().unwrap();
    requested.set_args(Some(vec!["/bin/cat".into(), "/etc/hostname".into()]));
    requested.set_cwd("/tmp".into());
    requested.set_no_new_privileges(Some(false));

    let exec = policy::exec_process(&init, &requested).unwrap();
    assert_eq!(exec.args(), requested.args());
    assert_eq!(exec.cwd(), Path::new("/tmp"));
    assert_eq!(exec.user(), init.user());
    assert_eq!(exec.no_new_privileges(), Some(true));
    assert_no_capabilities(&exec);
    assert_eq!(exec.rlimits(), init.rlimits());

    requested.set_terminal(Some(true));
    let err = policy::exec_process(&init, &requested).unwrap_err();
    assert!(err.to_string().contains("process.terminal"), "{err}");
    requested.set_terminal(Some(false));
    let mut other = requested.user().clone();
    other.set_uid(1000);
    requested.set_user(other);
    let err = policy::exec_process(&init, &requested).unwrap_err();
    assert!(err.to_string().contains("process.user"), "{err}");
    requested.set_user(init.user().clone());
    requested.set_args(Some(vec![]));
    let err = policy::exec_process(&init, &requested).unwrap_err();
    assert!(err.to_string().contains("process.args"), "{err}");
}

#[test]
fn each_partition_maps_onto_the_id_range_it_was_given_and_needs_one() {
    let config = ProviderConfig::default();
    let a = ann(&[(GUEST, "g1")]);
    let third = config.user_namespace.range(2).unwrap();
    assert_eq!(
        (third.host_uid, third.host_gid),
        (100_000 + 2 * 65_536, 100_000 + 2 * 65_536)
    );
    let h = harden(
        Spec::default(),
        &a,
        &config,
        &HostBinds {
            ids: Some(third),
            ..app_sockets()
        },
    )
    .unwrap();
    let linux = h.spec.linux().as_ref().unwrap();
    let uid = &linux.uid_mappings().as_ref().unwrap()[0];
    assert_eq!((uid.host_id(), uid.size()), (third.host_uid, 65_536));
    assert_eq!(h.host_uid, Some(third.host_uid));

    for role in [Role::App, Role::Fac] {
        let binds = match role {
            Role::App => app_sockets(),
            _ => relay_binds(),
        };
        let e = harden_as(
            role,
            Spec::default(),
            &a,
            &config,
            &HostBinds { ids: None, ..binds },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("host bind `ids`"), "{role:?}: {e}");
    }
    let sandbox = ann(&[(CRI_CONTAINER_TYPE, "sandbox")]);
    let e = harden(
        Spec::default(),
        &sandbox,
        &config,
        &HostBinds {
            ids: Some(third),
            ..HostBinds::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("host bind `ids`"), "{e}");
    assert_eq!(
        config.user_namespace.range(config.user_namespace.ranges),
        None
    );
}
