//! `furnace/hidden-procs:dev` under `io.furnace.v1` against the real guest:
//! silent on a clean guest, then, after a separate privileged step hides a
//! workload process the way a DKOM rootkit does (unlinked from the task list
//! through the sidecar, with the `write` permission), it names that process.
//! The guest's own ps still lists it, because `/proc` finds tasks through the
//! pid idr: the ground truth the detector's second view stands on.

use furnace::guest::initramfs::WORKERS;
use furnace_api::v1::Permission;
use furnace_api::Vmi;
use furnace_tests::stack::FurnaceStack;
use serde_json::Value;

const APP: &str = "/usr/bin/furnace-hidden-procs";

fn detect(s: &FurnaceStack, image: &str, id: &str, extra: &[&str]) -> (Option<i32>, Value) {
    let out = s.run_app(image, id, extra, &[APP, "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "hidden-procs printed no JSON ({e}, {}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

/// Unlinks process `pid`'s task from `init_task.tasks` with the guest paused
/// (what `list_del_init` does), through an app registered with `write`.
fn unlink_from_task_list(vmi: &Vmi, pid: u32) -> u64 {
    let task = vmi
        .processes()
        .unwrap()
        .into_iter()
        .find(|p| p.pid == pid)
        .expect("the process is on the task list")
        .task;
    let node = task + vmi.member_offset("task_struct", "tasks").unwrap();
    let lease = vmi.pause(std::time::Duration::from_secs(5)).unwrap();
    let next = vmi.read_u64(0, node).unwrap();
    let prev = vmi.read_u64(0, node + 8).unwrap();
    vmi.write_virtual(0, prev, &next.to_le_bytes()).unwrap(); // prev->next = next
    vmi.write_virtual(0, next + 8, &prev.to_le_bytes()).unwrap(); // next->prev = prev
    let to_itself = [node.to_le_bytes(), node.to_le_bytes()].concat();
    vmi.write_virtual(0, node, &to_itself).unwrap();
    vmi.resume(&lease).unwrap();
    task
}

#[test]
fn a_process_unlinked_from_the_task_list_is_found_and_a_clean_guest_reports_nothing() {
    let s = FurnaceStack::start("hidden").expect("the Furnace stack starts");
    let image = s.import("hidden-procs").expect("the image imports");

    // Clean guest: with the guest running (read only, repeated looks) and
    // paused for the look (pause granted), both views agree.
    let (code, clean) = detect(&s, &image, "clean-read", &[]);
    assert_eq!(code, Some(0), "{clean}");
    assert_eq!(clean["findings"], serde_json::json!([]), "{clean}");
    assert_eq!(clean["paused"], false);
    assert!(clean["task_list"].as_u64().unwrap() > 20, "{clean}");
    assert_eq!(clean["task_list"], clean["pid_idr"]);
    let pause = ["--annotation", "furnace.dev/permissions=read,pause"];
    let (code, clean) = detect(&s, &image, "clean-paused", &pause);
    assert_eq!(
        (code, &clean["paused"]),
        (Some(0), &Value::Bool(true)),
        "{clean}"
    );
    assert_eq!(clean["findings"], serde_json::json!([]), "{clean}");

    // The privileged step, apart from the app: hide one workload process.
    let victim = WORKERS[1];
    let truth = s.guest.ground_truth_ps().unwrap();
    let pid = truth
        .iter()
        .find(|p| p.name == victim)
        .expect("the guest runs the victim")
        .pid;
    let writer = s.sidecar.register(
        "dkom",
        &[Permission::Read, Permission::Write, Permission::Pause],
        0,
    );
    let vmi = Vmi::connect(&writer).unwrap();
    let task = unlink_from_task_list(&vmi, pid);
    assert!(
        vmi.processes().unwrap().iter().all(|p| p.pid != pid),
        "after the unlink the task list walk no longer sees {victim}"
    );
    let after = s.guest.ground_truth_ps().unwrap();
    assert!(
        after.iter().any(|p| p.pid == pid && p.name == victim),
        "the guest's own ps (through /proc, so the pid idr) still lists {victim}"
    );

    for (id, extra) in [("hidden-read", &[][..]), ("hidden-paused", &pause[..])] {
        let (code, report) = detect(&s, &image, id, extra);
        assert_eq!(code, Some(1), "{id}: {report}");
        let findings = report["findings"].as_array().unwrap();
        assert_eq!(
            findings.len(),
            1,
            "{id}: exactly the hidden process: {report}"
        );
        assert_eq!(findings[0]["pid"], pid, "{id}: {report}");
        assert_eq!(findings[0]["name"], victim, "{id}: {report}");
        assert_eq!(findings[0]["task"], task, "{id}: {report}");
        assert_eq!(findings[0]["missing_from"], "task_list", "{id}: {report}");
    }
}
