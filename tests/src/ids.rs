//! The host ids a partition runs as, read from `/proc`, and which of the
//! provider's default `[user_namespace]` ranges they start.

use furnace_config::UserNamespaceConfig;

/// The four ids (real, effective, saved, fs) of `field` (`Uid` or `Gid`)
/// in `/proc/<pid>/status`.
pub fn of(pid: u32, field: &str) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The index of the range whose first id (a partition's root) `host_id`
/// is, under the default `[user_namespace]`.
pub fn range_index(host_id: u32) -> Option<u32> {
    let ns = UserNamespaceConfig::default();
    if !ns.uid_span().contains(&u64::from(host_id)) {
        return None;
    }
    let offset = host_id - ns.host_uid;
    (offset % ns.size == 0).then_some(offset / ns.size)
}

/// The one host uid `pid` runs as, the root of some partition's range.
pub fn partition_root_uid(pid: u32) -> u32 {
    let uids = of(pid, "Uid");
    assert!(
        uids.len() == 4 && uids.iter().all(|u| *u == uids[0]),
        "pid {pid}: Uid {uids:?}"
    );
    assert!(
        range_index(uids[0]).is_some(),
        "pid {pid}: uid {} starts no range of the default [user_namespace]",
        uids[0]
    );
    uids[0]
}
