//! Bad input to `io.furnace.v1` through a real containerd and shim: each
//! fails `create` with a message naming the annotation at fault, and the
//! host keeps nothing of the attempt (no mount, cgroup, socket or state).

use furnace_tests::stack::FurnaceStack;
use std::sync::OnceLock;

fn stack() -> &'static FurnaceStack {
    static STACK: OnceLock<FurnaceStack> = OnceLock::new();
    STACK.get_or_init(|| FurnaceStack::start("badin").expect("the Furnace stack starts"))
}

fn refused(id: &str, annotations: &[&str], expect: &[&str]) {
    let s = stack();
    let mut extra = Vec::new();
    for a in annotations {
        extra.extend_from_slice(&["--annotation", a]);
    }
    let out = s.run(id, &extra, &["/bin/true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{id} was accepted");
    for e in expect {
        assert!(stderr.contains(e), "{id}: {e:?} not in {stderr}");
    }
    let _ = s.containerd.ctr(&["container", "delete", id]);
    assert_eq!(s.traces_of(id), Vec::<String>::new(), "{id} left traces");
    assert!(s
        .sidecar
        .admin()
        .list_apps()
        .unwrap()
        .iter()
        .all(|a| !a.app_id.ends_with(id)));
}

/// ctr's own --annotation comes after the stack's, so it overrides the guest.
#[test]
fn an_unknown_guest_is_refused_naming_it() {
    refused(
        "noguest",
        &["furnace.dev/guest=no-such-guest"],
        &["furnace.dev/guest", "no-such-guest"],
    );
}

#[test]
fn malformed_limits_are_refused() {
    refused(
        "badlimits",
        &["furnace.dev/limits=memory=lots"],
        &["furnace.dev/limits"],
    );
    refused(
        "looselimits",
        &["furnace.dev/limits=pids=100000"],
        &["furnace.dev/limits"],
    );
}

#[test]
fn permissions_beyond_the_providers_caps_are_refused() {
    refused(
        "toomuch",
        &["furnace.dev/permissions=read,write"],
        &["furnace.dev/permissions", "write"],
    );
}

/// After the refusals, a good app still runs on the same shim path.
#[test]
fn a_good_app_runs_after_bad_ones() {
    refused("typo", &["furnace.dev/guets=x"], &["furnace.dev/guets"]);
    let out = stack().run("good", &[], &["/furnace-probe", "exit", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
