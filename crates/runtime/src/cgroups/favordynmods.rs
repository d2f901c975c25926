//! `favordynmods`: the kernel's cgroup mount option that makes moving a process into a cgroup cheap.
//!
//! Writing a pid to `cgroup.procs` takes the global `cgroup_threadgroup_rwsem` for writing. That per-CPU
//! rwsem, when no writer came recently, first waits for an RCU grace period (rcu_sync). Every container
//! start and every exec moves its init helper into the container's cgroups, so each one that finds the
//! rwsem idle pays the grace period: about 12 ms on the 2-CPU test VM, which was two thirds of
//! CreateContainer (hack/bench/pods.sh with BERTH_BENCH_BREAKDOWN=1). runc pays it the same way under
//! containerd. With `favordynmods` (Linux 6.0+, Documentation/admin-guide/cgroup-v2.rst) the rwsem
//! stays in its writer-friendly mode, so migrations never wait, at the cost of slightly dearer fork and
//! exit everywhere on the node.
//!
//! The flag is global: set on any cgroup mount (or at boot with `cgroup_favordynmods=true`), it holds for
//! every hierarchy. It is the operator's choice; berth sets it only when configured to
//! (`[cgroup] favordynmods = true`) and otherwise says at start-up that it is off.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use crate::error::{Result, RuntimeError};

const OPTION: &str = "favordynmods";

/// Whether migrations are cheap on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Favordynmods {
    /// The kernel does not know the option (before 6.0), or there is no cgroup2 mount to set it on.
    Unsupported,
    Off,
    On,
}

/// Reads the state from the kernel's cgroup features and this process's mounts.
pub fn status() -> Result<Favordynmods> {
    if !supported() {
        return Ok(Favordynmods::Unsupported);
    }
    let mountinfo = read_mountinfo()?;
    let Some(mount) = cgroup2_mount(&mountinfo) else { return Ok(Favordynmods::Unsupported) };
    let on = mount.super_options.split(',').any(|o| o == OPTION);
    Ok(if on { Favordynmods::On } else { Favordynmods::Off })
}

/// Turns the option on by remounting the cgroup2 mount with its current options plus `favordynmods`;
/// returns whether anything changed. Every other option is kept: cgroup2 resets the flags a remount does
/// not name, and `nsdelegate` or `memory_recursiveprot` (systemd sets both) change what the node does.
pub fn enable() -> Result<bool> {
    if !supported() {
        return Err(RuntimeError::Setup(format!(
            "the kernel has no cgroup option {OPTION} (Linux 6.0+; /sys/kernel/cgroup/features does not list it)"
        )));
    }
    let mountinfo = read_mountinfo()?;
    let mount_entry =
        cgroup2_mount(&mountinfo).ok_or_else(|| RuntimeError::Setup(format!("no cgroup2 mount to set {OPTION} on")))?;
    let Some((flags, data)) = remount_arguments(mount_entry.mount_options, mount_entry.super_options) else {
        return Ok(false);
    };
    mount(None::<&str>, &mount_entry.point, None::<&str>, flags, Some(data.as_str()))
        .map_err(RuntimeError::sys(format!("remount {} with {data:?}", mount_entry.point.display())))?;
    Ok(true)
}

/// Turns the option off again (the same remount without it), for tests and benchmarks that must leave the
/// host as they found it.
pub fn disable() -> Result<()> {
    let mountinfo = read_mountinfo()?;
    let Some(mount_entry) = cgroup2_mount(&mountinfo) else { return Ok(()) };
    let flags = remount_flags(mount_entry.mount_options);
    let data = super_options_without(mount_entry.super_options, OPTION);
    mount(None::<&str>, &mount_entry.point, None::<&str>, flags, Some(data.as_str()))
        .map_err(RuntimeError::sys(format!("remount {} with {data:?}", mount_entry.point.display())))?;
    Ok(())
}

fn supported() -> bool {
    std::fs::read_to_string("/sys/kernel/cgroup/features").is_ok_and(|f| f.lines().any(|l| l.trim() == OPTION))
}

fn read_mountinfo() -> Result<String> {
    std::fs::read_to_string("/proc/self/mountinfo").map_err(RuntimeError::io("read", "/proc/self/mountinfo"))
}

struct MountEntry<'a> {
    point: PathBuf,
    /// Per-mount options (field 6 of mountinfo: `rw,nosuid,nodev,noexec,relatime`).
    mount_options: &'a str,
    /// The filesystem's own options (after the separator: `rw,nsdelegate,memory_recursiveprot`).
    super_options: &'a str,
}

/// The host's cgroup2 mount: `/sys/fs/cgroup` on a v2 host, the `unified` one beside v1 hierarchies.
fn cgroup2_mount(mountinfo: &str) -> Option<MountEntry<'_>> {
    let mut found = None;
    for line in mountinfo.lines() {
        let Some((before, after)) = line.split_once(" - ") else { continue };
        let fields: Vec<&str> = before.split(' ').collect();
        let rest: Vec<&str> = after.split(' ').collect();
        let (Some(point), Some(mount_options), Some(&"cgroup2"), Some(super_options)) =
            (fields.get(4), fields.get(5), rest.first(), rest.get(2))
        else {
            continue;
        };
        let entry = MountEntry { point: PathBuf::from(super::unescape(point)), mount_options, super_options };
        if entry.point == Path::new("/sys/fs/cgroup") {
            return Some(entry);
        }
        found.get_or_insert(entry);
    }
    found
}

/// The mount(2) flags and data that remount a cgroup2 mount with `favordynmods` and nothing else changed,
/// or `None` when it is already on.
fn remount_arguments(mount_options: &str, super_options: &str) -> Option<(MsFlags, String)> {
    if super_options.split(',').any(|o| o == OPTION) {
        return None;
    }
    let mut data = super_options_without(super_options, OPTION);
    if !data.is_empty() {
        data.push(',');
    }
    data.push_str(OPTION);
    Some((remount_flags(mount_options), data))
}

/// MS_REMOUNT plus the mount's own flags: a remount sets those too, so they are repeated as they are.
fn remount_flags(mount_options: &str) -> MsFlags {
    let mut flags = MsFlags::MS_REMOUNT;
    for option in mount_options.split(',') {
        flags |= match option {
            "ro" => MsFlags::MS_RDONLY,
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            _ => MsFlags::empty(),
        };
    }
    flags
}

/// The filesystem options as a remount's data: without `rw`/`ro` (those are flags) and without `drop`.
fn super_options_without(super_options: &str, drop: &str) -> String {
    super_options.split(',').filter(|o| !matches!(*o, "rw" | "ro" | "") && *o != drop).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
";
    const V2: &str = "\
35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn the_cgroup2_mount_is_the_unified_one_beside_v1_or_the_root_on_v2() {
        let hybrid = cgroup2_mount(HYBRID).unwrap();
        assert_eq!(hybrid.point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(hybrid.super_options, "rw,nsdelegate");
        let v2 = cgroup2_mount(V2).unwrap();
        assert_eq!(v2.point, Path::new("/sys/fs/cgroup"));
        assert_eq!(v2.mount_options, "rw,nosuid,nodev,noexec,relatime");
        assert!(cgroup2_mount("32 31 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n").is_none());
    }

    #[test]
    fn a_remount_keeps_every_other_option_and_the_mount_flags() {
        let (flags, data) = remount_arguments("rw,nosuid,nodev,noexec,relatime", "rw,nsdelegate,memory_recursiveprot")
            .expect("off, so a remount");
        assert_eq!(data, "nsdelegate,memory_recursiveprot,favordynmods");
        assert_eq!(
            flags,
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME
        );
        let (flags, data) = remount_arguments("ro,relatime", "ro").unwrap();
        assert_eq!(data, "favordynmods");
        assert!(flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(remount_arguments("rw", "rw,favordynmods,nsdelegate"), None, "already on: nothing to do");
        assert_eq!(super_options_without("rw,favordynmods,nsdelegate", OPTION), "nsdelegate");
    }
}
