//! `berth stats` and `berth statsp`, like crictl's: CPU, memory and disk of containers, CPU and memory of
//! pods, once or `--watch`ed.
//!
//! CPU % is measured by the client itself from two samples `--seconds` apart (cumulative CPU time over
//! elapsed time), as crictl does, so it means the same whoever else polls the daemon.

use std::collections::HashMap;
use std::time::Duration;

use super::client::{Client, rpc_failed};
use super::listing;
use super::output::{OutputFormat, print, table};
use crate::cri::v1::{
    ContainerFilter, ContainerState, ContainerStateValue, ContainerStats, ContainerStatsFilter,
    ListContainerStatsRequest, ListContainerStatsResponse, ListContainersRequest, ListPodSandboxStatsRequest,
    ListPodSandboxStatsResponse, PodSandboxStats, PodSandboxStatsFilter,
};

/// `berth stats [ID]`.
#[derive(Debug, clap::Args)]
pub struct ContainerStatsArgs {
    /// Only the container with this ID (or unique ID prefix).
    pub id: Option<String>,
    /// Every container, not only running ones.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Only containers of this pod (ID or unique ID prefix).
    #[arg(long, short = 'p')]
    pub pod: Option<String>,
    /// Only containers with this label (key=value; repeat for several).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub common: StatsOptions,
}

/// `berth statsp [ID]`.
#[derive(Debug, clap::Args)]
pub struct PodStatsArgs {
    /// Only the pod with this ID (or unique ID prefix).
    pub id: Option<String>,
    /// Only pods with this label (key=value; repeat for several).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub common: StatsOptions,
}

#[derive(Debug, clap::Args)]
pub struct StatsOptions {
    /// Seconds between the two samples CPU % is measured over.
    #[arg(long, short = 's', default_value_t = 1)]
    pub seconds: u64,
    /// Print again every `--seconds` until interrupted.
    #[arg(long, short = 'w')]
    pub watch: bool,
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Sizes as crictl prints them (go-units' HumanSize): decimal units, four significant digits.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{}{}", significant(value, 4), UNITS[unit])
}

/// `%.<digits>g` for values below 10^digits: at most `digits` significant digits, no trailing zeros.
fn significant(value: f64, digits: i32) -> String {
    if value == 0.0 {
        return "0".to_owned();
    }
    let integer_digits = value.abs().log10().floor() as i32 + 1;
    let decimals = (digits - integer_digits).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.').to_owned() } else { text }
}

/// CPU % between two cumulative samples (nanoseconds of CPU and of wall time).
pub fn cpu_percent(before: Option<(i64, u64)>, after: Option<(i64, u64)>) -> Option<f64> {
    let ((t0, cpu0), (t1, cpu1)) = (before?, after?);
    let elapsed = t1 - t0;
    if elapsed <= 0 {
        return None;
    }
    Some(cpu1.saturating_sub(cpu0) as f64 / elapsed as f64 * 100.0)
}

fn cpu_sample(cpu: &Option<crate::cri::v1::CpuUsage>) -> Option<(i64, u64)> {
    let cpu = cpu.as_ref()?;
    Some((cpu.timestamp, cpu.usage_core_nano_seconds?.value))
}

fn percent(value: Option<f64>) -> String {
    value.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".to_owned())
}

async fn container_stats(client: &mut Client, filter: &ContainerStatsFilter) -> Result<Vec<ContainerStats>, String> {
    let request = ListContainerStatsRequest { filter: Some(filter.clone()) };
    Ok(client
        .runtime
        .list_container_stats(request)
        .await
        .map_err(|s| rpc_failed("ListContainerStats", s))?
        .into_inner()
        .stats)
}

pub async fn containers(mut client: Client, args: ContainerStatsArgs) -> Result<(), String> {
    let filter = ContainerStatsFilter {
        id: args.id.clone().unwrap_or_default(),
        pod_sandbox_id: args.pod.clone().unwrap_or_default(),
        label_selector: listing::parse_labels(&args.labels)?,
    };
    let interval = Duration::from_secs(args.common.seconds.max(1));
    let mut before = container_stats(&mut client, &filter).await?;
    loop {
        tokio::time::sleep(interval).await;
        let after = container_stats(&mut client, &filter).await?;
        // Running containers only, unless --all (stats carry no state; the list does).
        let shown: Vec<ContainerStats> = if args.all {
            after.clone()
        } else {
            let state = Some(ContainerStateValue { state: ContainerState::ContainerRunning as i32 });
            let request = ListContainersRequest { filter: Some(ContainerFilter { state, ..Default::default() }) };
            let running = client
                .runtime
                .list_containers(request)
                .await
                .map_err(|s| rpc_failed("ListContainers", s))?
                .into_inner()
                .containers;
            after
                .iter()
                .filter(|s| running.iter().any(|c| Some(&c.id) == s.attributes.as_ref().map(|a| &a.id)))
                .cloned()
                .collect()
        };
        if args.common.output != OutputFormat::Table {
            print(args.common.output, &ListContainerStatsResponse { stats: shown }, |_| String::new())?;
        } else {
            let previous: HashMap<&str, (i64, u64)> =
                before.iter().filter_map(|s| Some((s.attributes.as_ref()?.id.as_str(), cpu_sample(&s.cpu)?))).collect();
            let rows: Vec<Vec<String>> = shown
                .iter()
                .map(|s| {
                    let attributes = s.attributes.clone().unwrap_or_default();
                    let memory = s.memory.as_ref().and_then(|m| m.working_set_bytes).map(|v| v.value);
                    let layer = s.writable_layer.as_ref();
                    vec![
                        listing::short_id(&attributes.id, "", false),
                        attributes.metadata.map(|m| m.name).unwrap_or_default(),
                        percent(cpu_percent(previous.get(attributes.id.as_str()).copied(), cpu_sample(&s.cpu))),
                        memory.map(human_size).unwrap_or_else(|| "-".into()),
                        layer.and_then(|l| l.used_bytes).map(|v| human_size(v.value)).unwrap_or_else(|| "-".into()),
                        layer.and_then(|l| l.inodes_used).map(|v| v.value.to_string()).unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print!("{}", table(&["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"], &rows));
        }
        if !args.common.watch {
            return Ok(());
        }
        println!();
        before = after;
    }
}

async fn pod_stats(client: &mut Client, filter: &PodSandboxStatsFilter) -> Result<Vec<PodSandboxStats>, String> {
    let request = ListPodSandboxStatsRequest { filter: Some(filter.clone()) };
    Ok(client
        .runtime
        .list_pod_sandbox_stats(request)
        .await
        .map_err(|s| rpc_failed("ListPodSandboxStats", s))?
        .into_inner()
        .stats)
}

pub async fn pods(mut client: Client, args: PodStatsArgs) -> Result<(), String> {
    let filter = PodSandboxStatsFilter {
        id: args.id.clone().unwrap_or_default(),
        label_selector: listing::parse_labels(&args.labels)?,
    };
    let interval = Duration::from_secs(args.common.seconds.max(1));
    let mut before = pod_stats(&mut client, &filter).await?;
    loop {
        tokio::time::sleep(interval).await;
        let after = pod_stats(&mut client, &filter).await?;
        if args.common.output != OutputFormat::Table {
            print(args.common.output, &ListPodSandboxStatsResponse { stats: after.clone() }, |_| String::new())?;
        } else {
            let pod_cpu = |s: &PodSandboxStats| cpu_sample(&s.linux.as_ref()?.cpu);
            let previous: HashMap<&str, (i64, u64)> =
                before.iter().filter_map(|s| Some((s.attributes.as_ref()?.id.as_str(), pod_cpu(s)?))).collect();
            let rows: Vec<Vec<String>> = after
                .iter()
                .map(|s| {
                    let attributes = s.attributes.clone().unwrap_or_default();
                    let linux = s.linux.as_ref();
                    let memory =
                        linux.and_then(|l| l.memory.as_ref()).and_then(|m| m.working_set_bytes).map(|v| v.value);
                    let network = linux.and_then(|l| l.network.as_ref());
                    let total = |pick: fn(&crate::cri::v1::NetworkInterfaceUsage) -> Option<u64>| {
                        network.map(|n| n.interfaces.iter().filter_map(pick).sum::<u64>())
                    };
                    vec![
                        attributes.metadata.map(|m| m.name).unwrap_or_default(),
                        listing::short_id(&attributes.id, "", false),
                        percent(cpu_percent(previous.get(attributes.id.as_str()).copied(), pod_cpu(s))),
                        memory.map(human_size).unwrap_or_else(|| "-".into()),
                        total(|i| i.rx_bytes.map(|v| v.value)).map(human_size).unwrap_or_else(|| "-".into()),
                        total(|i| i.tx_bytes.map(|v| v.value)).map(human_size).unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            print!("{}", table(&["POD", "POD ID", "CPU %", "MEM", "NET RX", "NET TX"], &rows));
        }
        if !args.common.watch {
            return Ok(());
        }
        println!();
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_go_units() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1000), "1kB");
        assert_eq!(human_size(4096), "4.096kB");
        assert_eq!(human_size(1_234_567), "1.235MB");
        assert_eq!(human_size(52_428_800), "52.43MB");
        assert_eq!(human_size(3_000_000_000), "3GB");
    }

    #[test]
    fn cpu_percent_is_cpu_time_over_wall_time() {
        assert_eq!(cpu_percent(Some((0, 0)), Some((1_000_000_000, 500_000_000))), Some(50.0));
        assert_eq!(cpu_percent(Some((0, 0)), Some((1_000_000_000, 2_000_000_000))), Some(200.0));
        assert_eq!(cpu_percent(None, Some((1, 1))), None);
        assert_eq!(cpu_percent(Some((5, 1)), Some((5, 2))), None);
    }
}
