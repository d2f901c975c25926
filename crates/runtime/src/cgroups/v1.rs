//! cgroup v1: one hierarchy per controller group; resources written to each controller's own files.

use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use super::{
    Cgroup, DEFAULT_ALLOWED, DeviceIo, Layout, Stats, StatsDetail, cgroup_error, keyed, read, read_u64, write,
};
use crate::error::{Result, RuntimeError};

/// A new cpuset cgroup starts with empty cpus and mems and accepts no task until they are set, so each
/// level of the path takes its parent's values (cgroup-v1/cpusets.rst, "cpuset.cpus").
pub(super) fn inherit_cpuset(mount: &Path, path: &Path) -> Result<()> {
    let mut current = mount.to_path_buf();
    for component in path.strip_prefix("/").unwrap_or(path).components() {
        let parent = current.clone();
        current.push(component);
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if read(&current, file).is_some_and(|v| v.is_empty()) {
                let value = read(&parent, file).unwrap_or_default();
                write(&current, file, &value)?;
            }
        }
    }
    Ok(())
}

fn dir_of(cgroup: &Cgroup, controller: &str) -> Option<std::path::PathBuf> {
    cgroup
        .layout
        .v1_controller(controller)
        .map(|mount| mount.join(cgroup.path.strip_prefix("/").unwrap_or(&cgroup.path)))
}

fn require(cgroup: &Cgroup, controller: &str) -> Result<std::path::PathBuf> {
    dir_of(cgroup, controller)
        .ok_or_else(|| RuntimeError::CgroupSetup(format!("the {controller} controller is not mounted on this host")))
}

pub(super) fn apply(cgroup: &Cgroup, resources: &LinuxResources) -> Result<()> {
    if resources.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err(RuntimeError::CgroupSetup("linux.resources.unified needs cgroup v2; this host uses v1".into()));
    }
    if let Some(memory) = resources.memory() {
        let dir = require(cgroup, "memory")?;
        if let Some(reservation) = memory.reservation() {
            write(&dir, "memory.soft_limit_in_bytes", &reservation.to_string())?;
        }
        let limit = memory.limit();
        let swap = memory.swap();
        // memory.limit_in_bytes may never exceed memory.memsw.limit_in_bytes: raise memsw first when growing.
        let set_limit = |value: i64| write(&dir, "memory.limit_in_bytes", &value.to_string());
        let set_swap = |value: i64| {
            if !dir.join("memory.memsw.limit_in_bytes").exists() {
                return Err(RuntimeError::CgroupSetup("a swap limit was asked for but swap accounting is off".into()));
            }
            write(&dir, "memory.memsw.limit_in_bytes", &value.to_string())
        };
        match (limit, swap) {
            (Some(limit), Some(swap)) => {
                if set_limit(limit).is_err() {
                    set_swap(swap)?;
                    set_limit(limit)?;
                } else {
                    set_swap(swap)?;
                }
            }
            (Some(limit), None) => set_limit(limit)?,
            (None, Some(swap)) => set_swap(swap)?,
            (None, None) => {}
        }
        if let Some(swappiness) = memory.swappiness() {
            write(&dir, "memory.swappiness", &swappiness.to_string())?;
        }
        if memory.disable_oom_killer() == Some(true) {
            write(&dir, "memory.oom_control", "1")?;
        }
    }
    if let Some(cpu) = resources.cpu() {
        if cpu.shares().is_some() || cpu.quota().is_some() || cpu.period().is_some() {
            let dir = require(cgroup, "cpu")?;
            if let Some(shares) = cpu.shares() {
                write(&dir, "cpu.shares", &shares.to_string())?;
            }
            if let Some(period) = cpu.period() {
                write(&dir, "cpu.cfs_period_us", &period.to_string())?;
            }
            if let Some(quota) = cpu.quota() {
                write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
            }
            if let Some(runtime) = cpu.realtime_runtime() {
                write(&dir, "cpu.rt_runtime_us", &runtime.to_string())?;
            }
            if let Some(period) = cpu.realtime_period() {
                write(&dir, "cpu.rt_period_us", &period.to_string())?;
            }
        }
        if cpu.cpus().is_some() || cpu.mems().is_some() {
            let dir = require(cgroup, "cpuset")?;
            if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                write(&dir, "cpuset.cpus", cpus)?;
            }
            if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
                write(&dir, "cpuset.mems", mems)?;
            }
        }
    }
    if let Some(pids) = resources.pids() {
        let dir = require(cgroup, "pids")?;
        let limit = pids.limit();
        write(&dir, "pids.max", &if limit > 0 { limit.to_string() } else { "max".to_owned() })?;
    }
    if let Some(limits) = resources.hugepage_limits() {
        let dir = require(cgroup, "hugetlb")?;
        for limit in limits {
            write(&dir, &format!("hugetlb.{}.limit_in_bytes", limit.page_size()), &limit.limit().to_string())?;
        }
    }
    if let Some(blkio) = resources.block_io() {
        let dir = require(cgroup, "blkio")?;
        if let Some(weight) = blkio.weight() {
            // Kernels without CFQ expose the weight only through BFQ.
            let file = if dir.join("blkio.weight").exists() { "blkio.weight" } else { "blkio.bfq.weight" };
            write(&dir, file, &weight.to_string())?;
        }
        let throttles = [
            ("blkio.throttle.read_bps_device", blkio.throttle_read_bps_device()),
            ("blkio.throttle.write_bps_device", blkio.throttle_write_bps_device()),
            ("blkio.throttle.read_iops_device", blkio.throttle_read_iops_device()),
            ("blkio.throttle.write_iops_device", blkio.throttle_write_iops_device()),
        ];
        for (file, devices) in throttles {
            for device in devices.iter().flatten() {
                write(&dir, file, &format!("{}:{} {}", device.major(), device.minor(), device.rate()))?;
            }
        }
    }
    if let Some(devices) = resources.devices() {
        let dir = require(cgroup, "devices")?;
        for rule in devices {
            let file = if rule.allow() { "devices.allow" } else { "devices.deny" };
            write(&dir, file, &device_rule(rule))?;
        }
        // The devices every container gets (config-linux.md, "Default Devices") stay usable whatever the
        // rules above deny, as with runc: without them not even /dev/null opens.
        for rule in DEFAULT_ALLOWED {
            write(&dir, "devices.allow", rule)?;
        }
    }
    Ok(())
}

/// `c 1:3 rwm`; a rule with no type or numbers means all devices (`a *:* rwm`).
pub(super) fn device_rule(rule: &LinuxDeviceCgroup) -> String {
    let kind = rule.typ().map(|t| t.as_str().to_owned()).unwrap_or_else(|| "a".to_owned());
    let number = |n: Option<i64>| n.filter(|n| *n >= 0).map(|n| n.to_string()).unwrap_or_else(|| "*".to_owned());
    let access = rule.access().clone().unwrap_or_else(|| "rwm".to_owned());
    format!("{kind} {}:{} {access}", number(rule.major()), number(rule.minor()))
}

pub(super) fn set_frozen(dir: &Path, layout: &Layout, frozen: bool) -> Result<()> {
    if layout.is_v2() {
        return write(dir, "cgroup.freeze", if frozen { "1" } else { "0" });
    }
    write(dir, "freezer.state", if frozen { "FROZEN" } else { "THAWED" })?;
    let want = if frozen { "FROZEN" } else { "THAWED" };
    for _ in 0..1000 {
        if read(dir, "freezer.state").as_deref() == Some(want) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    Err(cgroup_error(dir, format!("wait for {want}"), std::io::Error::from(std::io::ErrorKind::TimedOut)))
}

pub(super) fn stats(cgroup: &Cgroup) -> Result<Stats> {
    if !cgroup.exists() {
        return Err(RuntimeError::CgroupMissing { path: cgroup.path.clone() });
    }
    let mut stats = Stats::default();
    if let Some(dir) = dir_of(cgroup, "cpuacct") {
        stats.cpu_usage_ns = read_u64(&dir, "cpuacct.usage").unwrap_or(0);
        // cpuacct.stat is in USER_HZ ticks (100 per second on Linux).
        if let Some(text) = read(&dir, "cpuacct.stat") {
            stats.cpu_user_ns = keyed(&text, "user").unwrap_or(0) * 10_000_000;
            stats.cpu_system_ns = keyed(&text, "system").unwrap_or(0) * 10_000_000;
        }
    }
    if let Some(dir) = dir_of(cgroup, "memory") {
        stats.memory_usage_bytes = read_u64(&dir, "memory.usage_in_bytes").unwrap_or(0);
        let text = read(&dir, "memory.stat").unwrap_or_default();
        let inactive_file = keyed(&text, "total_inactive_file").unwrap_or(0);
        stats.memory_working_set_bytes = stats.memory_usage_bytes.saturating_sub(inactive_file);
        stats.memory_rss_bytes = keyed(&text, "total_rss").unwrap_or(0);
        stats.page_faults = keyed(&text, "total_pgfault").unwrap_or(0);
        stats.major_page_faults = keyed(&text, "total_pgmajfault").unwrap_or(0);
        // An unlimited cgroup reports a huge page-aligned number rather than "max".
        stats.memory_limit_bytes = read_u64(&dir, "memory.limit_in_bytes").filter(|l| *l < (1 << 62));
        stats.oom_kills = read(&dir, "memory.oom_control").and_then(|t| keyed(&t, "oom_kill")).unwrap_or(0);
        stats.memory_cache_bytes = keyed(&text, "total_cache").unwrap_or(0);
        stats.memory_mapped_file_bytes = keyed(&text, "total_mapped_file").unwrap_or(0);
        // memsw counts memory plus swap; the files exist only with swap accounting on.
        if let Some(memsw) = read_u64(&dir, "memory.memsw.usage_in_bytes") {
            stats.swap_usage_bytes = Some(memsw.saturating_sub(stats.memory_usage_bytes));
            stats.swap_limit_bytes = read_u64(&dir, "memory.memsw.limit_in_bytes")
                .filter(|l| *l < (1 << 62))
                .map(|memsw_limit| memsw_limit.saturating_sub(stats.memory_limit_bytes.unwrap_or(0)));
        }
    }
    if let Some(dir) = dir_of(cgroup, "pids") {
        stats.pids_current = read_u64(&dir, "pids.current").unwrap_or(0);
        stats.pids_limit = read_u64(&dir, "pids.max");
    }
    Ok(stats)
}

pub(super) fn stats_detail(cgroup: &Cgroup) -> Result<StatsDetail> {
    if !cgroup.exists() {
        return Err(RuntimeError::CgroupMissing { path: cgroup.path.clone() });
    }
    let mut detail = StatsDetail::default();
    if let Some(dir) = dir_of(cgroup, "memory") {
        detail.memory_failcnt = read_u64(&dir, "memory.failcnt").unwrap_or(0);
        detail.memory_max_usage_bytes = read_u64(&dir, "memory.max_usage_in_bytes");
        detail.memory_reservation_bytes = read_u64(&dir, "memory.soft_limit_in_bytes").filter(|l| *l < (1 << 62));
    }
    if let Some(dir) = dir_of(cgroup, "cpu") {
        detail.cpu_shares = read_u64(&dir, "cpu.shares");
        detail.cpu_period_us = read_u64(&dir, "cpu.cfs_period_us");
    }
    if let Some(dir) = dir_of(cgroup, "blkio") {
        // The throttle counters count every request, whatever the I/O scheduler; prefer the recursive ones.
        let file =
            |name: &str| read(&dir, &format!("{name}_recursive")).or_else(|| read(&dir, name)).unwrap_or_default();
        detail.block_io =
            DeviceIo::parse_blkio(&file("blkio.throttle.io_service_bytes"), &file("blkio.throttle.io_serviced"));
    }
    Ok(detail)
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};

    #[test]
    fn device_rules_render_as_the_kernel_expects() {
        let deny_all = LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().unwrap();
        assert_eq!(super::device_rule(&deny_all), "a *:* rwm");
        let null = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .access("rwm")
            .build()
            .unwrap();
        assert_eq!(super::device_rule(&null), "c 1:3 rwm");
    }
}
