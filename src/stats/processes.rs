//! What a container's processes hold, read from /proc: open descriptors, sockets among them, and the soft
//! limit on open files. cAdvisor reports these per container (`container_file_descriptors`,
//! `container_sockets`, `container_ulimits_soft`); berth reads them only for ListPodSandboxMetrics, since
//! listing every descriptor of every process is too dear for the stats calls kubelet makes each second.
//!
//! Also the name of a block device from its numbers, for the per-device I/O metrics.

use std::path::Path;

/// Descriptor counts of a container's processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessCounts {
    pub file_descriptors: u64,
    pub sockets: u64,
    /// `Max open files` of the container's first process (its init), as cAdvisor reports it.
    pub open_files_soft_limit: Option<u64>,
}

/// Counts the descriptors of `pids` under `proc_root` (normally `/proc`). A process that exits meanwhile is
/// skipped: its descriptors are gone.
pub fn count(proc_root: &Path, pids: &[i32]) -> ProcessCounts {
    let mut counts = ProcessCounts::default();
    for pid in pids {
        let Ok(entries) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else { continue };
        for entry in entries.flatten() {
            counts.file_descriptors += 1;
            if std::fs::read_link(entry.path()).is_ok_and(|target| target.to_string_lossy().starts_with("socket:")) {
                counts.sockets += 1;
            }
        }
    }
    counts.open_files_soft_limit = pids
        .iter()
        .min()
        .and_then(|pid| std::fs::read_to_string(proc_root.join(pid.to_string()).join("limits")).ok())
        .and_then(|text| soft_limit(&text, "Max open files"));
    counts
}

/// The soft column of one row of /proc/PID/limits; `None` for `unlimited`.
fn soft_limit(limits: &str, row: &str) -> Option<u64> {
    limits.lines().find_map(|line| line.strip_prefix(row)?.split_whitespace().next()?.parse().ok())
}

/// A block device as the per-device metrics label it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub major: u32,
    pub minor: u32,
    /// `/dev/NAME` from sysfs; `MAJ:MIN` when sysfs does not name it.
    pub name: String,
}

impl BlockDevice {
    pub fn new(major: u32, minor: u32) -> BlockDevice {
        let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).unwrap_or_default();
        let name = uevent
            .lines()
            .find_map(|line| line.strip_prefix("DEVNAME="))
            .map_or_else(|| format!("{major}:{minor}"), |name| format!("/dev/{name}"));
        BlockDevice { major, minor, name }
    }

    /// The block device holding the filesystem at `path`; `None` for a filesystem without one (tmpfs,
    /// overlay).
    pub fn of_path(path: &Path) -> Option<BlockDevice> {
        let dev = nix::sys::stat::stat(path).ok()?.st_dev;
        let (major, minor) = (nix::sys::stat::major(dev) as u32, nix::sys::stat::minor(dev) as u32);
        Path::new(&format!("/sys/dev/block/{major}:{minor}")).exists().then(|| BlockDevice::new(major, minor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
        Max cpu time              unlimited            unlimited            seconds   \n\
        Max open files            1048576              1048576              files     \n";

    #[test]
    fn the_soft_column_of_a_limits_row() {
        assert_eq!(soft_limit(LIMITS, "Max open files"), Some(1_048_576));
        assert_eq!(soft_limit(LIMITS, "Max cpu time"), None, "unlimited");
        assert_eq!(soft_limit(LIMITS, "Max processes"), None, "absent");
    }

    #[test]
    fn counts_descriptors_and_sockets_of_live_processes() {
        let root = tempfile::tempdir().unwrap();
        let fd = root.path().join("7/fd");
        std::fs::create_dir_all(&fd).unwrap();
        std::os::unix::fs::symlink("/dev/null", fd.join("0")).unwrap();
        std::os::unix::fs::symlink("socket:[1234]", fd.join("3")).unwrap();
        std::os::unix::fs::symlink("pipe:[99]", fd.join("4")).unwrap();
        std::fs::write(root.path().join("7/limits"), LIMITS).unwrap();
        let fd = root.path().join("9/fd");
        std::fs::create_dir_all(&fd).unwrap();
        std::os::unix::fs::symlink("socket:[5]", fd.join("1")).unwrap();
        let counts = count(root.path(), &[9, 7, 12]);
        assert_eq!(
            counts,
            ProcessCounts { file_descriptors: 4, sockets: 2, open_files_soft_limit: Some(1_048_576) },
            "pid 12 is gone; the limit is pid 7's, the lowest"
        );
    }

    #[test]
    fn this_process_holds_descriptors() {
        let counts = count(Path::new("/proc"), &[std::process::id() as i32]);
        assert!(counts.file_descriptors >= 3, "{counts:?}");
        assert!(counts.open_files_soft_limit.is_some_and(|l| l > 0), "{counts:?}");
    }
}
