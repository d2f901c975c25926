//! Control groups: finding the host's hierarchies, creating or joining a container's cgroup, applying
//! `linux.resources`, reading stats, killing what is left and removing the cgroup.
//!
//! Hosts are either cgroup v2 only (`/sys/fs/cgroup` is cgroup2) or v1, often with a v2 mount beside the v1
//! controllers ("hybrid", as on the Debian test machines). On v1 the container joins every mounted hierarchy
//! (controllers and named ones like `name=systemd`) and the v2 mount if there is one, so each tool sees it
//! where it looks; resources go to the v1 controllers.

pub mod devices_bpf;
pub mod systemd;
mod v1;
mod v2;

pub use systemd::Scope;

/// Always allowed, whatever the spec's device rules say (as with runc): mknod of any device (creating is
/// harmless; opening is what the rules guard), the default devices, /dev/console, /dev/ptmx and the
/// pseudo-terminals.
pub(crate) const DEFAULT_ALLOWED: [&str; 11] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use serde::Serialize;

use crate::error::{Result, RuntimeError};

/// The cgroup layout of this host.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub enum Layout {
    /// v1 hierarchies (mount point and the controllers or `name=` it carries), plus the v2 mount in hybrid mode.
    V1 {
        hierarchies: Vec<(PathBuf, Vec<String>)>,
        unified: Option<PathBuf>,
    },
    V2 {
        root: PathBuf,
    },
}

impl Layout {
    /// The host's layout, read once per process. The hierarchies a host mounts stay where they are while it
    /// runs, and /proc/self/mountinfo grows with every pod's mounts (pinned namespaces, /dev/shm, rootfs):
    /// with 250 mounts one read takes ~0.45 ms, which every container start and exec of a shim would pay,
    /// and the container's init again (it is handed this layout instead).
    pub fn host() -> Result<Layout> {
        static HOST: std::sync::OnceLock<Layout> = std::sync::OnceLock::new();
        if let Some(layout) = HOST.get() {
            return Ok(layout.clone());
        }
        let layout = Layout::detect()?;
        Ok(HOST.get_or_init(|| layout).clone())
    }

    /// Reads the layout from /proc/self/mountinfo.
    pub fn detect() -> Result<Layout> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(RuntimeError::io("read", "/proc/self/mountinfo"))?;
        Ok(Layout::parse(&mountinfo))
    }

    fn parse(mountinfo: &str) -> Layout {
        let mut hierarchies = Vec::new();
        let mut unified = None;
        for line in mountinfo.lines() {
            let Some((before, after)) = line.split_once(" - ") else { continue };
            let fields: Vec<&str> = before.split(' ').collect();
            let rest: Vec<&str> = after.split(' ').collect();
            let (Some(mount_point), Some(fs_type), Some(super_options)) = (fields.get(4), rest.first(), rest.get(2))
            else {
                continue;
            };
            let mount_point = PathBuf::from(unescape(mount_point));
            match *fs_type {
                "cgroup2" if mount_point == Path::new("/sys/fs/cgroup") => return Layout::V2 { root: mount_point },
                "cgroup2" if unified.is_none() => unified = Some(mount_point),
                "cgroup" => {
                    let controllers: Vec<String> =
                        super_options.split(',').filter(|o| names_a_controller(o)).map(str::to_owned).collect();
                    if !hierarchies.iter().any(|(_, c): &(PathBuf, Vec<String>)| *c == controllers) {
                        hierarchies.push((mount_point, controllers));
                    }
                }
                _ => {}
            }
        }
        Layout::V1 { hierarchies, unified }
    }

    /// Whether this host's cgroup mounts carry `favordynmods` (Linux 6.0+). Without it, moving a process into
    /// a cgroup (the write to `cgroup.procs` that places each container's init and each exec) first waits
    /// for an RCU grace period whenever none happened in the last few milliseconds: about 8 ms on an idle
    /// machine, tens under load, which every CreateContainer and ExecSync pays. With it on any one mount the
    /// kernel keeps the lock those moves take ready for writers, for all hierarchies, and a move takes
    /// ~0.2 ms; forks and exits pay a little more instead (the kernel's cgroup-v2.rst).
    pub fn favors_dynamic_modifications(mountinfo: &str) -> bool {
        mountinfo.lines().filter_map(|line| line.split_once(" - ")).any(|(_, after)| {
            let mut rest = after.split(' ');
            matches!(rest.next(), Some("cgroup" | "cgroup2"))
                && rest.nth(1).is_some_and(|options| options.split(',').any(|o| o == "favordynmods"))
        })
    }

    /// On v1, what a container's cgroup mount at `destination` holds: one mount point per hierarchy below
    /// it, named after the host's mount point (`memory`, `cpu,cpuacct`, `unified`), with the host's
    /// hierarchy and its controllers (None for the unified one). Empty on v2.
    pub fn v1_container_mounts(&self, destination: &Path) -> Vec<(PathBuf, &Path, Option<&[String]>)> {
        let Layout::V1 { hierarchies, unified } = self else { return Vec::new() };
        hierarchies
            .iter()
            .map(|(mount, controllers)| (mount, Some(controllers.as_slice())))
            .chain(unified.iter().map(|mount| (mount, None)))
            .map(|(mount, controllers)| {
                let name = mount.file_name().unwrap_or(std::ffi::OsStr::new("unified"));
                (destination.join(name), mount.as_path(), controllers)
            })
            .collect()
    }

    pub fn is_v2(&self) -> bool {
        matches!(self, Layout::V2 { .. })
    }

    /// Whether containers can be limited by `controller` here: on v1, a hierarchy carrying it is mounted; on
    /// v2, the root's `cgroup.controllers` lists it.
    pub fn has_controller(&self, controller: &str) -> bool {
        match self {
            Layout::V1 { .. } => self.v1_controller(controller).is_some(),
            Layout::V2 { root } => std::fs::read_to_string(root.join("cgroup.controllers"))
                .is_ok_and(|list| list.split_whitespace().any(|c| c == controller)),
        }
    }

    /// The mount point of the v1 hierarchy carrying `controller`.
    fn v1_controller(&self, controller: &str) -> Option<&Path> {
        match self {
            Layout::V1 { hierarchies, .. } => {
                hierarchies.iter().find(|(_, c)| c.iter().any(|x| x == controller)).map(|(p, _)| p.as_path())
            }
            Layout::V2 { .. } => None,
        }
    }
}

/// Mount points escape spaces and such as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Usage figures of a cgroup, as `stats` reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory_usage_bytes: u64,
    /// usage minus inactive file cache, as kubelet defines it.
    pub memory_working_set_bytes: u64,
    pub memory_rss_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub pids_current: u64,
    pub pids_limit: Option<u64>,
    pub oom_kills: u64,
    /// Swap in use (v1: memory+swap usage minus memory usage; needs swap accounting), and its limit.
    pub swap_usage_bytes: Option<u64>,
    pub swap_limit_bytes: Option<u64>,
    /// Pressure stall information, where the kernel has PSI and the cgroup has a v2 directory (always on v2;
    /// on v1 hosts through the unified mount beside the controllers, if there is one).
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
    pub io_pressure: Option<Pressure>,
    /// Page cache, and the part of it mapped into processes (v1 `total_cache`/`total_mapped_file`, v2
    /// `file`/`file_mapped`).
    pub memory_cache_bytes: u64,
    pub memory_mapped_file_bytes: u64,
}

/// The figures only cAdvisor-named metrics need, each from a file of its own: read apart from [`Stats`]
/// ([`Cgroup::stats_detail`]) so the stats calls kubelet makes every few seconds do not pay for them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsDetail {
    /// How often usage hit the limit (v1 `memory.failcnt`, v2 the `max` count of `memory.events`).
    pub memory_failcnt: u64,
    /// The highest usage seen (v1 `memory.max_usage_in_bytes`, v2 `memory.peak` on Linux 5.19+).
    pub memory_max_usage_bytes: Option<u64>,
    /// The limits as the cgroup holds them, in cAdvisor's terms: CPU weight as shares (v2 `cpu.weight`
    /// converted back), the CFS period, the soft memory limit (v1 `memory.soft_limit_in_bytes`, v2
    /// `memory.low`); `None` where unset or unlimited.
    pub cpu_shares: Option<u64>,
    pub cpu_period_us: Option<u64>,
    pub memory_reservation_bytes: Option<u64>,
    /// Block I/O per device that saw any (v1 blkio throttle counters, v2 `io.stat`).
    pub block_io: Vec<DeviceIo>,
}

/// Block I/O of one device: bytes and operations, read and written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeviceIo {
    pub major: u32,
    pub minor: u32,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
}

impl DeviceIo {
    fn entry<'a>(devices: &'a mut Vec<DeviceIo>, device: &str) -> Option<&'a mut DeviceIo> {
        let (major, minor) = device.split_once(':')?;
        let (major, minor) = (major.parse().ok()?, minor.parse().ok()?);
        let at = match devices.iter().position(|d| d.major == major && d.minor == minor) {
            Some(at) => at,
            None => {
                devices.push(DeviceIo { major, minor, ..Default::default() });
                devices.len() - 1
            }
        };
        Some(&mut devices[at])
    }

    /// v2 `io.stat`: `MAJ:MIN rbytes=N wbytes=N rios=N wios=N dbytes=N dios=N` per line.
    pub fn parse_io_stat(text: &str) -> Vec<DeviceIo> {
        let mut devices = Vec::new();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let Some(device) = fields.next().and_then(|d| DeviceIo::entry(&mut devices, d)) else { continue };
            for field in fields {
                let Some((key, value)) = field.split_once('=') else { continue };
                let Ok(value) = value.parse::<u64>() else { continue };
                match key {
                    "rbytes" => device.read_bytes = value,
                    "wbytes" => device.write_bytes = value,
                    "rios" => device.reads = value,
                    "wios" => device.writes = value,
                    _ => {}
                }
            }
        }
        devices
    }

    /// v1 blkio `io_service_bytes` and `io_serviced` files: `MAJ:MIN Read N` lines (and a `Total` line).
    pub fn parse_blkio(service_bytes: &str, serviced: &str) -> Vec<DeviceIo> {
        let mut devices = Vec::new();
        for (text, bytes) in [(service_bytes, true), (serviced, false)] {
            for line in text.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let [device, operation, value] = fields[..] else { continue };
                let Ok(value) = value.parse::<u64>() else { continue };
                let Some(device) = DeviceIo::entry(&mut devices, device) else { continue };
                match (operation, bytes) {
                    ("Read", true) => device.read_bytes = value,
                    ("Write", true) => device.write_bytes = value,
                    ("Read", false) => device.reads = value,
                    ("Write", false) => device.writes = value,
                    _ => {}
                }
            }
        }
        devices
    }
}

/// One `*.pressure` file (Documentation/accounting/psi.rst): the share of time some or all tasks stalled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Pressure {
    pub some: PressureLine,
    /// Absent from cpu.pressure before Linux 5.13.
    pub full: Option<PressureLine>,
}

/// `avg10=0.00 avg60=0.00 avg300=0.00 total=0`: averages in percent, total in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PressureLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

impl Pressure {
    /// Parses a `*.pressure` file; `None` when it has no `some` line.
    pub fn parse(text: &str) -> Option<Pressure> {
        let mut some = None;
        let mut full = None;
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let slot = match fields.next() {
                Some("some") => &mut some,
                Some("full") => &mut full,
                _ => continue,
            };
            let mut parsed = PressureLine::default();
            for field in fields {
                match field.split_once('=') {
                    Some(("avg10", v)) => parsed.avg10 = v.parse().ok()?,
                    Some(("avg60", v)) => parsed.avg60 = v.parse().ok()?,
                    Some(("avg300", v)) => parsed.avg300 = v.parse().ok()?,
                    Some(("total", v)) => parsed.total_us = v.parse().ok()?,
                    _ => {}
                }
            }
            *slot = Some(parsed);
        }
        Some(Pressure { some: some?, full })
    }

    /// The pressure files of a v2 cgroup directory.
    fn read_all(dir: &Path) -> [Option<Pressure>; 3] {
        ["cpu.pressure", "memory.pressure", "io.pressure"].map(|file| read(dir, file).and_then(|t| Pressure::parse(&t)))
    }
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub layout: Layout,
    /// Path below each hierarchy's root, starting with `/`.
    pub path: PathBuf,
    /// With the systemd driver, the scope unit that owns the cgroup: systemd creates and removes it.
    pub scope: Option<Scope>,
}

impl Cgroup {
    pub fn new(layout: Layout, path: PathBuf) -> Cgroup {
        Cgroup { layout, path, scope: None }
    }

    /// The cgroup of a systemd scope: the directories systemd makes for it.
    pub fn of_scope(layout: Layout, scope: Scope) -> Result<Cgroup> {
        Ok(Cgroup { layout, path: scope.cgroup_path()?, scope: Some(scope) })
    }

    /// The cgroup path for a spec's `linux.cgroupsPath`: cgroupfs paths are used as given (relative ones from
    /// the root); systemd's `slice:prefix:name` form is expanded to the directories systemd would create.
    pub fn path_for(cgroups_path: Option<&Path>, id: &str) -> Result<PathBuf> {
        let Some(given) = cgroups_path else {
            return Ok(PathBuf::from(format!("/berth/{id}")));
        };
        let text = given.to_string_lossy();
        let path = match Scope::of_cgroups_path(given) {
            Some(scope) => scope.cgroup_path()?,
            None => Path::new("/").join(given),
        };
        if path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(RuntimeError::CgroupSetup(format!("cgroupsPath {text:?} must not contain \"..\"")));
        }
        Ok(path)
    }

    /// Every directory of this cgroup (one per hierarchy).
    pub fn directories(&self) -> Vec<PathBuf> {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        match &self.layout {
            Layout::V2 { root } => vec![root.join(relative)],
            Layout::V1 { hierarchies, unified } => hierarchies
                .iter()
                .map(|(mount, _)| mount.join(relative))
                .chain(unified.iter().map(|u| u.join(relative)))
                .collect(),
        }
    }

    /// What the container's init mounts for a spec cgroup mount at `destination`, as (mount point in the
    /// container, this cgroup's host directory it shows): on v2 the destination itself, on v1 one directory
    /// per hierarchy below it, named after the host's mount point (`memory`, `cpu,cpuacct`, `unified`).
    pub fn container_mounts(&self, destination: &Path) -> Vec<(PathBuf, PathBuf)> {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        match &self.layout {
            Layout::V2 { root } => vec![(destination.to_path_buf(), root.join(relative))],
            Layout::V1 { .. } => self
                .layout
                .v1_container_mounts(destination)
                .into_iter()
                .map(|(inside, hierarchy, _)| (inside, hierarchy.join(relative)))
                .collect(),
        }
    }

    /// Creates the cgroup (and missing parents); existing ones are joined as they are. A systemd scope is
    /// started with `first_process` in it and the limits systemd understands; without a first process
    /// (a restore, whose processes come later) only the directories are made, and [`Cgroup::adopt`]
    /// starts the scope.
    pub fn create(&self, first_process: Option<i32>, resources: Option<&LinuxResources>) -> Result<()> {
        if let (Some(scope), Some(pid)) = (&self.scope, first_process) {
            scope.start(pid, resources, self.layout.is_v2())?;
            if self.layout.is_v2() {
                // systemd made the directory and enabled the controllers on the way down.
                return Ok(());
            }
        }
        // On v1 systemd makes directories only in the hierarchies of the controllers it manages (and its
        // own); the others (cpuset, freezer, ...) are the runtime's, as with runc.
        match &self.layout {
            Layout::V2 { root } => v2::create(root, &self.path),
            Layout::V1 { .. } => {
                for dir in self.directories() {
                    std::fs::create_dir_all(&dir).map_err(|source| cgroup_error(&dir, "create", source))?;
                }
                if let Some(cpuset) = self.layout.v1_controller("cpuset") {
                    v1::inherit_cpuset(cpuset, &self.path)?;
                }
                Ok(())
            }
        }
    }

    /// Starts the scope of a cgroup made without a first process, with `pid` (and whatever the directories
    /// already hold) in it.
    pub fn adopt(&self, pid: i32, resources: Option<&LinuxResources>) -> Result<()> {
        match &self.scope {
            Some(scope) => scope.start(pid, resources, self.layout.is_v2()),
            None => Ok(()),
        }
    }

    /// Moves a process into the cgroup in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        for dir in self.directories() {
            write(&dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Changes the limits of a running cgroup: the files, then systemd's record of them (a scope's). Files
    /// first, in the order the kernel accepts (v1: a memory limit raised above the memory+swap limit must
    /// wait for it); systemd then writes values already in place.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        self.apply(resources)?;
        match &self.scope {
            Some(scope) => scope.set_limits(resources, self.layout.is_v2()),
            None => Ok(()),
        }
    }

    /// Applies `linux.resources` to the cgroup files.
    pub fn apply(&self, resources: &LinuxResources) -> Result<()> {
        match &self.layout {
            Layout::V2 { root } => v2::apply(&root.join(self.path.strip_prefix("/").unwrap_or(&self.path)), resources),
            Layout::V1 { .. } => v1::apply(self, resources),
        }
    }

    /// The processes in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let dir = match &self.layout {
            Layout::V2 { .. } => self.directories().remove(0),
            Layout::V1 { .. } => {
                let mount = self
                    .layout
                    .v1_controller("pids")
                    .or_else(|| self.layout.v1_controller("memory"))
                    .ok_or_else(|| RuntimeError::CgroupSetup("no pids or memory hierarchy mounted".into()))?;
                mount.join(self.path.strip_prefix("/").unwrap_or(&self.path))
            }
        };
        let procs = match std::fs::read_to_string(dir.join("cgroup.procs")) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(cgroup_error(&dir, "read cgroup.procs", source)),
        };
        Ok(procs.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Sends `signal` to every process in the cgroup, with the cgroup frozen so none can fork away meanwhile.
    pub fn signal_all(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        // An empty cgroup (the common case at delete) needs no freezing: nothing in it can fork.
        if self.pids()?.is_empty() {
            return Ok(());
        }
        let freezer = self.freezer_dir();
        if let Some(dir) = &freezer {
            let _ = v1::set_frozen(dir, &self.layout, true);
        }
        let mut result = Ok(());
        for pid in self.pids()? {
            match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(errno) => result = Err(RuntimeError::sys(format!("kill {pid} with {signal}"))(errno)),
            }
        }
        if let Some(dir) = &freezer {
            let _ = v1::set_frozen(dir, &self.layout, false);
        }
        result
    }

    /// The directory whose freezer stops every process of this cgroup at once (v1: in the freezer
    /// hierarchy, `freezer.state`; v2: the cgroup's own, `cgroup.freeze`); None without a freezer.
    pub fn freezer_dir(&self) -> Option<PathBuf> {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        match &self.layout {
            Layout::V2 { root } => Some(root.join(relative)).filter(|d| d.join("cgroup.freeze").exists()),
            Layout::V1 { .. } => self.layout.v1_controller("freezer").map(|m| m.join(relative)),
        }
    }

    /// Thaws the cgroup (after a checkpoint tool that froze it failed or was stopped half-way).
    /// Freezes every process of the cgroup (a no-op where the host has no freezer).
    pub fn freeze(&self) -> Result<()> {
        match self.freezer_dir() {
            Some(dir) => v1::set_frozen(&dir, &self.layout, true),
            None => Ok(()),
        }
    }

    pub fn thaw(&self) -> Result<()> {
        match self.freezer_dir() {
            Some(dir) => v1::set_frozen(&dir, &self.layout, false),
            None => Ok(()),
        }
    }

    /// Usage figures. A cgroup that does not exist (never created, or removed) is [`RuntimeError::NotFound`]
    /// rather than a row of zeros.
    pub fn stats(&self) -> Result<Stats> {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        let (mut stats, v2_dir) = match &self.layout {
            Layout::V2 { root } => {
                let dir = root.join(relative);
                (v2::stats(&dir)?, Some(dir))
            }
            Layout::V1 { unified, .. } => (v1::stats(self)?, unified.as_ref().map(|u| u.join(relative))),
        };
        if let Some(dir) = v2_dir {
            [stats.cpu_pressure, stats.memory_pressure, stats.io_pressure] = Pressure::read_all(&dir);
        }
        Ok(stats)
    }

    /// The figures of [`StatsDetail`]; a cgroup that does not exist is [`RuntimeError::CgroupMissing`].
    pub fn stats_detail(&self) -> Result<StatsDetail> {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        match &self.layout {
            Layout::V2 { root } => v2::stats_detail(&root.join(relative)),
            Layout::V1 { .. } => v1::stats_detail(self),
        }
    }

    /// Whether the cgroup exists (in the memory hierarchy on v1, where usage is read from).
    pub fn exists(&self) -> bool {
        let relative = self.path.strip_prefix("/").unwrap_or(&self.path);
        match &self.layout {
            Layout::V2 { root } => root.join(relative).is_dir(),
            Layout::V1 { .. } => self
                .layout
                .v1_controller("memory")
                .or_else(|| self.layout.v1_controller("cpuacct"))
                .is_some_and(|mount| mount.join(relative).is_dir()),
        }
    }

    /// Kills what is left and removes the cgroup in every hierarchy (a scope is stopped first: systemd kills
    /// and removes what it manages). Missing directories and units are fine. A scope systemd cannot stop
    /// (unreachable, so it never made one either) still has its processes killed and its directories
    /// removed: a cgroup must never outlive its container because D-Bus failed.
    pub fn delete(&self) -> Result<()> {
        if let Some(scope) = &self.scope
            && let Err(err) = scope.stop()
        {
            tracing::warn!(error = %err, "removing the scope's cgroup directories without systemd");
        }
        let _ = self.signal_all(nix::sys::signal::Signal::SIGKILL);
        for dir in self.directories().into_iter().rev() {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => break,
                    // EBUSY while the last processes finish dying.
                    Err(err) if err.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < deadline => {
                        let _ = self.signal_all(nix::sys::signal::Signal::SIGKILL);
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(source) => return Err(cgroup_error(&dir, "remove", source)),
                }
            }
        }
        Ok(())
    }
}

/// Whether a v1 mount's super option names the controller (or `name=`) the hierarchy carries, rather than
/// being one of cgroupfs's own mount options.
fn names_a_controller(option: &str) -> bool {
    !matches!(
        option,
        "rw" | "ro"
            | "relatime"
            | "noexec"
            | "nosuid"
            | "nodev"
            | "clone_children"
            | "xattr"
            | "noprefix"
            | "none"
            | "cpuset_v2_mode"
            | "favordynmods"
    ) && !option.starts_with("release_agent=")
}

pub(crate) fn cgroup_error(path: &Path, step: impl Into<String>, source: std::io::Error) -> RuntimeError {
    RuntimeError::Cgroup { path: path.to_owned(), step: step.into(), source }
}

pub(crate) fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|source| cgroup_error(&path, format!("write {value:?}"), source))
}

pub(crate) fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok().map(|s| s.trim().to_owned())
}

pub(crate) fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    read(dir, file).and_then(|s| s.parse().ok())
}

/// A `key value` line of a flat-keyed file such as memory.stat.
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_mountinfo_is_v1_with_unified_beside() {
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let layout = Layout::parse(mountinfo);
        let Layout::V1 { hierarchies, unified } = &layout else { panic!("{layout:?}") };
        assert_eq!(hierarchies.len(), 3);
        assert_eq!(unified.as_deref(), Some(Path::new("/sys/fs/cgroup/unified")));
        assert_eq!(layout.v1_controller("memory"), Some(Path::new("/sys/fs/cgroup/memory")));
        let v2 = Layout::parse("30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n");
        assert!(v2.is_v2());
    }

    #[test]
    fn mount_options_are_not_taken_for_controllers_and_favordynmods_is_seen_on_any_cgroup_mount() {
        let mountinfo = "\
31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,favordynmods,xattr
32 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory,release_agent=/bin/true
34 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
";
        let Layout::V1 { hierarchies, .. } = Layout::parse(mountinfo) else { panic!("v1 expected") };
        assert_eq!(
            hierarchies,
            [
                (PathBuf::from("/sys/fs/cgroup/cpu"), vec!["cpu".to_owned()]),
                (PathBuf::from("/sys/fs/cgroup/memory"), vec!["memory".to_owned()])
            ]
        );
        assert!(Layout::favors_dynamic_modifications(mountinfo));
        let plain = "34 30 0:30 / /sys/fs/cgroup rw,favordynmods - cgroup2 cgroup2 rw,nsdelegate\n\
                     40 1 0:40 / /mnt rw - tmpfs favordynmods rw,favordynmods\n";
        // Only a cgroup mount's super options count (the first options field is the mount point's own).
        assert!(!Layout::favors_dynamic_modifications(plain));
        assert!(Layout::favors_dynamic_modifications(
            "34 30 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,favordynmods\n"
        ));
    }

    #[test]
    fn a_cgroup_mount_shows_each_hierarchy_below_the_destination_from_the_cgroup_s_own_directory() {
        let v1 = Layout::parse(
            "31 30 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             34 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
        );
        let cgroup = Cgroup::new(v1, PathBuf::from("/kubepods/pod1/c1"));
        assert_eq!(
            cgroup.container_mounts(Path::new("/sys/fs/cgroup")),
            [
                (
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                    PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/kubepods/pod1/c1")
                ),
                (PathBuf::from("/sys/fs/cgroup/unified"), PathBuf::from("/sys/fs/cgroup/unified/kubepods/pod1/c1")),
            ]
        );
        let v2 = Cgroup::new(Layout::parse("30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"), "/c1".into());
        assert_eq!(
            v2.container_mounts(Path::new("/sys/fs/cgroup")),
            [(PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/sys/fs/cgroup/c1"))]
        );
    }

    #[test]
    fn cgroup_paths_from_specs() {
        assert_eq!(Cgroup::path_for(None, "c1").unwrap(), PathBuf::from("/berth/c1"));
        assert_eq!(
            Cgroup::path_for(Some(Path::new("/kubepods/pod1/c1")), "c1").unwrap(),
            PathBuf::from("/kubepods/pod1/c1")
        );
        assert_eq!(Cgroup::path_for(Some(Path::new("rel/c1")), "c1").unwrap(), PathBuf::from("/rel/c1"));
        assert_eq!(
            Cgroup::path_for(Some(Path::new("kubepods-burstable-pod1.slice:cri-berth:abc")), "abc").unwrap(),
            PathBuf::from("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-berth-abc.scope")
        );
        assert!(Cgroup::path_for(Some(Path::new("/a/../../etc")), "c").is_err());
    }

    fn write_files(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    const PRESSURE: &str =
        "some avg10=2.00 avg60=1.00 avg300=0.50 total=4000000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n";

    #[test]
    fn v2_stats_read_the_unified_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pod/c1");
        write_files(
            &dir,
            &[
                ("cpu.stat", "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n"),
                ("memory.current", "10485760\n"),
                (
                    "memory.stat",
                    "anon 6291456\nfile 4194304\nfile_mapped 8192\ninactive_file 2097152\npgfault 100\npgmajfault 2\n",
                ),
                ("memory.peak", "11534336\n"),
                ("memory.low", "0\n"),
                ("cpu.weight", "1\n"),
                ("cpu.max", "max 100000\n"),
                (
                    "io.stat",
                    "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n253:1 rbytes=1 wbytes=0 rios=1 wios=0\n",
                ),
                ("memory.max", "max\n"),
                ("memory.events", "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n"),
                ("memory.swap.current", "4096\n"),
                ("memory.swap.max", "max\n"),
                ("pids.current", "3\n"),
                ("pids.max", "max\n"),
                ("cpu.pressure", PRESSURE),
                ("memory.pressure", PRESSURE),
                ("io.pressure", PRESSURE),
            ],
        );
        let cgroup = Cgroup::new(Layout::V2 { root: root.path().to_owned() }, PathBuf::from("/pod/c1"));
        let stats = cgroup.stats().unwrap();
        assert_eq!(
            (stats.cpu_usage_ns, stats.cpu_user_ns, stats.cpu_system_ns),
            (1_500_000_000, 1_000_000_000, 500_000_000)
        );
        assert_eq!(stats.memory_usage_bytes, 10_485_760);
        assert_eq!(stats.memory_working_set_bytes, 10_485_760 - 2_097_152);
        assert_eq!((stats.memory_rss_bytes, stats.page_faults, stats.major_page_faults), (6_291_456, 100, 2));
        assert_eq!(
            (stats.memory_limit_bytes, stats.oom_kills, stats.pids_current, stats.pids_limit),
            (None, 1, 3, None)
        );
        assert_eq!((stats.swap_usage_bytes, stats.swap_limit_bytes), (Some(4096), None));
        assert_eq!(stats.io_pressure.unwrap().some.total_us, 4_000_000);
        assert_eq!(stats.cpu_pressure.unwrap().full.unwrap().total_us, 1_000_000);
        assert_eq!((stats.memory_cache_bytes, stats.memory_mapped_file_bytes), (4_194_304, 8192));
        let detail = cgroup.stats_detail().unwrap();
        assert_eq!((detail.memory_failcnt, detail.memory_max_usage_bytes), (3, Some(11_534_336)));
        assert_eq!(
            (detail.cpu_shares, detail.cpu_period_us, detail.memory_reservation_bytes),
            (Some(2), Some(100_000), None)
        );
        assert_eq!(
            detail.block_io,
            [
                DeviceIo { major: 8, minor: 0, read_bytes: 4096, write_bytes: 8192, reads: 1, writes: 2 },
                DeviceIo { major: 253, minor: 1, read_bytes: 1, write_bytes: 0, reads: 1, writes: 0 },
            ]
        );
        let gone = Cgroup::new(Layout::V2 { root: root.path().to_owned() }, PathBuf::from("/pod/c2"));
        assert!(matches!(gone.stats(), Err(RuntimeError::CgroupMissing { .. })));
        assert!(matches!(gone.stats_detail(), Err(RuntimeError::CgroupMissing { .. })));
    }

    #[test]
    fn v1_stats_read_each_controller_and_pressure_from_the_unified_mount() {
        let root = tempfile::tempdir().unwrap();
        let mount = |name: &str| root.path().join(name);
        let layout = Layout::V1 {
            hierarchies: vec![
                (mount("cpuacct"), vec!["cpuacct".into()]),
                (mount("memory"), vec!["memory".into()]),
                (mount("pids"), vec!["pids".into()]),
                (mount("cpu"), vec!["cpu".into()]),
                (mount("blkio"), vec!["blkio".into()]),
            ],
            unified: Some(mount("unified")),
        };
        write_files(
            &mount("cpuacct/berth/c1"),
            &[("cpuacct.usage", "2500000000\n"), ("cpuacct.stat", "user 150\nsystem 50\n")],
        );
        write_files(
            &mount("memory/berth/c1"),
            &[
                ("memory.usage_in_bytes", "8388608\n"),
                (
                    "memory.stat",
                    "cache 100\nrss 1\ninactive_file 1\ntotal_cache 2097152\ntotal_rss 4194304\ntotal_mapped_file 4096\ntotal_inactive_file 1048576\ntotal_pgfault 50\ntotal_pgmajfault 1\n",
                ),
                ("memory.failcnt", "0\n"),
                ("memory.max_usage_in_bytes", "9437184\n"),
                ("memory.soft_limit_in_bytes", "9223372036854771712\n"),
                ("memory.limit_in_bytes", "16777216\n"),
                ("memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"),
                ("memory.memsw.usage_in_bytes", "9437184\n"),
                ("memory.memsw.limit_in_bytes", "33554432\n"),
            ],
        );
        write_files(&mount("pids/berth/c1"), &[("pids.current", "4\n"), ("pids.max", "100\n")]);
        write_files(&mount("cpu/berth/c1"), &[("cpu.shares", "2\n"), ("cpu.cfs_period_us", "100000\n")]);
        write_files(
            &mount("blkio/berth/c1"),
            &[
                (
                    "blkio.throttle.io_service_bytes_recursive",
                    "8:0 Read 512\n8:0 Write 1024\n8:0 Sync 0\n8:0 Total 1536\nTotal 1536\n",
                ),
                ("blkio.throttle.io_serviced_recursive", "8:0 Read 1\n8:0 Write 3\n8:0 Total 4\nTotal 4\n"),
                ("blkio.throttle.io_serviced", "8:0 Read 99\n"),
            ],
        );
        write_files(&mount("unified/berth/c1"), &[("memory.pressure", PRESSURE)]);
        let cgroup = Cgroup::new(layout.clone(), PathBuf::from("/berth/c1"));
        let stats = cgroup.stats().unwrap();
        assert_eq!(
            (stats.cpu_usage_ns, stats.cpu_user_ns, stats.cpu_system_ns),
            (2_500_000_000, 1_500_000_000, 500_000_000)
        );
        assert_eq!((stats.memory_usage_bytes, stats.memory_working_set_bytes), (8_388_608, 8_388_608 - 1_048_576));
        assert_eq!((stats.memory_rss_bytes, stats.page_faults, stats.major_page_faults), (4_194_304, 50, 1));
        assert_eq!((stats.memory_limit_bytes, stats.oom_kills), (Some(16_777_216), 2));
        assert_eq!(stats.swap_usage_bytes, Some(1_048_576), "memsw minus memory");
        assert_eq!(stats.swap_limit_bytes, Some(16_777_216), "memsw limit minus memory limit");
        assert_eq!((stats.pids_current, stats.pids_limit), (4, Some(100)));
        assert_eq!(stats.memory_pressure.unwrap().some.avg10, 2.0);
        assert_eq!(stats.cpu_pressure, None, "no cpu.pressure file");
        assert_eq!((stats.memory_cache_bytes, stats.memory_mapped_file_bytes), (2_097_152, 4096));
        let detail = cgroup.stats_detail().unwrap();
        assert_eq!((detail.memory_failcnt, detail.memory_max_usage_bytes), (0, Some(9_437_184)));
        assert_eq!(detail.memory_reservation_bytes, None, "an unlimited soft limit is no reservation");
        assert_eq!((detail.cpu_shares, detail.cpu_period_us), (Some(2), Some(100_000)));
        assert_eq!(
            detail.block_io,
            [DeviceIo { major: 8, minor: 0, read_bytes: 512, write_bytes: 1024, reads: 1, writes: 3 }],
            "the recursive throttle counters"
        );
        assert!(matches!(
            Cgroup::new(layout, PathBuf::from("/berth/c2")).stats(),
            Err(RuntimeError::CgroupMissing { .. })
        ));
    }

    #[test]
    fn pressure_files_parse() {
        let memory =
            "some avg10=1.50 avg60=0.25 avg300=0.00 total=12345\nfull avg10=0.10 avg60=0.00 avg300=0.00 total=99\n";
        let parsed = Pressure::parse(memory).unwrap();
        assert_eq!(parsed.some, PressureLine { avg10: 1.5, avg60: 0.25, avg300: 0.0, total_us: 12345 });
        assert_eq!(parsed.full.unwrap().total_us, 99);
        let old_cpu = Pressure::parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert_eq!((old_cpu.some.total_us, old_cpu.full), (7, None));
        assert_eq!(Pressure::parse(""), None);
        assert_eq!(Pressure::parse("some avg10=x total=1\n"), None);
    }

    #[test]
    fn keyed_files_parse() {
        let stat = "cache 10\ntotal_inactive_file 4096\ninactive_file 7\n";
        assert_eq!(keyed(stat, "total_inactive_file"), Some(4096));
        assert_eq!(keyed(stat, "inactive_file"), Some(7));
        assert_eq!(keyed(stat, "missing"), None);
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
