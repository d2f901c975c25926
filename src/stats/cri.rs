//! Samples as CRI's ContainerStats and PodSandboxStats.

use berth_runtime::cgroups::{Pressure, PressureLine, Stats};

use super::{ContainerSample, InterfaceCounters, PodSample, network};
use crate::cri::v1 as cri;

fn value(v: u64) -> Option<cri::UInt64Value> {
    Some(cri::UInt64Value { value: v })
}

fn psi_data(line: PressureLine) -> cri::PsiData {
    cri::PsiData { total: line.total_us * 1000, avg10: line.avg10, avg60: line.avg60, avg300: line.avg300 }
}

fn psi(pressure: Option<Pressure>) -> Option<cri::PsiStats> {
    let pressure = pressure?;
    Some(cri::PsiStats { some: Some(psi_data(pressure.some)), full: pressure.full.map(psi_data) })
}

fn cpu(at: i64, stats: &Stats, nano_cores: Option<u64>) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: at,
        usage_core_nano_seconds: value(stats.cpu_usage_ns),
        usage_nano_cores: nano_cores.and_then(value),
        psi: psi(stats.cpu_pressure),
    }
}

fn memory(at: i64, stats: &Stats) -> cri::MemoryUsage {
    cri::MemoryUsage {
        timestamp: at,
        working_set_bytes: value(stats.memory_working_set_bytes),
        // kubelet's definition: what the limit leaves beside the working set; unset without a limit.
        available_bytes: stats
            .memory_limit_bytes
            .and_then(|limit| value(limit.saturating_sub(stats.memory_working_set_bytes))),
        usage_bytes: value(stats.memory_usage_bytes),
        rss_bytes: value(stats.memory_rss_bytes),
        page_faults: value(stats.page_faults),
        major_page_faults: value(stats.major_page_faults),
        psi: psi(stats.memory_pressure),
    }
}

fn swap(at: i64, stats: &Stats) -> Option<cri::SwapUsage> {
    let usage = stats.swap_usage_bytes?;
    Some(cri::SwapUsage {
        timestamp: at,
        swap_usage_bytes: value(usage),
        swap_available_bytes: stats.swap_limit_bytes.and_then(|limit| value(limit.saturating_sub(usage))),
    })
}

fn io(at: i64, stats: &Stats) -> Option<cri::IoUsage> {
    stats.io_pressure.map(|pressure| cri::IoUsage { timestamp: at, psi: psi(Some(pressure)) })
}

impl ContainerSample {
    pub fn attributes(&self) -> cri::ContainerAttributes {
        let record = &self.record;
        cri::ContainerAttributes {
            id: record.id.clone(),
            metadata: Some(cri::ContainerMetadata { name: record.name.clone(), attempt: record.attempt }),
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
        }
    }

    /// The CRI stats; `layer_filesystem` names the filesystem the writable layer is on.
    pub fn to_cri(&self, layer_filesystem: &str) -> cri::ContainerStats {
        let stats = self.cgroup.as_ref();
        cri::ContainerStats {
            attributes: Some(self.attributes()),
            cpu: stats.map(|s| cpu(self.at, s, self.nano_cores)),
            memory: stats.map(|s| memory(self.at, s)),
            writable_layer: self.writable_layer.map(|layer| cri::FilesystemUsage {
                timestamp: layer.measured_at,
                fs_id: Some(cri::FilesystemIdentifier { mountpoint: layer_filesystem.to_owned() }),
                used_bytes: value(layer.usage.bytes),
                inodes_used: value(layer.usage.inodes),
            }),
            swap: stats.and_then(|s| swap(self.at, s)),
            io: stats.and_then(|s| io(self.at, s)),
        }
    }
}

fn interface(counters: &InterfaceCounters) -> cri::NetworkInterfaceUsage {
    cri::NetworkInterfaceUsage {
        name: counters.name.clone(),
        rx_bytes: value(counters.rx_bytes),
        rx_errors: value(counters.rx_errors),
        tx_bytes: value(counters.tx_bytes),
        tx_errors: value(counters.tx_errors),
    }
}

impl PodSample {
    pub fn to_cri(&self, layer_filesystem: &str) -> cri::PodSandboxStats {
        let record = &self.record;
        let stats = self.cgroup.as_ref();
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: record.id.clone(),
                metadata: Some(cri::PodSandboxMetadata {
                    name: record.name.clone(),
                    uid: record.uid.clone(),
                    namespace: record.namespace.clone(),
                    attempt: record.attempt,
                }),
                labels: record.labels.clone().into_iter().collect(),
                annotations: record.annotations.clone().into_iter().collect(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: stats.map(|s| cpu(self.at, s, self.nano_cores)),
                memory: stats.map(|s| memory(self.at, s)),
                network: self.network.as_ref().map(|interfaces| cri::NetworkUsage {
                    timestamp: self.network_at,
                    default_interface: network::default_interface(interfaces).map(interface),
                    interfaces: interfaces.iter().map(interface).collect(),
                }),
                process: stats.map(|s| cri::ProcessUsage { timestamp: self.at, process_count: value(s.pids_current) }),
                containers: self.containers.iter().map(|c| c.to_cri(layer_filesystem)).collect(),
                io: stats.and_then(|s| io(self.at, s)),
            }),
            windows: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{ContainerRecord, ContainerRecordState};
    use crate::stats::LayerUsage;

    fn record() -> ContainerRecord {
        serde_json::from_value(serde_json::json!({
            "id": "c1", "pod_id": "p1", "name": "web", "attempt": 2, "state": "Running", "request_hash": 0,
            "image": "busybox", "image_id": "sha256:x", "image_spec": [], "mounts": [], "resources": [],
            "labels": {"app": "web"}, "annotations": {}, "log_path": "", "uid": 0, "gid": 0,
            "supplemental_groups": [], "stop_signal": 15, "tty": false, "stdin": false, "stdin_once": false,
            "pid": 1, "created_at_unix_nanos": 1, "started_at_unix_nanos": 2, "finished_at_unix_nanos": 0,
            "exit_code": 0, "reason": "", "message": ""
        }))
        .expect("a container record")
    }

    #[test]
    fn container_stats_carry_cpu_memory_swap_psi_and_the_layer() {
        let stats = Stats {
            cpu_usage_ns: 5_000,
            memory_usage_bytes: 300,
            memory_working_set_bytes: 200,
            memory_rss_bytes: 150,
            memory_limit_bytes: Some(1000),
            page_faults: 9,
            major_page_faults: 1,
            swap_usage_bytes: Some(10),
            swap_limit_bytes: Some(100),
            memory_pressure: Some(Pressure {
                some: PressureLine { avg10: 1.5, avg60: 0.0, avg300: 0.0, total_us: 3 },
                full: None,
            }),
            ..Default::default()
        };
        let sample = ContainerSample {
            record: record(),
            at: 77,
            cgroup: Some(stats),
            nano_cores: Some(250_000_000),
            writable_layer: Some(LayerUsage {
                usage: crate::disk_usage::DiskUsage { bytes: 4096, inodes: 3 },
                measured_at: 70,
            }),
            detail: None,
            processes: None,
        };
        assert_eq!(sample.record.state, ContainerRecordState::Running);
        let cri = sample.to_cri("/var/lib/berth/images");
        let attributes = cri.attributes.unwrap();
        assert_eq!((attributes.id.as_str(), attributes.metadata.unwrap().attempt), ("c1", 2));
        let cpu = cri.cpu.unwrap();
        assert_eq!((cpu.timestamp, cpu.usage_core_nano_seconds.unwrap().value), (77, 5_000));
        assert_eq!(cpu.usage_nano_cores.unwrap().value, 250_000_000);
        assert!(cpu.psi.is_none());
        let memory = cri.memory.unwrap();
        assert_eq!(memory.working_set_bytes.unwrap().value, 200);
        assert_eq!(memory.available_bytes.unwrap().value, 800);
        assert_eq!((memory.rss_bytes.unwrap().value, memory.page_faults.unwrap().value), (150, 9));
        let psi = memory.psi.unwrap();
        assert_eq!(psi.some.unwrap().total, 3000, "microseconds become nanoseconds");
        assert!(psi.full.is_none());
        let swap = cri.swap.unwrap();
        assert_eq!((swap.swap_usage_bytes.unwrap().value, swap.swap_available_bytes.unwrap().value), (10, 90));
        let layer = cri.writable_layer.unwrap();
        assert_eq!((layer.used_bytes.unwrap().value, layer.inodes_used.unwrap().value, layer.timestamp), (4096, 3, 70));
        assert_eq!(layer.fs_id.unwrap().mountpoint, "/var/lib/berth/images");
        assert!(cri.io.is_none());
    }

    #[test]
    fn an_unlimited_container_has_no_available_bytes_and_an_unread_one_no_figures() {
        let sample = ContainerSample {
            record: record(),
            at: 1,
            cgroup: Some(Stats { memory_working_set_bytes: 5, ..Default::default() }),
            nano_cores: None,
            writable_layer: None,
            detail: None,
            processes: None,
        };
        let cri = sample.to_cri("/x");
        assert!(cri.memory.unwrap().available_bytes.is_none());
        assert!(cri.cpu.unwrap().usage_nano_cores.is_none());
        assert!(cri.swap.is_none() && cri.writable_layer.is_none());
        let unread = ContainerSample { cgroup: None, ..sample };
        let cri = unread.to_cri("/x");
        assert!(cri.cpu.is_none() && cri.memory.is_none());
        assert!(cri.attributes.is_some());
    }
}
