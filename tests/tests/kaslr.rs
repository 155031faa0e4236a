//! KASLR is found at attach time, never configured: two real boots with
//! different kernel offsets (one `nokaslr` with 4-level paging, one randomized
//! with LA57 5-level paging) both read correctly, and the `init_task` address
//! VMI derives equals the one in each guest's own `/proc/kallsyms`.

use furnace_api::{Process, Symbol};
use furnace_tests::*;

struct Booted {
    guest: TestGuest,
    init_task: u64,
    paging: String,
}

fn check(guest: TestGuest) -> Booted {
    let dir = guest.dir_str().to_owned();
    let kallsyms = furnace::guest::console::boot_kallsyms(&guest.dir).unwrap();
    let truth = kallsyms
        .iter()
        .find(|(n, _)| n == "init_task")
        .expect("kallsyms has init_task")
        .1;
    let seen: Vec<Symbol> =
        furnace_json(&["vmi", "sym", "init_task", "--guest-dir", &dir, "--json"]).unwrap();
    assert_eq!(
        seen[0].address, truth,
        "{}: VMI init_task {:#x} != kallsyms {truth:#x}",
        guest.name, seen[0].address
    );
    guest.assert_ps_matches(|_| {
        furnace_json::<Vec<Process>>(&["vmi", "ps", "--guest-dir", &dir, "--json"])
    });
    let info: serde_json::Value =
        furnace_json(&["vmi", "info", "--guest-dir", &dir, "--json"]).unwrap();
    Booted {
        init_task: truth,
        paging: info["page_mode"].as_str().unwrap().to_owned(),
        guest,
    }
}

#[test]
fn two_boots_with_different_kernel_offsets_are_both_read_correctly() {
    let (fixed, randomized) = std::thread::scope(|s| {
        let fixed = s.spawn(|| TestGuest::start("nokaslr", &["--no-kaslr"]).map(check));
        let randomized = s.spawn(|| TestGuest::start("kaslr-la57", &["--cpu", "max"]).map(check));
        (
            fixed.join().unwrap().unwrap(),
            randomized.join().unwrap().unwrap(),
        )
    });
    assert_ne!(
        fixed.init_task, randomized.init_task,
        "the two boots must place the kernel differently for this test to mean anything"
    );
    assert_eq!(fixed.paging, "FourLevel", "{}", fixed.guest.name);
    assert_eq!(
        randomized.paging, "FiveLevel",
        "{}: `-cpu max` offers LA57",
        randomized.guest.name
    );
}
