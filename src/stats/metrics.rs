//! CRI metrics (ListMetricDescriptors, ListPodSandboxMetrics): the cAdvisor metric names kubelet serves
//! on `/metrics/cadvisor` when it takes pod and container stats from the runtime
//! (`PodAndContainerStatsFromCRI`).
//!
//! kubelet turns each descriptor into a Prometheus description with the descriptor's label keys and each
//! metric into a sample with the metric's label values, in the same order, so every metric built here
//! carries exactly its descriptor's labels (a unit test holds the two together). CRI values are integers:
//! second counters are whole seconds, as CRI-O reports them.

use berth_runtime::cgroups::{Pressure, Stats};

use super::{ContainerSample, PodSample};
use crate::cri::v1 as cri;

/// The labels of every container metric, as cAdvisor names them.
const BASE: &[&str] = &["container", "id", "image", "name", "namespace", "pod"];
const NETWORK: &[&str] = &["container", "id", "image", "name", "namespace", "pod", "interface"];
const FILESYSTEM: &[&str] = &["container", "id", "image", "name", "namespace", "pod", "device"];
const FAILURES: &[&str] = &["container", "id", "image", "name", "namespace", "pod", "failure_type", "scope"];

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
    gauge("container_spec_memory_limit_bytes", "Memory limit for the container.", BASE),
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

fn container_metrics(sample: &ContainerSample, pod: &PodSample, layer_filesystem: &str) -> cri::ContainerMetrics {
    let record = &sample.record;
    let mut builder = Builder {
        at: sample.at,
        base: [&record.name, &record.id, &record.image, &record.name, &pod.record.namespace, &pod.record.name],
        metrics: Vec::new(),
    };
    let stats: Stats = sample.cgroup.clone().unwrap_or_default();
    if sample.cgroup.is_some() {
        builder.push("container_cpu_usage_seconds_total", &[], stats.cpu_usage_ns / NANOS);
        builder.push("container_cpu_user_seconds_total", &[], stats.cpu_user_ns / NANOS);
        builder.push("container_cpu_system_seconds_total", &[], stats.cpu_system_ns / NANOS);
        builder.push("container_memory_usage_bytes", &[], stats.memory_usage_bytes);
        builder.push("container_memory_working_set_bytes", &[], stats.memory_working_set_bytes);
        builder.push("container_memory_rss", &[], stats.memory_rss_bytes);
        if let Some(swap) = stats.swap_usage_bytes {
            builder.push("container_memory_swap", &[], swap);
        }
        builder.push("container_memory_failures_total", &["pgfault", "container"], stats.page_faults);
        builder.push("container_memory_failures_total", &["pgmajfault", "container"], stats.major_page_faults);
        builder.push("container_spec_memory_limit_bytes", &[], stats.memory_limit_bytes.unwrap_or(0));
        builder.push("container_processes", &[], stats.pids_current);
        pressure(
            &mut builder,
            stats.cpu_pressure,
            "container_pressure_cpu_waiting_seconds_total",
            "container_pressure_cpu_stalled_seconds_total",
        );
        pressure(
            &mut builder,
            stats.memory_pressure,
            "container_pressure_memory_waiting_seconds_total",
            "container_pressure_memory_stalled_seconds_total",
        );
        pressure(
            &mut builder,
            stats.io_pressure,
            "container_pressure_io_waiting_seconds_total",
            "container_pressure_io_stalled_seconds_total",
        );
    }
    builder.push("container_oom_events_total", &[], oom_events(sample));
    if let Some(layer) = sample.writable_layer {
        builder.push("container_fs_usage_bytes", &[layer_filesystem], layer.usage.bytes);
        builder.push("container_fs_inodes_total", &[layer_filesystem], layer.usage.inodes);
    }
    if record.started_at_unix_nanos > 0 {
        builder.push("container_start_time_seconds", &[], record.started_at_unix_nanos as u64 / NANOS);
    }
    builder.push("container_last_seen", &[], sample.at.max(0) as u64 / NANOS);
    cri::ContainerMetrics { container_id: record.id.clone(), metrics: builder.metrics }
}

/// OOM kills the cgroup counted; at least one for a container whose exit was an OOM kill (a kernel without
/// the `oom_kill` counter, or a cgroup already gone).
fn oom_events(sample: &ContainerSample) -> u64 {
    let counted = sample.cgroup.as_ref().map_or(0, |s| s.oom_kills);
    if sample.record.reason == "OOMKilled" { counted.max(1) } else { counted }
}

/// One pod's metrics: its network per interface, and each container's figures.
pub fn pod_metrics(pod: &PodSample, layer_filesystem: &str) -> cri::PodSandboxMetrics {
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
        container_metrics: pod.containers.iter().map(|c| container_metrics(c, pod, layer_filesystem)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::InterfaceCounters;

    fn pod_sample() -> PodSample {
        let pod: crate::records::PodRecord = serde_json::from_value(serde_json::json!({
            "id": "p1", "name": "web", "namespace": "default", "uid": "u", "attempt": 0, "state": "Ready",
            "created_at_unix_nanos": 1, "hostname": "", "log_directory": "", "runtime_handler": "",
            "labels": {}, "annotations": {}, "network_mode": 0, "pid_mode": 1, "ipc_mode": 0,
            "cgroup_parent": "", "netns": null, "ipcns": null, "utsns": null, "ips": [], "network": null
        }))
        .unwrap();
        let container: crate::records::ContainerRecord = serde_json::from_value(serde_json::json!({
            "id": "c1", "pod_id": "p1", "name": "app", "attempt": 0, "state": "Exited", "request_hash": 0,
            "image": "busybox", "image_id": "sha256:x", "image_spec": [], "mounts": [], "resources": [],
            "labels": {}, "annotations": {}, "log_path": "", "uid": 0, "gid": 0,
            "supplemental_groups": [], "stop_signal": 15, "tty": false, "stdin": false, "stdin_once": false,
            "pid": 1, "created_at_unix_nanos": 1, "started_at_unix_nanos": 5_000_000_000i64,
            "finished_at_unix_nanos": 0, "exit_code": 137, "reason": "OOMKilled", "message": ""
        }))
        .unwrap();
        let stats = Stats {
            cpu_usage_ns: 3_500_000_000,
            memory_working_set_bytes: 1024,
            cpu_pressure: Some(Pressure::default()),
            ..Default::default()
        };
        PodSample {
            record: pod,
            at: 10,
            cgroup: None,
            nano_cores: None,
            network: Some(vec![InterfaceCounters { name: "eth0".into(), rx_bytes: 99, ..Default::default() }]),
            network_at: 11,
            containers: vec![ContainerSample {
                record: container,
                at: 12,
                cgroup: Some(stats),
                nano_cores: None,
                writable_layer: None,
            }],
        }
    }

    #[test]
    fn every_metric_carries_its_descriptors_labels() {
        let metrics = pod_metrics(&pod_sample(), "/images");
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
        let metrics = pod_metrics(&pod_sample(), "/images");
        let rx = metrics.metrics.iter().find(|m| m.name == "container_network_receive_bytes_total").unwrap();
        assert_eq!(rx.value.unwrap().value, 99);
        assert_eq!(rx.label_values, ["", "p1", "", "web", "default", "web", "eth0"]);
        assert_eq!(rx.metric_type, cri::MetricType::Counter as i32);
        let container = &metrics.container_metrics[0];
        assert_eq!(container.container_id, "c1");
        let find = |name: &str| container.metrics.iter().find(|m| m.name == name).unwrap();
        assert_eq!(find("container_cpu_usage_seconds_total").value.unwrap().value, 3);
        assert_eq!(find("container_memory_working_set_bytes").metric_type, cri::MetricType::Gauge as i32);
        assert_eq!(find("container_oom_events_total").value.unwrap().value, 1, "an OOMKilled exit counts");
        assert_eq!(find("container_start_time_seconds").value.unwrap().value, 5);
        assert_eq!(
            find("container_cpu_usage_seconds_total").label_values,
            ["app", "c1", "busybox", "app", "default", "web"]
        );
        assert!(container.metrics.iter().all(|m| m.name != "container_pressure_cpu_stalled_seconds_total"));
    }
}
