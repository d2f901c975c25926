//! berth's own Prometheus metrics: what the daemon does, for operators (not the containers' figures, which
//! kubelet gets over CRI — see [`crate::stats`]).
//!
//! The families live in one process-wide [`DaemonMetrics`] ([`global`]): the RPC layer
//! (`server::trace`), the pull tracker and the `/metrics` server ([`server`]) reach it without threading a
//! handle through every constructor. Counts of pods and containers by state are read from the state
//! database at each scrape, so they cannot drift from it. Recording is a few atomic operations; nothing
//! here blocks.

pub mod server;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: String,
}

/// One CNI plugin execution: the network (conflist name), the plugin's type, `ADD`/`DEL`/`CHECK`, and
/// `ok` or what went wrong (`berth_cni::PluginError::outcome`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CniPluginLabels {
    pub network: String,
    pub plugin: String,
    pub command: String,
    pub result: String,
}

/// A whole CNI operation of a pod (the chain, with its rollback when ADD failed): `ADD`/`DEL`, `ok`/`error`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CniOperationLabels {
    pub command: String,
    pub result: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 1 ms to ~65 s (RPCs) and from 100 ms to ~27 min (pulls).
fn rpc_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct DaemonMetrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_duration: HistogramFamily<RpcLabels>,
    rpc_late: Family<MethodLabels, Counter>,
    pulls: Family<CodeLabels, Counter>,
    pull_duration: Histogram,
    pull_bytes: Counter,
    pods: Family<StateLabels, Gauge>,
    containers: Family<StateLabels, Gauge>,
    cni_plugin_duration: HistogramFamily<CniPluginLabels>,
    cni_operation_duration: HistogramFamily<CniOperationLabels>,
    shims: Gauge,
    shim_restarts: Counter,
    runtime_tasks: Gauge,
}

impl std::fmt::Debug for DaemonMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonMetrics").finish_non_exhaustive()
    }
}

static GLOBAL: LazyLock<DaemonMetrics> = LazyLock::new(DaemonMetrics::new);

/// The daemon's metrics.
pub fn global() -> &'static DaemonMetrics {
    &GLOBAL
}

impl DaemonMetrics {
    fn new() -> DaemonMetrics {
        let mut registry = Registry::with_prefix("berth");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "CRI and berth gRPC requests answered, by method and code",
            rpc_requests.clone(),
        );
        let rpc_duration = HistogramFamily::<RpcLabels>::new_with_constructor(rpc_histogram as fn() -> Histogram);
        registry.register(
            "grpc_request_duration_seconds",
            "Time from a gRPC request's arrival to its answer, by method and code",
            rpc_duration.clone(),
        );
        let rpc_late = Family::<MethodLabels, Counter>::default();
        registry.register(
            "grpc_requests_finished_after_deadline",
            "Requests that finished after the caller's deadline (grpc-timeout) had passed: work the caller gave up on",
            rpc_late.clone(),
        );
        let pulls = Family::<CodeLabels, Counter>::default();
        registry.register(
            "image_pulls",
            "Image pulls (PullImage) finished, by gRPC code (OK or the failure)",
            pulls.clone(),
        );
        let pull_duration = Histogram::new(exponential_buckets(0.1, 2.0, 15));
        registry.register(
            "image_pull_duration_seconds",
            "Time PullImage took, successful or not",
            pull_duration.clone(),
        );
        let pull_bytes = Counter::default();
        registry.register(
            "image_pull_bytes",
            "Layer bytes downloaded by image pulls (cached layers excluded)",
            pull_bytes.clone(),
        );
        let pods = Family::<StateLabels, Gauge>::default();
        registry.register("pod_sandboxes", "Pod sandboxes by state", pods.clone());
        let containers = Family::<StateLabels, Gauge>::default();
        registry.register("containers", "Containers by state", containers.clone());
        let cni_plugin_duration =
            HistogramFamily::<CniPluginLabels>::new_with_constructor(rpc_histogram as fn() -> Histogram);
        registry.register(
            "cni_plugin_duration_seconds",
            "Time one CNI plugin execution took, by network, plugin, command (ADD, DEL, CHECK) and result",
            cni_plugin_duration.clone(),
        );
        let cni_operation_duration =
            HistogramFamily::<CniOperationLabels>::new_with_constructor(rpc_histogram as fn() -> Histogram);
        registry.register(
            "cni_operation_duration_seconds",
            "Time a pod's CNI ADD or DEL took as a whole (every plugin of the chain, and a failed ADD's rollback), by result",
            cni_operation_duration.clone(),
        );
        let shims = Gauge::default();
        registry.register("shims", "Per-pod shim processes alive (one per pod sandbox)", shims.clone());
        let shim_restarts = Counter::default();
        registry.register(
            "shim_restarts",
            "New shims started for pods whose shim had died, so their next container could run",
            shim_restarts.clone(),
        );
        let runtime_tasks = Gauge::default();
        registry.register(
            "runtime_tasks",
            "Tasks alive in the daemon's async runtime (tokio), read at each scrape: one per connection, session, watch and request in flight",
            runtime_tasks.clone(),
        );
        DaemonMetrics {
            registry,
            rpc_requests,
            rpc_duration,
            rpc_late,
            pulls,
            pull_duration,
            pull_bytes,
            pods,
            containers,
            cni_plugin_duration,
            cni_operation_duration,
            shims,
            shim_restarts,
            runtime_tasks,
        }
    }

    /// One answered RPC: `method` as in the path (`ListContainerStats`), `code` as tonic names it.
    pub fn rpc_finished(&self, method: &str, code: tonic::Code, elapsed: Duration, deadline: Option<Duration>) {
        let labels = RpcLabels { method: method.to_owned(), code: format!("{code:?}") };
        self.rpc_requests.get_or_create(&labels).inc();
        self.rpc_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        if deadline.is_some_and(|deadline| elapsed > deadline) {
            self.rpc_late.get_or_create(&MethodLabels { method: method.to_owned() }).inc();
        }
        if method == "PullImage" {
            self.pulls.get_or_create(&CodeLabels { code: labels.code }).inc();
            self.pull_duration.observe(elapsed.as_secs_f64());
        }
    }

    /// Bytes a finished pull downloaded.
    pub fn pulled_bytes(&self, bytes: u64) {
        self.pull_bytes.inc_by(bytes);
    }

    /// Sets the pod and container counts; every state is present (zero when none), so a series never
    /// vanishes between scrapes.
    pub fn set_counts(&self, pods: &[(&'static str, i64)], containers: &[(&'static str, i64)]) {
        for (family, counts) in [(&self.pods, pods), (&self.containers, containers)] {
            for (state, count) in counts {
                family.get_or_create(&StateLabels { state: (*state).to_owned() }).set(*count);
            }
        }
    }

    /// The shims alive, counted at each scrape.
    pub fn set_shims(&self, alive: i64) {
        self.shims.set(alive);
    }

    /// The tasks alive in the daemon's tokio runtime, read at each scrape.
    pub fn set_runtime_tasks(&self, alive: usize) {
        self.runtime_tasks.set(i64::try_from(alive).unwrap_or(i64::MAX));
    }

    /// The daemon started a new shim for a pod whose shim had died.
    pub fn shim_restarted(&self) {
        self.shim_restarts.inc();
    }

    /// A pod's whole CNI ADD or DEL finished (`command` as CNI spells it).
    pub fn cni_operation(&self, command: berth_cni::Command, succeeded: bool, elapsed: Duration) {
        let labels = CniOperationLabels {
            command: command.as_str().to_owned(),
            result: if succeeded { "ok" } else { "error" }.to_owned(),
        };
        self.cni_operation_duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
    }

    /// The text exposition (OpenMetrics, which Prometheus reads as its text format).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Feeds each CNI plugin execution into [`DaemonMetrics`]; the pod manager hands it to `berth_cni::Cni`, which
/// knows nothing of metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct CniCallMetrics;

impl berth_cni::CniObserver for CniCallMetrics {
    fn plugin_finished(&self, call: &berth_cni::PluginCallOutcome<'_>) {
        let labels = CniPluginLabels {
            network: call.network.to_owned(),
            plugin: call.plugin.to_owned(),
            command: call.command.as_str().to_owned(),
            result: call.error.map_or("ok", berth_cni::PluginError::outcome).to_owned(),
        };
        global().cni_plugin_duration.get_or_create(&labels).observe(call.duration.as_secs_f64());
    }
}

/// The `grpc-timeout` request header (`<digits><unit>`, gRPC over HTTP/2 spec) as a duration.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("120000m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("5M"), Some(Duration::from_secs(300)));
        assert_eq!(parse_grpc_timeout("10u"), Some(Duration::from_micros(10)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None, "at most 8 digits");
    }

    #[test]
    fn rpcs_pulls_and_counts_are_exposed() {
        let metrics = DaemonMetrics::new();
        metrics.rpc_finished("Version", tonic::Code::Ok, Duration::from_millis(3), None);
        metrics.rpc_finished("Version", tonic::Code::Ok, Duration::from_millis(5), Some(Duration::from_millis(4)));
        metrics.rpc_finished("PullImage", tonic::Code::NotFound, Duration::from_secs(2), None);
        metrics.pulled_bytes(1000);
        metrics.set_counts(&[("ready", 2), ("notready", 0)], &[("running", 3)]);
        let text = metrics.encode();
        assert!(text.contains("berth_grpc_requests_total{method=\"Version\",code=\"Ok\"} 2"), "{text}");
        assert!(text.contains("berth_grpc_request_duration_seconds_count{method=\"Version\",code=\"Ok\"} 2"), "{text}");
        assert!(text.contains("berth_grpc_requests_finished_after_deadline_total{method=\"Version\"} 1"), "{text}");
        assert!(text.contains("berth_image_pulls_total{code=\"NotFound\"} 1"), "{text}");
        assert!(text.contains("berth_image_pull_bytes_total 1000"), "{text}");
        assert!(text.contains("berth_pod_sandboxes{state=\"notready\"} 0"), "{text}");
        assert!(text.contains("berth_containers{state=\"running\"} 3"), "{text}");
    }

    #[test]
    fn cni_calls_and_shims_are_exposed() {
        let metrics = DaemonMetrics::new();
        let labels = |result: &str| CniPluginLabels {
            network: "net".into(),
            plugin: "bridge".into(),
            command: "ADD".into(),
            result: result.into(),
        };
        metrics.cni_plugin_duration.get_or_create(&labels("ok")).observe(0.02);
        metrics.cni_plugin_duration.get_or_create(&labels("timeout")).observe(60.0);
        metrics.cni_operation(berth_cni::Command::Del, false, Duration::from_millis(80));
        metrics.set_shims(4);
        metrics.shim_restarted();
        metrics.set_runtime_tasks(17);
        let text = metrics.encode();
        let plugin = "berth_cni_plugin_duration_seconds_count{network=\"net\",plugin=\"bridge\",command=\"ADD\"";
        assert!(text.contains(&format!("{plugin},result=\"ok\"}} 1")), "{text}");
        assert!(text.contains(&format!("{plugin},result=\"timeout\"}} 1")), "{text}");
        assert!(
            text.contains("berth_cni_operation_duration_seconds_count{command=\"DEL\",result=\"error\"} 1"),
            "{text}"
        );
        assert!(text.contains("berth_shims 4"), "{text}");
        assert!(text.contains("berth_shim_restarts_total 1"), "{text}");
        assert!(text.contains("berth_runtime_tasks 17"), "{text}");
    }
}
