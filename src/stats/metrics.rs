//! CRI metrics (ListMetricDescriptors, ListPodSandboxMetrics): the cAdvisor metric names kubelet serves
//! on `/metrics/cadvisor` when it takes pod and container stats from the runtime
//! (`PodAndContainerStatsFromCRI`).
//!
//! kubelet turns each descriptor into a Prometheus description with the descriptor's label keys and each
//! metric into a sample with the metric's label values, in the same order, so every metric built here
//! carries exactly its descriptor's labels (a unit test holds the two together). CRI values are integers:
//! second counters are whole seconds, as CRI-O reports them.
//!
//! As in cAdvisor, a container has metrics while it runs: an exited one's cgroup is empty or gone, and its
//! last figures under the same labels would stand beside the running attempt's.

use berth_runtime::cgroups::{DeviceIo, Pressure, Stats, StatsDetail};

use super::{BlockDevice, ContainerSample, PodSample};
use crate::cri::v1 as cri;
use crate::records::ContainerRecordState;

/// The labels of every container metric, as cAdvisor names them.
const BASE: &[&str] = &["container", "id", "image", "name", "namespace", "pod"];
const NETWORK: &[&str] = &["container", "id", "image", "name", "namespace", "pod", "interface"];
const FILESYSTEM: &[&str] = &["container", "id", "image", "name", "namespace", "pod", "device"];
const FAILURES: &[&str] = &["container", "id", "image", "name", "namespace", "pod", "failure_type", "scope"];
const ULIMIT: &[&str] = &["container", "id", "image", "name", "namespace", "pod", "ulimit"];
const BLOCK_DEVICE: &[&str] =
    &["container", "id", "image", "name", "namespace", "pod", "device", "major", "minor", "operation"];

struct Descriptor {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    counter: bool,
}

const fn counter(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Descriptor {
    Descriptor { name, help, labels, counter: true }
}

const fn gauge(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Descriptor {
    Descriptor { name, help, labels, counter: false }
}

const DESCRIPTORS: &[Descriptor] = &[
    counter("container_cpu_usage_seconds_total", "Cumulative cpu time consumed in seconds.", BASE),
    counter("container_cpu_user_seconds_total", "Cumulative user cpu time consumed in seconds.", BASE),
    counter("container_cpu_system_seconds_total", "Cumulative system cpu time consumed in seconds.", BASE),
    gauge(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        BASE,
    ),
    gauge("container_memory_working_set_bytes", "Current working set in bytes.", BASE),
    gauge("container_memory_rss", "Size of RSS in bytes.", BASE),
    gauge("container_memory_swap", "Container swap usage in bytes.", BASE),
    counter("container_memory_failures_total", "Cumulative count of memory allocation failures.", FAILURES),
    gauge("container_memory_cache", "Page cache of the container, in bytes.", BASE),
    gauge("container_memory_mapped_file", "Page cache mapped into the container's processes, in bytes.", BASE),
    counter("container_memory_failcnt", "Times the container's memory usage reached its limit.", BASE),
    gauge("container_memory_max_usage_bytes", "Highest memory usage of the container seen, in bytes.", BASE),
    gauge("container_spec_memory_limit_bytes", "Memory limit for the container.", BASE),
    gauge("container_spec_memory_reservation_limit_bytes", "Soft memory limit of the container, in bytes.", BASE),
    gauge("container_spec_memory_swap_limit_bytes", "Swap limit of the container, in bytes.", BASE),
    gauge("container_spec_cpu_shares", "Relative CPU weight of the container, as cgroup v1 shares.", BASE),
    gauge("container_spec_cpu_period", "CFS scheduler period of the container, in microseconds.", BASE),
    gauge("container_threads", "Threads in the container.", BASE),
    gauge("container_threads_max", "Limit on the container's threads (0: none).", BASE),
    gauge("container_file_descriptors", "Open file descriptors of the container's processes.", BASE),
    gauge("container_sockets", "Open sockets of the container's processes.", BASE),
    gauge("container_ulimits_soft", "Soft resource limits of the container's init process.", ULIMIT),
    counter("container_fs_reads_total", "Read operations of the container on the device.", FILESYSTEM),
    counter("container_fs_reads_bytes_total", "Bytes the container read from the device.", FILESYSTEM),
    counter("container_fs_writes_total", "Write operations of the container on the device.", FILESYSTEM),
    counter("container_fs_writes_bytes_total", "Bytes the container wrote to the device.", FILESYSTEM),
    counter("container_blkio_device_usage_total", "Bytes of block I/O by device and operation.", BLOCK_DEVICE),
    counter("container_oom_events_total", "Count of out of memory events observed for the container", BASE),
    gauge("container_processes", "Number of processes running inside the container.", BASE),
    gauge(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        FILESYSTEM,
    ),
    gauge("container_fs_inodes_total", "Number of Inodes", FILESYSTEM),
    counter(
        "container_pressure_cpu_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to CPU congestion.",
        BASE,
    ),
    counter(
        "container_pressure_cpu_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to CPU congestion.",
        BASE,
    ),
    counter(
        "container_pressure_memory_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to memory congestion.",
        BASE,
    ),
    counter(
        "container_pressure_memory_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to memory congestion.",
        BASE,
    ),
    counter(
        "container_pressure_io_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to IO congestion.",
        BASE,
    ),
    counter(
        "container_pressure_io_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to IO congestion.",
        BASE,
    ),
    gauge("container_start_time_seconds", "Start time of the container since unix epoch in seconds.", BASE),
    gauge("container_last_seen", "Last time a container was seen by the exporter", BASE),
    counter("container_network_receive_bytes_total", "Cumulative count of bytes received", NETWORK),
    counter("container_network_receive_packets_total", "Cumulative count of packets received", NETWORK),
    counter(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        NETWORK,
    ),
    counter(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        NETWORK,
    ),
    counter("container_network_transmit_bytes_total", "Cumulative count of bytes transmitted", NETWORK),
    counter("container_network_transmit_packets_total", "Cumulative count of packets transmitted", NETWORK),
    counter(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        NETWORK,
    ),
    counter(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        NETWORK,
    ),
];

/// ListMetricDescriptors.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    DESCRIPTORS
        .iter()
        .map(|d| cri::MetricDescriptor {
            name: d.name.to_owned(),
            help: d.help.to_owned(),
            label_keys: d.labels.iter().map(|l| l.to_string()).collect(),
        })
        .collect()
}

/// Builds metrics that share a timestamp and the base label values.
struct Builder<'a> {
    at: i64,
    base: [&'a str; 6],
    metrics: Vec<cri::Metric>,
}

impl Builder<'_> {
    fn push(&mut self, name: &'static str, extra: &[&str], value: u64) {
        let descriptor = DESCRIPTORS.iter().find(|d| d.name == name).expect("every metric has a descriptor");
        debug_assert_eq!(descriptor.labels.len(), BASE.len() + extra.len(), "{name}");
        self.metrics.push(cri::Metric {
            name: name.to_owned(),
            timestamp: self.at,
            metric_type: if descriptor.counter { cri::MetricType::Counter } else { cri::MetricType::Gauge } as i32,
            label_values: self.base.iter().chain(extra).map(|v| v.to_string()).collect(),
            value: Some(cri::UInt64Value { value }),
        });
    }
}

const NANOS: u64 = 1_000_000_000;

fn pressure(builder: &mut Builder, pressure: Option<Pressure>, waiting: &'static str, stalled: &'static str) {
    let Some(pressure) = pressure else { return };
    builder.push(waiting, &[], pressure.some.total_us / 1_000_000);
    if let Some(full) = pressure.full {
        builder.push(stalled, &[], full.total_us / 1_000_000);
    }
}

fn container_metrics(sample: &ContainerSample, pod: &PodSample, layers: &LayerFilesystem) -> cri::ContainerMetrics {
    let record = &sample.record;
    let mut builder = Builder {
        at: sample.at,
        base: [&record.name, &record.id, &record.image, &record.name, &pod.record.namespace, &pod.record.name],
        metrics: Vec::new(),
    };
    if let Some(stats) = &sample.cgroup {
        cgroup_metrics(&mut builder, stats);
    }
    if let Some(detail) = &sample.detail {
        detail_metrics(&mut builder, detail, layers);
    }
    builder.push("container_oom_events_total", &[], sample.cgroup.as_ref().map_or(0, |s| s.oom_kills));
    if let Some(layer) = sample.writable_layer {
        builder.push("container_fs_usage_bytes", &[layers.name], layer.usage.bytes);
        builder.push("container_fs_inodes_total", &[layers.name], layer.usage.inodes);
    }
    if let Some(processes) = sample.processes {
        builder.push("container_file_descriptors", &[], processes.file_descriptors);
        builder.push("container_sockets", &[], processes.sockets);
        if let Some(limit) = processes.open_files_soft_limit {
            builder.push("container_ulimits_soft", &["max_open_files"], limit);
        }
    }
    if record.started_at_unix_nanos > 0 {
        builder.push("container_start_time_seconds", &[], record.started_at_unix_nanos as u64 / NANOS);
    }
    builder.push("container_last_seen", &[], sample.at.max(0) as u64 / NANOS);
    cri::ContainerMetrics { container_id: record.id.clone(), metrics: builder.metrics }
}

fn cgroup_metrics(builder: &mut Builder, stats: &Stats) {
    builder.push("container_cpu_usage_seconds_total", &[], stats.cpu_usage_ns / NANOS);
    builder.push("container_cpu_user_seconds_total", &[], stats.cpu_user_ns / NANOS);
    builder.push("container_cpu_system_seconds_total", &[], stats.cpu_system_ns / NANOS);
    builder.push("container_memory_usage_bytes", &[], stats.memory_usage_bytes);
    builder.push("container_memory_working_set_bytes", &[], stats.memory_working_set_bytes);
    builder.push("container_memory_rss", &[], stats.memory_rss_bytes);
    builder.push("container_memory_cache", &[], stats.memory_cache_bytes);
    builder.push("container_memory_mapped_file", &[], stats.memory_mapped_file_bytes);
    if let Some(swap) = stats.swap_usage_bytes {
        builder.push("container_memory_swap", &[], swap);
    }
    builder.push("container_memory_failures_total", &["pgfault", "container"], stats.page_faults);
    builder.push("container_memory_failures_total", &["pgmajfault", "container"], stats.major_page_faults);
    // Unset and unlimited limits are 0, as cAdvisor reports them.
    builder.push("container_spec_memory_limit_bytes", &[], stats.memory_limit_bytes.unwrap_or(0));
    builder.push("container_spec_memory_swap_limit_bytes", &[], stats.swap_limit_bytes.unwrap_or(0));
    builder.push("container_processes", &[], stats.pids_current);
    // The pids controller counts tasks, that is threads.
    builder.push("container_threads", &[], stats.pids_current);
    builder.push("container_threads_max", &[], stats.pids_limit.unwrap_or(0));
    pressure(
        builder,
        stats.cpu_pressure,
        "container_pressure_cpu_waiting_seconds_total",
        "container_pressure_cpu_stalled_seconds_total",
    );
    pressure(
        builder,
        stats.memory_pressure,
        "container_pressure_memory_waiting_seconds_total",
        "container_pressure_memory_stalled_seconds_total",
    );
    pressure(
        builder,
        stats.io_pressure,
        "container_pressure_io_waiting_seconds_total",
        "container_pressure_io_stalled_seconds_total",
    );
}

fn detail_metrics(builder: &mut Builder, detail: &StatsDetail, layers: &LayerFilesystem) {
    builder.push("container_memory_failcnt", &[], detail.memory_failcnt);
    // Only where the kernel keeps a peak (v1, v2 on Linux 5.19+): the current usage is no maximum.
    if let Some(peak) = detail.memory_max_usage_bytes {
        builder.push("container_memory_max_usage_bytes", &[], peak);
    }
    builder.push("container_spec_memory_reservation_limit_bytes", &[], detail.memory_reservation_bytes.unwrap_or(0));
    if let Some(shares) = detail.cpu_shares {
        builder.push("container_spec_cpu_shares", &[], shares);
    }
    if let Some(period) = detail.cpu_period_us {
        builder.push("container_spec_cpu_period", &[], period);
    }
    block_io(builder, detail, layers);
}

/// Per-device I/O. The kernel lists only devices that saw I/O; the device under the writable layers is
/// always reported (with zeros until the container does I/O there), so a container that only ever read
/// the page cache still has its I/O series.
fn block_io(builder: &mut Builder, detail: &StatsDetail, layers: &LayerFilesystem) {
    let mut devices: Vec<(BlockDevice, DeviceIo)> =
        detail.block_io.iter().map(|io| ((layers.resolve)(io.major, io.minor), *io)).collect();
    if let Some(device) = layers.device {
        if !devices.iter().any(|(d, _)| d.major == device.major && d.minor == device.minor) {
            let zero = DeviceIo { major: device.major, minor: device.minor, ..Default::default() };
            devices.push((device.clone(), zero));
        }
    }
    for (device, io) in &devices {
        let name = [device.name.as_str()];
        builder.push("container_fs_reads_total", &name, io.reads);
        builder.push("container_fs_reads_bytes_total", &name, io.read_bytes);
        builder.push("container_fs_writes_total", &name, io.writes);
        builder.push("container_fs_writes_bytes_total", &name, io.write_bytes);
        let (major, minor) = (device.major.to_string(), device.minor.to_string());
        for (operation, bytes) in [("Read", io.read_bytes), ("Write", io.write_bytes)] {
            builder.push("container_blkio_device_usage_total", &[&device.name, &major, &minor, operation], bytes);
        }
    }
}

/// Where writable layers live: the name CRI's FilesystemIdentifier gives it, its block device, and how to
/// name any other device.
pub struct LayerFilesystem<'a> {
    pub name: &'a str,
    pub device: Option<&'a BlockDevice>,
    pub resolve: &'a dyn Fn(u32, u32) -> BlockDevice,
}

/// One pod's metrics: its network per interface, and each running container's figures.
pub fn pod_metrics(pod: &PodSample, layers: &LayerFilesystem) -> cri::PodSandboxMetrics {
    let record = &pod.record;
    let mut builder = Builder {
        at: pod.network_at,
        base: ["", &record.id, "", &record.name, &record.namespace, &record.name],
        metrics: Vec::new(),
    };
    for interface in pod.network.iter().flatten() {
        let name = [interface.name.as_str()];
        builder.push("container_network_receive_bytes_total", &name, interface.rx_bytes);
        builder.push("container_network_receive_packets_total", &name, interface.rx_packets);
        builder.push("container_network_receive_packets_dropped_total", &name, interface.rx_dropped);
        builder.push("container_network_receive_errors_total", &name, interface.rx_errors);
        builder.push("container_network_transmit_bytes_total", &name, interface.tx_bytes);
        builder.push("container_network_transmit_packets_total", &name, interface.tx_packets);
        builder.push("container_network_transmit_packets_dropped_total", &name, interface.tx_dropped);
        builder.push("container_network_transmit_errors_total", &name, interface.tx_errors);
    }
    cri::PodSandboxMetrics {
        pod_sandbox_id: record.id.clone(),
        metrics: builder.metrics,
        container_metrics: pod
            .containers
            .iter()
            .filter(|c| c.record.state == ContainerRecordState::Running)
            .map(|c| container_metrics(c, pod, layers))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{InterfaceCounters, ProcessCounts};

    fn device(major: u32, minor: u32) -> BlockDevice {
        BlockDevice { major, minor, name: format!("/dev/test{major}.{minor}") }
    }

    fn metrics_of(pod: &PodSample) -> cri::PodSandboxMetrics {
        let layers_device = device(8, 0);
        pod_metrics(pod, &LayerFilesystem { name: "/images", device: Some(&layers_device), resolve: &device })
    }

    fn pod_sample() -> PodSample {
        let pod: crate::records::PodRecord = serde_json::from_value(serde_json::json!({
            "id": "p1", "name": "web", "namespace": "default", "uid": "u", "attempt": 0, "state": "Ready",
            "created_at_unix_nanos": 1, "hostname": "", "log_directory": "", "runtime_handler": "",
            "labels": {}, "annotations": {}, "network_mode": 0, "pid_mode": 1, "ipc_mode": 0,
            "cgroup_parent": "", "netns": null, "ipcns": null, "utsns": null, "ips": [], "network": null
        }))
        .unwrap();
        let container: crate::records::ContainerRecord = serde_json::from_value(serde_json::json!({
            "id": "c1", "pod_id": "p1", "name": "app", "attempt": 1, "state": "Running", "request_hash": 0,
            "image": "busybox", "image_id": "sha256:x", "image_spec": [], "mounts": [], "resources": [],
            "labels": {}, "annotations": {}, "log_path": "", "uid": 0, "gid": 0,
            "supplemental_groups": [], "stop_signal": 15, "tty": false, "stdin": false, "stdin_once": false,
            "pid": 1, "created_at_unix_nanos": 1, "started_at_unix_nanos": 5_000_000_000i64,
            "finished_at_unix_nanos": 0, "exit_code": 0, "reason": "", "message": ""
        }))
        .unwrap();
        let stats = Stats {
            cpu_usage_ns: 3_500_000_000,
            memory_working_set_bytes: 1024,
            memory_rss_bytes: 512,
            oom_kills: 1,
            pids_current: 3,
            cpu_pressure: Some(Pressure::default()),
            ..Default::default()
        };
        let detail = StatsDetail {
            cpu_shares: Some(2),
            block_io: vec![DeviceIo { major: 7, minor: 1, read_bytes: 4096, reads: 1, ..Default::default() }],
            ..Default::default()
        };
        let mut exited = container.clone();
        exited.id = "c0".into();
        exited.attempt = 0;
        exited.state = crate::records::ContainerRecordState::Exited;
        PodSample {
            record: pod,
            at: 10,
            cgroup: None,
            nano_cores: None,
            network: Some(vec![InterfaceCounters { name: "eth0".into(), rx_bytes: 99, ..Default::default() }]),
            network_at: 11,
            containers: vec![
                ContainerSample {
                    record: exited,
                    at: 12,
                    cgroup: Some(Stats::default()),
                    nano_cores: None,
                    writable_layer: None,
                    detail: None,
                    processes: None,
                },
                ContainerSample {
                    record: container,
                    at: 12,
                    cgroup: Some(stats),
                    nano_cores: None,
                    writable_layer: None,
                    detail: Some(detail),
                    processes: Some(ProcessCounts {
                        file_descriptors: 5,
                        sockets: 1,
                        open_files_soft_limit: Some(1024),
                    }),
                },
            ],
        }
    }

    #[test]
    fn every_metric_carries_its_descriptors_labels() {
        let metrics = metrics_of(&pod_sample());
        let all = metrics.metrics.iter().chain(metrics.container_metrics.iter().flat_map(|c| &c.metrics));
        let mut count = 0;
        for metric in all {
            let descriptor = DESCRIPTORS.iter().find(|d| d.name == metric.name).unwrap();
            assert_eq!(metric.label_values.len(), descriptor.labels.len(), "{}", metric.name);
            count += 1;
        }
        assert!(count > 15, "{count}");
        let names: std::collections::HashSet<&str> = DESCRIPTORS.iter().map(|d| d.name).collect();
        assert_eq!(names.len(), DESCRIPTORS.len(), "descriptor names are unique");
        assert_eq!(descriptors().len(), DESCRIPTORS.len());
    }

    #[test]
    fn values_and_labels_are_what_kubelet_expects() {
        let metrics = metrics_of(&pod_sample());
        let rx = metrics.metrics.iter().find(|m| m.name == "container_network_receive_bytes_total").unwrap();
        assert_eq!(rx.value.unwrap().value, 99);
        assert_eq!(rx.label_values, ["", "p1", "", "web", "default", "web", "eth0"]);
        assert_eq!(rx.metric_type, cri::MetricType::Counter as i32);
        let container = &metrics.container_metrics[0];
        assert_eq!(container.container_id, "c1");
        let find = |name: &str| container.metrics.iter().find(|m| m.name == name).unwrap();
        assert_eq!(find("container_cpu_usage_seconds_total").value.unwrap().value, 3);
        assert_eq!(find("container_memory_working_set_bytes").metric_type, cri::MetricType::Gauge as i32);
        assert_eq!(metrics.container_metrics.len(), 1, "the exited attempt has no metrics");
        assert_eq!(find("container_oom_events_total").value.unwrap().value, 1);
        assert_eq!(find("container_memory_rss").value.unwrap().value, 512);
        assert_eq!(find("container_spec_cpu_shares").value.unwrap().value, 2);
        assert_eq!(find("container_threads").value.unwrap().value, 3);
        assert_eq!(find("container_threads_max").value.unwrap().value, 0, "no pids limit");
        assert_eq!(find("container_file_descriptors").value.unwrap().value, 5);
        assert_eq!(find("container_ulimits_soft").label_values.last().unwrap(), "max_open_files");
        let reads: Vec<(String, u64)> = container
            .metrics
            .iter()
            .filter(|m| m.name == "container_fs_reads_bytes_total")
            .map(|m| (m.label_values.last().unwrap().clone(), m.value.unwrap().value))
            .collect();
        assert_eq!(
            reads,
            [("/dev/test7.1".to_string(), 4096), ("/dev/test8.0".to_string(), 0)],
            "the device that saw I/O, and the layers' device with zeros"
        );
        let usage = container
            .metrics
            .iter()
            .find(|m| {
                m.name == "container_blkio_device_usage_total" && m.label_values.ends_with(&["1".into(), "Read".into()])
            })
            .unwrap();
        assert_eq!(usage.label_values[6..], ["/dev/test7.1", "7", "1", "Read"]);
        assert_eq!(find("container_start_time_seconds").value.unwrap().value, 5);
        assert_eq!(
            find("container_cpu_usage_seconds_total").label_values,
            ["app", "c1", "busybox", "app", "default", "web"]
        );
        assert!(container.metrics.iter().all(|m| m.name != "container_pressure_cpu_stalled_seconds_total"));
    }
}
