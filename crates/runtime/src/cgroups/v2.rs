//! cgroup v2: one unified tree; controllers enabled per level through cgroup.subtree_control.

use std::path::Path;

use oci_spec::runtime::LinuxResources;

use super::devices_bpf::DeviceRule;
use super::{DeviceIo, Stats, StatsDetail, cgroup_error, keyed, read, read_u64, write};
use crate::error::{Result, RuntimeError};

/// Creates the cgroup, enabling every available controller on the way down so the leaf can use them.
pub(super) fn create(root: &Path, path: &Path) -> Result<()> {
    let mut current = root.to_path_buf();
    let components: Vec<_> = path.strip_prefix("/").unwrap_or(path).components().collect();
    for component in components {
        let controllers = read(&current, "cgroup.controllers").unwrap_or_default();
        let enable: Vec<String> = controllers.split_whitespace().map(|c| format!("+{c}")).collect();
        if !enable.is_empty() {
            // Best effort: a controller the parent cannot delegate (busy with threads, say) is simply absent below.
            let _ = write(&current, "cgroup.subtree_control", &enable.join(" "));
        }
        current.push(component);
        match std::fs::create_dir(&current) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(cgroup_error(&current, "create", source)),
        }
    }
    Ok(())
}

/// cpu.shares (2..262144) to cpu.weight (1..10000), the conversion runc and crun use.
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 { 0 } else { 1 + (shares.saturating_sub(2) * 9999) / 262_142 }
}

/// The inverse of [`shares_to_weight`], as cAdvisor reports a v2 cgroup's shares.
fn weight_to_shares(weight: u64) -> u64 {
    2 + (weight.clamp(1, 10_000) - 1) * 262_142 / 9_999
}

/// blkio.weight (10..1000) to io.weight (1..10000).
fn blkio_to_io_weight(weight: u16) -> u64 {
    if weight == 0 { 0 } else { 1 + (u64::from(weight).saturating_sub(10) * 9999) / 990 }
}

fn max_or(value: i64) -> String {
    if value < 0 { "max".to_owned() } else { value.to_string() }
}

pub(super) fn apply(dir: &Path, resources: &LinuxResources) -> Result<()> {
    if let Some(memory) = resources.memory() {
        if let Some(reservation) = memory.reservation() {
            write(dir, "memory.low", &max_or(reservation))?;
        }
        if let Some(limit) = memory.limit() {
            write(dir, "memory.max", &max_or(limit))?;
        }
        if let Some(swap) = memory.swap() {
            // The spec's swap is memory+swap (v1 semantics); v2 limits swap alone.
            let value = match (swap, memory.limit()) {
                (s, _) if s < 0 => "max".to_owned(),
                (s, Some(l)) if l > 0 => s.saturating_sub(l).max(0).to_string(),
                (s, _) => s.to_string(),
            };
            write(dir, "memory.swap.max", &value)?;
        }
    }
    if let Some(cpu) = resources.cpu() {
        if let Some(shares) = cpu.shares() {
            write(dir, "cpu.weight", &shares_to_weight(shares).to_string())?;
        }
        if cpu.quota().is_some() || cpu.period().is_some() {
            let quota = cpu.quota().map(max_or).unwrap_or_else(|| "max".to_owned());
            let period = cpu.period().unwrap_or(100_000);
            write(dir, "cpu.max", &format!("{quota} {period}"))?;
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            write(dir, "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            write(dir, "cpuset.mems", mems)?;
        }
    }
    if let Some(pids) = resources.pids() {
        write(dir, "pids.max", &if pids.limit() > 0 { pids.limit().to_string() } else { "max".to_owned() })?;
    }
    if let Some(limits) = resources.hugepage_limits() {
        for limit in limits {
            write(dir, &format!("hugetlb.{}.max", limit.page_size()), &limit.limit().to_string())?;
        }
    }
    if let Some(blkio) = resources.block_io()
        && let Some(weight) = blkio.weight()
    {
        write(dir, "io.weight", &format!("default {}", blkio_to_io_weight(weight)))?;
    }
    if let Some(devices) = resources.devices().as_ref().filter(|d| !d.is_empty()) {
        let mut rules: Vec<DeviceRule> =
            devices.iter().filter_map(|rule| DeviceRule::parse(&super::v1::device_rule(rule), rule.allow())).collect();
        rules.extend(super::DEFAULT_ALLOWED.iter().filter_map(|text| DeviceRule::parse(text, true)));
        super::devices_bpf::apply(dir, &rules)?;
    }
    if let Some(unified) = resources.unified() {
        for (key, value) in unified {
            if key.contains('/') || key.starts_with('.') {
                return Err(RuntimeError::CgroupSetup(format!("invalid unified key {key:?}")));
            }
            write(dir, key, value)?;
        }
    }
    Ok(())
}

pub(super) fn stats(dir: &Path) -> Result<Stats> {
    if !dir.is_dir() {
        return Err(RuntimeError::CgroupMissing { path: dir.to_owned() });
    }
    let mut stats = Stats::default();
    if let Some(cpu) = read(dir, "cpu.stat") {
        stats.cpu_usage_ns = keyed(&cpu, "usage_usec").unwrap_or(0) * 1000;
        stats.cpu_user_ns = keyed(&cpu, "user_usec").unwrap_or(0) * 1000;
        stats.cpu_system_ns = keyed(&cpu, "system_usec").unwrap_or(0) * 1000;
    }
    stats.memory_usage_bytes = read_u64(dir, "memory.current").unwrap_or(0);
    let memory = read(dir, "memory.stat").unwrap_or_default();
    stats.memory_working_set_bytes =
        stats.memory_usage_bytes.saturating_sub(keyed(&memory, "inactive_file").unwrap_or(0));
    stats.memory_rss_bytes = keyed(&memory, "anon").unwrap_or(0);
    stats.page_faults = keyed(&memory, "pgfault").unwrap_or(0);
    stats.major_page_faults = keyed(&memory, "pgmajfault").unwrap_or(0);
    stats.memory_limit_bytes = read_u64(dir, "memory.max");
    stats.oom_kills = read(dir, "memory.events").and_then(|t| keyed(&t, "oom_kill")).unwrap_or(0);
    stats.pids_current = read_u64(dir, "pids.current").unwrap_or(0);
    stats.pids_limit = read_u64(dir, "pids.max");
    stats.swap_usage_bytes = read_u64(dir, "memory.swap.current");
    stats.swap_limit_bytes = read_u64(dir, "memory.swap.max");
    stats.memory_cache_bytes = keyed(&memory, "file").unwrap_or(0);
    stats.memory_mapped_file_bytes = keyed(&memory, "file_mapped").unwrap_or(0);
    Ok(stats)
}

pub(super) fn stats_detail(dir: &Path) -> Result<StatsDetail> {
    if !dir.is_dir() {
        return Err(RuntimeError::CgroupMissing { path: dir.to_owned() });
    }
    Ok(StatsDetail {
        memory_failcnt: read(dir, "memory.events").and_then(|t| keyed(&t, "max")).unwrap_or(0),
        memory_max_usage_bytes: read_u64(dir, "memory.peak"),
        cpu_shares: read_u64(dir, "cpu.weight").map(weight_to_shares),
        cpu_period_us: read(dir, "cpu.max").and_then(|t| t.split_whitespace().nth(1)?.parse().ok()),
        memory_reservation_bytes: read_u64(dir, "memory.low").filter(|low| *low > 0),
        block_io: read(dir, "io.stat").map(|t| DeviceIo::parse_io_stat(&t)).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn weights_convert_like_other_runtimes() {
        assert_eq!(super::shares_to_weight(2), 1);
        assert_eq!(super::shares_to_weight(1024), 39);
        assert_eq!(super::shares_to_weight(262_144), 10_000);
        assert_eq!(super::blkio_to_io_weight(10), 1);
        assert_eq!(super::blkio_to_io_weight(1000), 10_000);
    }
}
