//! Container and pod statistics: what ContainerStats, ListContainerStats, PodSandboxStats,
//! ListPodSandboxStats and ListPodSandboxMetrics answer.
//!
//! [`StatsCollector`] samples a container's cgroup through `berth_runtime::cgroups` (which knows cgroup v1
//! and v2, not CRI), keeps the previous CPU sample of each container and pod in memory to turn cumulative
//! CPU time into a rate (`usage_nano_cores`), reads the writable layer's usage from a cache refreshed in the
//! background ([`layer`]) and a pod's interface counters from inside its network namespace ([`network`]).
//! The result is a [`ContainerSample`] / [`PodSample`], which [`cri`] turns into CRI stats and [`metrics`]
//! into cAdvisor-named metrics. Every method here blocks (it reads /proc and /sys): call it from
//! `Context::blocking`.

pub mod cri;
pub mod layer;
pub mod metrics;
pub mod network;
pub mod processes;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use berth_runtime::cgroups::{Cgroup, Layout as CgroupLayout, Stats, StatsDetail};

use crate::config::CgroupDriver;
use crate::records::{ContainerRecord, ContainerRecordState, PodRecord};

pub use layer::{LayerCache, LayerUsage};
pub use network::InterfaceCounters;
pub use processes::{BlockDevice, ProcessCounts};

/// One container's figures at one moment.
#[derive(Debug, Clone)]
pub struct ContainerSample {
    pub record: ContainerRecord,
    /// When the cgroup was read, nanoseconds since the epoch.
    pub at: i64,
    /// The cgroup's figures; `None` when the cgroup is gone and nothing was ever read from it.
    pub cgroup: Option<Stats>,
    /// CPU use since the previous sample, in billionths of a core; `None` for the first sample.
    pub nano_cores: Option<u64>,
    pub writable_layer: Option<LayerUsage>,
    /// What only ListPodSandboxMetrics reports, read for it alone ([`StatsCollector::add_metrics_detail`]):
    /// the cgroup's further figures and the descriptor counts of the container's processes.
    pub detail: Option<StatsDetail>,
    pub processes: Option<ProcessCounts>,
}

/// One pod's figures at one moment.
#[derive(Debug, Clone)]
pub struct PodSample {
    pub record: PodRecord,
    pub at: i64,
    /// The pod cgroup's figures, or the sum of its containers' when the pod has no cgroup of its own.
    pub cgroup: Option<Stats>,
    pub nano_cores: Option<u64>,
    /// Per-interface counters of the pod's network namespace; `None` for host-network pods or when the
    /// namespace cannot be read.
    pub network: Option<Vec<InterfaceCounters>>,
    /// When the network counters were read.
    pub network_at: i64,
    pub containers: Vec<ContainerSample>,
}

#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: i64,
    usage_ns: u64,
    nano_cores: Option<u64>,
}

/// Samples closer together than this reuse the previous rate: over a few milliseconds the cumulative
/// counter's granularity would dominate.
const MIN_RATE_INTERVAL_NS: i64 = 100_000_000;

/// A first sample has a rate (since the start) only once this much time has passed since the start.
const MIN_FIRST_RATE_INTERVAL_NS: i64 = 1_000_000_000;

/// CPU use between two samples of a cumulative counter, in billionths of a core. A counter that went
/// backwards (a pod whose container went away) has no rate.
fn nano_cores(previous: Option<CpuSample>, at: i64, usage_ns: u64) -> Option<u64> {
    let previous = previous?;
    let elapsed = at - previous.at;
    if elapsed < MIN_RATE_INTERVAL_NS {
        return previous.nano_cores;
    }
    let used = usage_ns.checked_sub(previous.usage_ns)?;
    Some((u128::from(used) * 1_000_000_000 / elapsed as u128) as u64)
}

/// The sum of several cgroups' figures (a pod without a cgroup of its own). Limits and pressure do not
/// add up, so they are left out.
fn sum(stats: impl IntoIterator<Item = Stats>) -> Stats {
    let mut total = Stats::default();
    for s in stats {
        total.cpu_usage_ns += s.cpu_usage_ns;
        total.cpu_user_ns += s.cpu_user_ns;
        total.cpu_system_ns += s.cpu_system_ns;
        total.memory_usage_bytes += s.memory_usage_bytes;
        total.memory_working_set_bytes += s.memory_working_set_bytes;
        total.memory_rss_bytes += s.memory_rss_bytes;
        total.page_faults += s.page_faults;
        total.major_page_faults += s.major_page_faults;
        total.pids_current += s.pids_current;
        total.oom_kills += s.oom_kills;
        if let Some(swap) = s.swap_usage_bytes {
            total.swap_usage_bytes = Some(total.swap_usage_bytes.unwrap_or(0) + swap);
        }
    }
    total
}

/// The cgroup of a pod, from its `cgroup_parent` as kubelet gave it; `None` when it gave none.
fn pod_cgroup_path(cgroup_parent: &str, driver: CgroupDriver) -> Option<PathBuf> {
    let parent = cgroup_parent.trim_end_matches('/');
    if parent.is_empty() {
        return None;
    }
    match driver {
        CgroupDriver::Cgroupfs => Some(Path::new("/").join(parent.trim_start_matches('/'))),
        // A slice name (`kubepods-burstable-pod12.slice`): the runtime crate expands `slice:prefix:name` to
        // the slice's directories plus a scope; the scope's parent is the slice.
        CgroupDriver::Systemd => {
            let slice = parent.rsplit('/').next().unwrap_or(parent);
            let scope = Cgroup::path_for(Some(Path::new(&format!("{slice}:berth:pod"))), "pod").ok()?;
            scope.parent().map(Path::to_path_buf)
        }
    }
}

pub struct StatsCollector {
    runtime_root: PathBuf,
    cgroup_driver: CgroupDriver,
    cgroup_layout: OnceLock<Option<CgroupLayout>>,
    /// Container id → its cgroup path (from the runtime state; it never changes).
    cgroup_paths: Mutex<HashMap<String, PathBuf>>,
    /// Previous CPU samples, by container id and by `pod/<id>`.
    cpu_samples: Mutex<HashMap<String, CpuSample>>,
    /// The last figures read from each container's cgroup, for an exited container whose cgroup is gone.
    last_known: Mutex<HashMap<String, (i64, Stats)>>,
    pub layers: Arc<LayerCache>,
    network: network::NetnsReader,
    /// The filesystem writable layers are on (the image store), as CRI's FilesystemIdentifier names it.
    pub layer_filesystem: String,
    layer_device: OnceLock<Option<BlockDevice>>,
    block_devices: Mutex<HashMap<(u32, u32), BlockDevice>>,
}

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsCollector").finish_non_exhaustive()
    }
}

impl StatsCollector {
    pub fn new(
        runtime_root: PathBuf,
        cgroup_driver: CgroupDriver,
        layer_filesystem: PathBuf,
        upper_dir: layer::UpperDir,
    ) -> StatsCollector {
        StatsCollector {
            runtime_root,
            cgroup_driver,
            cgroup_layout: OnceLock::new(),
            cgroup_paths: Mutex::new(HashMap::new()),
            cpu_samples: Mutex::new(HashMap::new()),
            last_known: Mutex::new(HashMap::new()),
            layers: Arc::new(LayerCache::new(upper_dir)),
            network: network::NetnsReader::default(),
            layer_filesystem: layer_filesystem.display().to_string(),
            layer_device: OnceLock::new(),
            block_devices: Mutex::new(HashMap::new()),
        }
    }

    fn layout(&self) -> Option<&CgroupLayout> {
        self.cgroup_layout
            .get_or_init(|| match CgroupLayout::detect() {
                Ok(layout) => Some(layout),
                Err(err) => {
                    tracing::warn!(error = %crate::error::chain(&err), "cannot find the cgroup hierarchies; stats will be empty");
                    None
                }
            })
            .as_ref()
    }

    fn container_cgroup(&self, id: &str) -> Option<Cgroup> {
        let layout = self.layout()?.clone();
        if let Some(path) = self.cgroup_paths.lock().expect("stats lock").get(id) {
            return Some(Cgroup::new(layout, path.clone()));
        }
        let state = berth_runtime::state::StateDir::new(&self.runtime_root, id).load().ok()?;
        self.cgroup_paths.lock().expect("stats lock").insert(id.to_owned(), state.cgroup_path.clone());
        Some(Cgroup::new(layout, state.cgroup_path))
    }

    /// Rate from the previous sample under `key`, and this sample remembered in its place. The first sample
    /// of something that started at `started_at` (nanoseconds since the epoch) is measured from its start,
    /// when its counter was zero: kubelet's stats provider and the summary API read `usage_nano_cores` on
    /// every call, including the first one long after a container started.
    fn rate(&self, key: &str, at: i64, usage_ns: u64, running: bool, started_at: i64) -> Option<u64> {
        let mut samples = self.cpu_samples.lock().expect("stats lock");
        let since_start = (started_at > 0 && at - started_at >= MIN_FIRST_RATE_INTERVAL_NS).then_some(CpuSample {
            at: started_at,
            usage_ns: 0,
            nano_cores: None,
        });
        let previous = samples.get(key).copied().or(since_start);
        let rate = if running { nano_cores(previous, at, usage_ns) } else { Some(0) };
        // A sample taken too soon after the previous one keeps the previous one as the base.
        if samples.get(key).is_none_or(|p| at - p.at >= MIN_RATE_INTERVAL_NS) {
            samples.insert(key.to_owned(), CpuSample { at, usage_ns, nano_cores: rate });
        }
        rate
    }

    /// Samples one container.
    pub fn container(&self, record: &ContainerRecord) -> ContainerSample {
        let at = crate::records::now_nanos();
        let read = self.container_cgroup(&record.id).map(|cgroup| cgroup.stats());
        let cgroup = match read {
            Some(Ok(stats)) => {
                self.last_known.lock().expect("stats lock").insert(record.id.clone(), (at, stats.clone()));
                Some(stats)
            }
            _ => self.last_known.lock().expect("stats lock").get(&record.id).map(|(_, stats)| stats.clone()),
        };
        let running = record.state == ContainerRecordState::Running;
        let nano_cores = cgroup
            .as_ref()
            .and_then(|stats| self.rate(&record.id, at, stats.cpu_usage_ns, running, record.started_at_unix_nanos));
        let writable_layer = self.layers.usage(&record.id);
        ContainerSample {
            record: record.clone(),
            at,
            cgroup,
            nano_cores,
            writable_layer,
            detail: None,
            processes: None,
        }
    }

    /// Adds what only the metrics report to a running container's sample; left `None` when its cgroup
    /// cannot be read.
    pub fn add_metrics_detail(&self, sample: &mut ContainerSample) {
        let Some(cgroup) = self.container_cgroup(&sample.record.id) else { return };
        sample.detail = cgroup.stats_detail().ok();
        sample.processes = cgroup.pids().ok().map(|pids| processes::count(Path::new("/proc"), &pids));
    }

    /// A block device named once (sysfs is read the first time a device is seen).
    pub fn block_device(&self, major: u32, minor: u32) -> BlockDevice {
        let mut names = self.block_devices.lock().expect("stats lock");
        names.entry((major, minor)).or_insert_with(|| BlockDevice::new(major, minor)).clone()
    }

    /// The block device under the writable layers (where a container's own files go), named once.
    pub fn layer_device(&self) -> Option<&BlockDevice> {
        self.layer_device.get_or_init(|| BlockDevice::of_path(Path::new(&self.layer_filesystem))).as_ref()
    }

    /// Samples one pod and `containers` (its containers).
    pub fn pod(&self, record: &PodRecord, containers: &[ContainerRecord]) -> PodSample {
        let containers: Vec<ContainerSample> = containers.iter().map(|c| self.container(c)).collect();
        let at = crate::records::now_nanos();
        let own = pod_cgroup_path(&record.cgroup_parent, self.cgroup_driver)
            .zip(self.layout())
            .map(|(path, layout)| Cgroup::new(layout.clone(), path))
            .and_then(|cgroup| cgroup.stats().ok());
        let cgroup = own.or_else(|| {
            let read: Vec<Stats> = containers.iter().filter_map(|c| c.cgroup.clone()).collect();
            (!read.is_empty()).then(|| sum(read))
        });
        let running = containers.iter().any(|c| c.record.state == ContainerRecordState::Running);
        let nano_cores = cgroup.as_ref().and_then(|stats| {
            self.rate(&format!("pod/{}", record.id), at, stats.cpu_usage_ns, running, record.created_at_unix_nanos)
        });
        let network = record.netns.as_deref().and_then(|netns| match self.network.read(netns) {
            Ok(interfaces) => Some(interfaces),
            Err(err) => {
                tracing::debug!(pod_sandbox_id = %record.id, error = %crate::error::chain(&err), "no network stats");
                None
            }
        });
        let network_at = crate::records::now_nanos();
        PodSample { record: record.clone(), at, cgroup, nano_cores, network, network_at, containers }
    }

    /// Forgets what is kept about containers and pods that no longer exist.
    pub fn forget_others(&self, containers: &HashSet<String>, pods: &HashSet<String>) {
        self.cgroup_paths.lock().expect("stats lock").retain(|id, _| containers.contains(id));
        self.last_known.lock().expect("stats lock").retain(|id, _| containers.contains(id));
        self.cpu_samples.lock().expect("stats lock").retain(|key, _| match key.strip_prefix("pod/") {
            Some(pod) => pods.contains(pod),
            None => containers.contains(key),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_nano_cores_is_the_rate_since_the_previous_sample() {
        assert_eq!(nano_cores(None, 10, 5), None, "no rate from one sample");
        let previous = CpuSample { at: 1_000_000_000, usage_ns: 2_000_000_000, nano_cores: None };
        // One core busy for two seconds.
        assert_eq!(nano_cores(Some(previous), 3_000_000_000, 4_000_000_000), Some(1_000_000_000));
        // A quarter of a core.
        assert_eq!(nano_cores(Some(previous), 2_000_000_000, 2_250_000_000), Some(250_000_000));
        // Too soon: the previous rate.
        let previous = CpuSample { nano_cores: Some(42), ..previous };
        assert_eq!(nano_cores(Some(previous), 1_010_000_000, 9_000_000_000), Some(42));
        // A counter that went backwards has no rate.
        assert_eq!(nano_cores(Some(previous), 5_000_000_000, 1), None);
    }

    #[test]
    fn the_first_sample_long_after_the_start_has_a_rate_since_the_start() {
        let collector = StatsCollector::new(
            PathBuf::from("/nonexistent"),
            CgroupDriver::Cgroupfs,
            PathBuf::from("/nonexistent"),
            Arc::new(|id: &str| PathBuf::from(id)),
        );
        const S: i64 = 1_000_000_000;
        // Started at 10 s, first asked at 20 s, after 5 s of CPU: half a core on average.
        assert_eq!(collector.rate("a", 20 * S, 5 * S as u64, true, 10 * S), Some(500_000_000));
        // The next call measures from that sample: 1 s of CPU in 4 s.
        assert_eq!(collector.rate("a", 24 * S, 6 * S as u64, true, 10 * S), Some(250_000_000));
        // Within a second of its start a container has no rate yet; nor has one whose start is unknown.
        assert_eq!(collector.rate("b", 10 * S + S / 2, 1, true, 10 * S), None);
        assert_eq!(collector.rate("c", 20 * S, 1, true, 0), None);
        // A stopped container uses nothing.
        assert_eq!(collector.rate("d", 20 * S, 5, false, 10 * S), Some(0));
    }

    #[test]
    fn pods_without_a_cgroup_sum_their_containers() {
        let a = Stats {
            cpu_usage_ns: 10,
            memory_working_set_bytes: 100,
            memory_limit_bytes: Some(1000),
            pids_current: 2,
            oom_kills: 1,
            ..Default::default()
        };
        let b = Stats {
            cpu_usage_ns: 5,
            memory_working_set_bytes: 50,
            pids_current: 1,
            swap_usage_bytes: Some(7),
            ..Default::default()
        };
        let total = sum([a, b]);
        assert_eq!(
            (total.cpu_usage_ns, total.memory_working_set_bytes, total.pids_current, total.oom_kills),
            (15, 150, 3, 1)
        );
        assert_eq!(total.swap_usage_bytes, Some(7));
        assert_eq!(total.memory_limit_bytes, None, "limits do not add up");
    }

    #[test]
    fn pod_cgroups_follow_the_driver() {
        assert_eq!(pod_cgroup_path("", CgroupDriver::Cgroupfs), None);
        assert_eq!(
            pod_cgroup_path("/kubepods/burstable/pod12", CgroupDriver::Cgroupfs),
            Some(PathBuf::from("/kubepods/burstable/pod12"))
        );
        assert_eq!(pod_cgroup_path("kubepods/pod1/", CgroupDriver::Cgroupfs), Some(PathBuf::from("/kubepods/pod1")));
        assert_eq!(
            pod_cgroup_path("kubepods-burstable-pod12.slice", CgroupDriver::Systemd),
            Some(PathBuf::from("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12.slice"))
        );
    }
}
