//! `Stats`: the partition's cgroup statistics as containerd's metrics
//! messages, v1 (`io.containerd.cgroups.v1.Metrics`) on a v1 or hybrid host
//! and v2 (`io.containerd.cgroups.v2.Metrics`) on a unified one, as the
//! runc shim reports them, so `ctr task metrics` reads either.

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::MessageDyn;
use furnace_runtime::launcher::cgroups::{CgroupSetup, Stats};

pub fn to_metrics(stats: &Stats, setup: Option<CgroupSetup>) -> Box<dyn MessageDyn> {
    match setup {
        Some(CgroupSetup::Unified) => Box::new(to_v2(stats)),
        _ => Box::new(to_v1(stats)),
    }
}

fn to_v1(s: &Stats) -> v1::Metrics {
    let mut m = v1::Metrics::new();
    let mut pids = v1::PidsStat::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    m.pids = Some(pids).into();

    let mut usage = v1::CPUUsage::new();
    usage.total = s.cpu.usage.usage_total;
    usage.user = s.cpu.usage.usage_user;
    usage.kernel = s.cpu.usage.usage_kernel;
    usage.per_cpu = s.cpu.usage.per_core_usage_total.clone();
    let mut throttling = v1::Throttle::new();
    throttling.periods = s.cpu.throttling.periods;
    throttling.throttled_periods = s.cpu.throttling.throttled_periods;
    throttling.throttled_time = s.cpu.throttling.throttled_time;
    let mut cpu = v1::CPUStat::new();
    cpu.usage = Some(usage).into();
    cpu.throttling = Some(throttling).into();
    m.cpu = Some(cpu).into();

    let entry = |d: &furnace_runtime::launcher::cgroups::MemoryData| {
        let mut e = v1::MemoryEntry::new();
        e.limit = d.limit;
        e.usage = d.usage;
        e.max = d.max_usage;
        e.failcnt = d.fail_count;
        Some(e).into()
    };
    let stat = |key: &str| s.memory.stats.get(key).copied().unwrap_or(0);
    let mut mem = v1::MemoryStat::new();
    mem.usage = entry(&s.memory.memory);
    mem.swap = entry(&s.memory.memswap);
    mem.kernel = entry(&s.memory.kernel);
    mem.kernel_tcp = entry(&s.memory.kernel_tcp);
    mem.cache = stat("cache");
    mem.rss = stat("rss");
    mem.rss_huge = stat("rss_huge");
    mem.mapped_file = stat("mapped_file");
    mem.dirty = stat("dirty");
    mem.writeback = stat("writeback");
    mem.pg_pg_in = stat("pgpgin");
    mem.pg_pg_out = stat("pgpgout");
    mem.pg_fault = stat("pgfault");
    mem.pg_maj_fault = stat("pgmajfault");
    mem.inactive_anon = stat("inactive_anon");
    mem.active_anon = stat("active_anon");
    mem.inactive_file = stat("inactive_file");
    mem.active_file = stat("active_file");
    mem.unevictable = stat("unevictable");
    mem.hierarchical_memory_limit = stat("hierarchical_memory_limit");
    mem.hierarchical_swap_limit = stat("hierarchical_memsw_limit");
    mem.total_cache = stat("total_cache");
    mem.total_rss = stat("total_rss");
    mem.total_rss_huge = stat("total_rss_huge");
    mem.total_mapped_file = stat("total_mapped_file");
    mem.total_dirty = stat("total_dirty");
    mem.total_writeback = stat("total_writeback");
    mem.total_pg_pg_in = stat("total_pgpgin");
    mem.total_pg_pg_out = stat("total_pgpgout");
    mem.total_pg_fault = stat("total_pgfault");
    mem.total_pg_maj_fault = stat("total_pgmajfault");
    mem.total_inactive_anon = stat("total_inactive_anon");
    mem.total_active_anon = stat("total_active_anon");
    mem.total_inactive_file = stat("total_inactive_file");
    mem.total_active_file = stat("total_active_file");
    mem.total_unevictable = stat("total_unevictable");
    m.memory = Some(mem).into();

    for (pagesize, h) in &s.hugetlb {
        let mut e = v1::HugetlbStat::new();
        e.usage = h.usage;
        e.max = h.max_usage;
        e.failcnt = h.fail_count;
        e.pagesize = pagesize.clone();
        m.hugetlb.push(e);
    }
    m
}

fn to_v2(s: &Stats) -> v2::Metrics {
    let mut m = v2::Metrics::new();
    let mut pids = v2::PidsStat::new();
    pids.current = s.pids.current;
    pids.limit = s.pids.limit;
    m.pids = Some(pids).into();

    // libcgroups reports v2 CPU times in nanoseconds, like v1.
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = s.cpu.usage.usage_total / 1000;
    cpu.user_usec = s.cpu.usage.usage_user / 1000;
    cpu.system_usec = s.cpu.usage.usage_kernel / 1000;
    cpu.nr_periods = s.cpu.throttling.periods;
    cpu.nr_throttled = s.cpu.throttling.throttled_periods;
    cpu.throttled_usec = s.cpu.throttling.throttled_time / 1000;
    m.cpu = Some(cpu).into();

    let stat = |key: &str| s.memory.stats.get(key).copied().unwrap_or(0);
    let mut mem = v2::MemoryStat::new();
    mem.usage = s.memory.memory.usage;
    mem.usage_limit = s.memory.memory.limit;
    mem.swap_usage = s.memory.memswap.usage;
    mem.swap_limit = s.memory.memswap.limit;
    mem.anon = stat("anon");
    mem.file = stat("file");
    mem.kernel_stack = stat("kernel_stack");
    mem.slab = stat("slab");
    mem.sock = stat("sock");
    mem.shmem = stat("shmem");
    mem.file_mapped = stat("file_mapped");
    mem.file_dirty = stat("file_dirty");
    mem.file_writeback = stat("file_writeback");
    mem.inactive_anon = stat("inactive_anon");
    mem.active_anon = stat("active_anon");
    mem.inactive_file = stat("inactive_file");
    mem.active_file = stat("active_file");
    mem.unevictable = stat("unevictable");
    mem.pgfault = stat("pgfault");
    mem.pgmajfault = stat("pgmajfault");
    m.memory = Some(mem).into();
    m
}
