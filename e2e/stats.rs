//! Stats and metrics through CRI: a busy container's CPU rate, a container's working set and writable layer,
//! an OOM kill in the CRI metrics, a pod's network counters read inside its namespace, the latency of
//! ListContainerStats over 50 containers, and berth's own `/metrics` parsed as Prometheus text.
//! Pods use the node's network, or loopback-only CNI for the network test, so the daemons share the host
//! network (and reach the rig's registry) without changing it.

use std::time::{Duration, Instant};

use berth::cli::client::Client;
use berth::cri::v1::*;
use tonic::Code;

use crate::support::cri::{self, pull, run_container, run_pod, stop_and_remove_pod as remove_pod, wait_exited};
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs};

const MIB: u64 = 1024 * 1024;

/// A daemon allowed to pull from the test registry, with `extra` config (whole tables); `loopback_cni`
/// gives pods a network namespace of their own with only loopback in it.
fn start_daemon(registry: &TestRegistry, extra: &str, loopback_cni: bool) -> (DaemonDirs, Daemon) {
    let dirs = DaemonDirs::new();
    std::fs::create_dir_all(dirs.cni_conf_dir()).unwrap();
    if loopback_cni {
        std::fs::write(
            dirs.cni_conf_dir().join("10-lo.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "berth-stats-lo", "plugins": [{"type": "loopback"}]}"#,
        )
        .unwrap();
    }
    dirs.write_config(&format!("[registries.\"{}\"]\ninsecure = true\n\n{extra}", registry.address));
    let daemon = Daemon::start_in(&dirs);
    (dirs, daemon)
}

fn pod_config(name: &str, logs: &std::path::Path, network: NamespaceMode) -> PodSandboxConfig {
    let namespaces = NamespaceOption { network: network as i32, ..Default::default() };
    let mut config = crate::support::cri::pod_config(name, logs, namespaces);
    config.labels = [("suite".to_owned(), "stats".to_owned())].into();
    config
}

fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    let mut config = cri::container_config(name, image, command);
    config.labels = [("name".to_owned(), name.to_owned())].into();
    config
}

async fn container_stats(client: &mut Client, id: &str) -> ContainerStats {
    client
        .runtime
        .container_stats(ContainerStatsRequest { container_id: id.into() })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .unwrap()
}

/// Polls `check` every 200 ms for up to `within`; returns its last value once it is `Some`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Idle (and I/O wait) time of the whole host so far, from /proc/stat (USER_HZ = 100 ticks per second).
fn host_idle_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<u64> =
        stat.lines().next().unwrap().split_whitespace().skip(1).map(|f| f.parse().unwrap()).collect();
    (fields[3] + fields[4]) * 10_000_000
}

fn value(v: Option<UInt64Value>) -> u64 {
    v.expect("a value").value
}

#[tokio::test]
async fn a_busy_container_uses_a_core_and_a_50_mib_one_has_a_50_mib_working_set() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry, "[stats]\nwritable_layer_refresh_seconds = 1\n", false);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let pod_config = pod_config("busy", &dirs.path().join("logs"), NamespaceMode::Node);
    let pod = run_pod(&mut client, &pod_config).await;
    let burner = run_container(
        &mut client,
        &pod,
        &pod_config,
        container_config("burn", busybox, &["sh", "-c", "while :; do :; done"]),
    )
    .await;
    // 50 MiB in a shell variable, and a 2 MiB file in the writable layer. The sleep is not the script's last
    // command: ash would exec it in place of the shell, and the variable would go with the shell.
    let holder = run_container(
        &mut client,
        &pod,
        &pod_config,
        container_config(
            "hold",
            busybox,
            &[
                "sh",
                "-c",
                "head -c 2097152 /dev/urandom > /ballast; x=$(head -c 52428800 /dev/zero | tr '\\0' a); while :; do sleep 3600; done",
            ],
        ),
    )
    .await;

    // The first sample has no rate; the next one, 2 s later, does. The loop gets a whole core unless the
    // machine (2 cores, shared with builds and parallel tests) is busy, so the floor is relative to what it
    // could have had: its own use plus the host's idle time over the same window. Other runnable processes
    // get their fair share of the busy time too, so the floor is half of that; the exact check is that the
    // reported rate is the cgroup counter's over the window.
    let first = container_stats(&mut client, &burner).await;
    let first_cpu = first.cpu.unwrap();
    let idle_before = host_idle_ns();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_after = host_idle_ns();
    let second = container_stats(&mut client, &burner).await;
    let cpu = second.cpu.unwrap();
    let nano_cores = value(cpu.usage_nano_cores);
    let used = value(cpu.usage_core_nano_seconds) - value(first_cpu.usage_core_nano_seconds);
    let elapsed = (cpu.timestamp - first_cpu.timestamp) as f64;
    let measured = used as f64 / elapsed;
    let could_have = ((used + (idle_after - idle_before)) as f64 / elapsed).min(1.0);
    eprintln!("busy loop: usage_nano_cores {nano_cores}, measured {measured:.3} cores, could have had {could_have:.3}");
    assert!(nano_cores <= 1_100_000_000, "one thread uses at most a core: {nano_cores}");
    assert!(
        nano_cores as f64 >= 0.5e9 * could_have,
        "a busy loop uses about a core when one is free: {nano_cores} (could have had {could_have:.3})"
    );
    assert!((nano_cores as f64 / 1e9 - measured).abs() < 0.1, "the rate is the counter's: {nano_cores} vs {measured}");
    let attributes = second.attributes.unwrap();
    assert_eq!((attributes.id.as_str(), attributes.metadata.unwrap().name.as_str()), (burner.as_str(), "burn"));

    let memory = eventually("a 50 MiB working set", Duration::from_secs(20), || {
        let mut client = client.clone();
        let holder = holder.clone();
        async move {
            let memory = container_stats(&mut client, &holder).await.memory.unwrap();
            (value(memory.working_set_bytes) >= 50 * MIB).then_some(memory)
        }
    })
    .await;
    eprintln!("memory holder: {memory:?}");
    assert!(value(memory.usage_bytes) >= value(memory.working_set_bytes));
    assert!(value(memory.rss_bytes) >= 40 * MIB, "the variable is anonymous memory: {memory:?}");
    assert!(value(memory.page_faults) > 0);
    assert!(memory.available_bytes.is_none(), "no limit, no available bytes");

    let layer = eventually("the writable layer to hold the 2 MiB file", Duration::from_secs(20), || {
        let mut client = client.clone();
        let holder = holder.clone();
        async move {
            let layer = container_stats(&mut client, &holder).await.writable_layer?;
            (value(layer.used_bytes) >= 2 * MIB).then_some(layer)
        }
    })
    .await;
    assert!(value(layer.inodes_used) >= 2, "{layer:?}");

    // Filters: by id, by pod, by label; pod stats add both up.
    let list = |filter: ContainerStatsFilter| {
        let mut client = client.clone();
        async move {
            client
                .runtime
                .list_container_stats(ListContainerStatsRequest { filter: Some(filter) })
                .await
                .unwrap()
                .into_inner()
                .stats
        }
    };
    assert_eq!(list(ContainerStatsFilter::default()).await.len(), 2);
    assert_eq!(list(ContainerStatsFilter { id: holder.clone(), ..Default::default() }).await.len(), 1);
    assert_eq!(list(ContainerStatsFilter { pod_sandbox_id: pod.clone(), ..Default::default() }).await.len(), 2);
    let by_label = list(ContainerStatsFilter {
        label_selector: [("name".to_owned(), "burn".to_owned())].into(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_label.len(), 1);
    assert_eq!(by_label[0].attributes.as_ref().unwrap().id, burner);
    assert!(list(ContainerStatsFilter { pod_sandbox_id: "nope".into(), ..Default::default() }).await.is_empty());

    let pod_stats = client
        .runtime
        .pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: pod.clone() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = pod_stats.linux.unwrap();
    assert_eq!(linux.containers.len(), 2);
    assert!(value(linux.memory.unwrap().working_set_bytes) >= 50 * MIB);
    assert!(value(linux.process.unwrap().process_count) >= 3, "two shells and a sleep");
    assert!(linux.network.is_none(), "a host-network pod has no network of its own");

    // The CLI shows both, like crictl stats.
    let output = std::process::Command::new(crate::support::berth_bin())
        .args(["--runtime-endpoint", &daemon.socket.display().to_string(), "stats", "-o", "json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["stats"].as_array().unwrap().len(), 2, "{printed}");
    let output = std::process::Command::new(crate::support::berth_bin())
        .args(["--runtime-endpoint", &daemon.socket.display().to_string(), "statsp"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && table.contains("busy") && table.contains("CPU %"), "{table}");

    // Unknown ids are NotFound.
    let missing = client.runtime.container_stats(ContainerStatsRequest { container_id: "nope".into() }).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    let missing = client.runtime.pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: "nope".into() }).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    remove_pod(&mut client, &pod).await;
}

#[tokio::test]
async fn oom_kills_show_in_status_stats_and_a_running_containers_metrics() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry, "", false);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let pod_config = pod_config("oom", &dirs.path().join("logs"), NamespaceMode::Node);
    let pod = run_pod(&mut client, &pod_config).await;
    let mut hog =
        container_config("hog", busybox, &["sh", "-c", "x=$(head -c 67108864 /dev/zero | tr '\\0' a); echo survived"]);
    hog.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources { memory_limit_in_bytes: 15 * MIB as i64, ..Default::default() }),
        ..Default::default()
    });
    let id = run_container(&mut client, &pod, &pod_config, hog).await;
    let exited = wait_exited(&mut client, &id, Duration::from_secs(30)).await;
    assert_eq!(exited.reason, "OOMKilled", "{exited:?}");

    // An exited container answers with what is known.
    let stats = container_stats(&mut client, &id).await;
    assert!(stats.cpu.is_some() && stats.memory.is_some(), "{stats:?}");
    assert_eq!(value(stats.cpu.unwrap().usage_nano_cores), 0, "nothing runs");

    let descriptors =
        client.runtime.list_metric_descriptors(ListMetricDescriptorsRequest {}).await.unwrap().into_inner().descriptors;
    let oom = descriptors.iter().find(|d| d.name == "container_oom_events_total").expect("an OOM descriptor");
    // As with cAdvisor, only a running container has metrics.
    let metrics = pod_sandbox_metrics(&mut client, &pod).await;
    assert!(metrics.container_metrics.iter().all(|c| c.container_id != id), "the exited container has metrics");

    // A running container whose child the OOM killer took: its counter says so.
    let mut survivor = container_config(
        "survivor",
        busybox,
        &["sh", "-c", "dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived; exec sleep 1000"],
    );
    survivor.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: 15 * MIB as i64,
            cpu_shares: 2,
            ..Default::default()
        }),
        ..Default::default()
    });
    let survivor = run_container(&mut client, &pod, &pod_config, survivor).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let container = loop {
        let metrics = pod_sandbox_metrics(&mut client, &pod).await;
        let container = metrics.container_metrics.into_iter().find(|c| c.container_id == survivor);
        let events = container.as_ref().and_then(|c| c.metrics.iter().find(|m| m.name == oom.name).cloned());
        if events.is_some_and(|e| value(e.value) >= 1) {
            break container.unwrap();
        }
        assert!(Instant::now() < deadline, "no OOM event in the survivor's metrics: {container:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let events = container.metrics.iter().find(|m| m.name == oom.name).unwrap();
    assert_eq!(events.label_values.len(), oom.label_keys.len());
    assert_eq!(events.metric_type, MetricType::Counter as i32);
    // What kubelet's /metrics/cadvisor needs of a running container (the node e2e ContainerMetrics spec).
    let find = |name: &str| {
        let metric = container.metrics.iter().find(|m| m.name == name);
        value(metric.unwrap_or_else(|| panic!("no {name} in {:?}", container.metrics)).value)
    };
    assert!(find("container_memory_rss") >= 4096, "the sleeping shell has anonymous memory");
    assert_eq!(find("container_spec_cpu_shares"), 2);
    assert!(find("container_threads") >= 1);
    assert!(find("container_file_descriptors") >= 3, "stdin, stdout and stderr at least");
    assert!(find("container_ulimits_soft") > 0);
    assert!(find("container_memory_max_usage_bytes") >= find("container_memory_usage_bytes") / 2);
    for name in ["container_fs_reads_total", "container_fs_writes_bytes_total", "container_blkio_device_usage_total"] {
        find(name);
    }
    // Every metric has its descriptor and the descriptor's number of labels.
    for metric in &container.metrics {
        let descriptor = descriptors.iter().find(|d| d.name == metric.name).expect("described");
        assert_eq!(metric.label_values.len(), descriptor.label_keys.len(), "{}", metric.name);
    }
    remove_pod(&mut client, &pod).await;
}

async fn pod_sandbox_metrics(client: &mut Client, pod: &str) -> PodSandboxMetrics {
    let metrics = client
        .runtime
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    metrics.into_iter().find(|m| m.pod_sandbox_id == pod).expect("the pod's metrics")
}

#[tokio::test]
async fn pod_network_counters_grow_with_traffic_inside_the_pod() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry, "", true);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let pod_config = pod_config("net", &dirs.path().join("logs"), NamespaceMode::Pod);
    let pod = run_pod(&mut client, &pod_config).await;
    // A web server in the pod, serving the busybox binary (about a megabyte) over the pod's loopback.
    let id = run_container(
        &mut client,
        &pod,
        &pod_config,
        container_config("web", busybox, &["httpd", "-f", "-p", "8080", "-h", "/bin"]),
    )
    .await;

    let lo_counters = |stats: &PodSandboxStats| {
        let network = stats.linux.as_ref().unwrap().network.clone().expect("network stats");
        assert!(network.timestamp > 0);
        let lo = network.interfaces.iter().find(|i| i.name == "lo").expect("lo").clone();
        (value(lo.rx_bytes), value(lo.tx_bytes))
    };
    let pod_stats = |client: &mut Client| {
        let mut client = client.clone();
        let pod = pod.clone();
        async move {
            client
                .runtime
                .pod_sandbox_stats(PodSandboxStatsRequest { pod_sandbox_id: pod })
                .await
                .unwrap()
                .into_inner()
                .stats
                .unwrap()
        }
    };
    let before = lo_counters(&pod_stats(&mut client).await);
    let fetched = client
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: [
                "sh",
                "-c",
                "for i in 1 2 3 4 5; do wget -q -O /dev/null http://127.0.0.1:8080/busybox || exit 1; done",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            timeout: 30,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched.exit_code, 0, "{}", String::from_utf8_lossy(&fetched.stderr));
    let size = std::fs::metadata("/bin/busybox").map(|m| m.len()).unwrap_or(MIB).min(MIB);
    let after = lo_counters(&pod_stats(&mut client).await);
    eprintln!("lo before {before:?}, after {after:?}");
    assert!(after.0 >= before.0 + 5 * size / 2, "rx grew by the transfers: {before:?} -> {after:?}");
    assert!(after.1 >= before.1 + 5 * size / 2, "tx grew by the transfers: {before:?} -> {after:?}");

    // The same counters in the CRI metrics, labelled by interface.
    let pod_metrics = pod_sandbox_metrics(&mut client, &pod).await;
    let rx = pod_metrics
        .metrics
        .iter()
        .find(|m| {
            m.name == "container_network_receive_bytes_total" && m.label_values.last().map(String::as_str) == Some("lo")
        })
        .expect("lo's receive counter");
    assert!(value(rx.value) >= after.0);

    let listed = client
        .runtime
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                label_selector: [("suite".into(), "stats".into())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    remove_pod(&mut client, &pod).await;
}

#[tokio::test]
async fn list_container_stats_over_50_containers_answers_in_milliseconds() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon) = start_daemon(&registry, "", false);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let mut pods = Vec::new();
    for p in 0..5 {
        let pod_config = pod_config(&format!("many-{p}"), &dirs.path().join("logs"), NamespaceMode::Node);
        let pod = run_pod(&mut client, &pod_config).await;
        for c in 0..10 {
            run_container(
                &mut client,
                &pod,
                &pod_config,
                container_config(&format!("sleep-{c}"), busybox, &["sleep", "3600"]),
            )
            .await;
        }
        pods.push(pod);
    }
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let stats =
            client.runtime.list_container_stats(ListContainerStatsRequest::default()).await.unwrap().into_inner().stats;
        times.push(started.elapsed());
        assert_eq!(stats.len(), 50);
        assert!(stats.iter().all(|s| s.cpu.is_some() && s.memory.is_some() && s.writable_layer.is_some()));
    }
    times.sort();
    let (p50, p90) = (times[times.len() / 2], times[times.len() * 9 / 10]);
    eprintln!(
        "ListContainerStats over 50 containers (debug build): p50 {p50:?}, p90 {p90:?}, max {:?}",
        times.last().unwrap()
    );
    assert!(p50 < Duration::from_millis(250), "p50 {p50:?}");
    let started = Instant::now();
    let pods_stats =
        client.runtime.list_pod_sandbox_stats(ListPodSandboxStatsRequest::default()).await.unwrap().into_inner().stats;
    eprintln!("ListPodSandboxStats over 5 pods of 10 containers: {:?}", started.elapsed());
    assert_eq!(pods_stats.len(), 5);
    for pod in pods {
        remove_pod(&mut client, &pod).await;
    }
}

/// A free port on loopback (bound and released: a small race the test can live with).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A daemon with `/metrics` on a free loopback port; returns that address too.
fn start_daemon_with_metrics(registry: &TestRegistry, loopback_cni: bool) -> (DaemonDirs, Daemon, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let (dirs, daemon) =
        start_daemon(registry, &format!("[metrics]\nenabled = true\naddress = \"{address}\"\n"), loopback_cni);
    (dirs, daemon, address)
}

/// One scrape of `/metrics`, parsed as Prometheus text (the parse fails the test if it is not).
struct Scraped {
    text: String,
    scrape: prometheus_parse::Scrape,
}

async fn scrape(address: &str) -> Scraped {
    let address = address.to_owned();
    let scraped =
        tokio::task::spawn_blocking(move || crate::support::http::get(&address, "/metrics", &[])).await.unwrap();
    assert_eq!(scraped.status, 200);
    assert!(scraped.header("content-type").unwrap_or_default().contains("openmetrics-text"));
    let text = String::from_utf8(scraped.body).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
    Scraped { text, scrape }
}

impl Scraped {
    /// The value of the one series of `name` with these labels (a histogram's `_count` is one too).
    fn sample(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.text))
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self
            .scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))?;
        Some(match found.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        })
    }
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_count_the_rpcs_made() {
    let registry = TestRegistry::get();
    let (_dirs, daemon, address) = start_daemon_with_metrics(&registry, false);
    let mut client = daemon.client().await;
    for _ in 0..3 {
        client.runtime.version(VersionRequest::default()).await.unwrap();
    }
    client.runtime.list_container_stats(ListContainerStatsRequest::default()).await.unwrap();
    let missing = client.runtime.container_stats(ContainerStatsRequest { container_id: "nope".into() }).await;
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);

    let scraped = scrape(&address).await;
    assert_eq!(scraped.sample("berth_grpc_requests_total", &[("method", "Version"), ("code", "Ok")]), 3.0);
    assert_eq!(scraped.sample("berth_grpc_requests_total", &[("method", "ListContainerStats"), ("code", "Ok")]), 1.0);
    assert_eq!(scraped.sample("berth_grpc_requests_total", &[("method", "ContainerStats"), ("code", "NotFound")]), 1.0);
    let latency = scraped
        .scrape
        .samples
        .iter()
        .find(|s| s.metric == "berth_grpc_request_duration_seconds" && s.labels.get("method") == Some("Version"))
        .expect("a latency histogram for Version");
    assert!(matches!(latency.value, prometheus_parse::Value::Histogram(ref buckets) if !buckets.is_empty()));
    assert_eq!(scraped.sample("berth_pod_sandboxes", &[("state", "ready")]), 0.0);
    assert_eq!(scraped.sample("berth_containers", &[("state", "running")]), 0.0);
    assert_eq!(scraped.sample("berth_image_pull_bytes_total", &[]), 0.0);
    assert_eq!(scraped.sample("berth_shims", &[]), 0.0);
    assert_eq!(scraped.sample("berth_shim_restarts_total", &[]), 0.0);

    let not_found =
        tokio::task::spawn_blocking(move || crate::support::http::get(&address, "/other", &[])).await.unwrap();
    assert_eq!(not_found.status, 404);
}

/// Pods with loopback-only CNI, a shim killed with -9, a pull and a request its caller gave up on: each
/// shows in `/metrics` as the CNI calls, shim and pull figures and the late-request counter.
#[tokio::test]
async fn metrics_count_cni_calls_shims_shim_restarts_pulls_and_late_requests() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let (dirs, daemon, address) = start_daemon_with_metrics(&registry, true);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    let missing = client
        .image
        .pull_image(PullImageRequest {
            image: Some(ImageSpec { image: format!("{}/no/such-image:1", registry.address), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(missing.code(), Code::Ok);
    let logs = dirs.path().join("logs");
    let configs: Vec<PodSandboxConfig> =
        (0..2).map(|p| pod_config(&format!("metrics-{p}"), &logs, NamespaceMode::Pod)).collect();
    let mut pods = Vec::new();
    for config in &configs {
        let pod = run_pod(&mut client, config).await;
        let container =
            run_container(&mut client, &pod, config, container_config("sleep", busybox, &["sleep", "3600"])).await;
        pods.push((pod, container));
    }

    let scraped = scrape(&address).await;
    let loopback_add = [("network", "berth-stats-lo"), ("plugin", "loopback"), ("command", "ADD"), ("result", "ok")];
    assert_eq!(scraped.sample("berth_cni_plugin_duration_seconds_count", &loopback_add), 2.0);
    let add_seconds = scraped.sample("berth_cni_plugin_duration_seconds_sum", &loopback_add);
    assert!(add_seconds > 0.0 && add_seconds < 60.0, "{add_seconds}");
    let add_ok = [("command", "ADD"), ("result", "ok")];
    assert_eq!(scraped.sample("berth_cni_operation_duration_seconds_count", &add_ok), 2.0);
    assert!(
        scraped.sample("berth_cni_operation_duration_seconds_sum", &add_ok) >= add_seconds,
        "an operation includes its plugins' time"
    );
    assert_eq!(scraped.sample("berth_shims", &[]), 2.0);
    assert_eq!(scraped.sample("berth_shim_restarts_total", &[]), 0.0);
    assert_eq!(scraped.sample("berth_pod_sandboxes", &[("state", "ready")]), 2.0);
    assert_eq!(scraped.sample("berth_containers", &[("state", "running")]), 2.0);
    // The pull: its bytes (the busybox layer; added when the pull's progress tracker ends, just after the
    // answer), one success and one failure, and their durations.
    let pulled = eventually("the pulled bytes to be counted", Duration::from_secs(5), || {
        let address = address.clone();
        async move { scrape(&address).await.find("berth_image_pull_bytes_total", &[]).filter(|bytes| *bytes > 0.0) }
    })
    .await;
    assert!(pulled > 100_000.0, "{pulled} bytes");
    assert_eq!(scraped.sample("berth_image_pulls_total", &[("code", "Ok")]), 1.0);
    let failures: f64 = scraped
        .scrape
        .samples
        .iter()
        .filter(|s| s.metric == "berth_image_pulls_total" && s.labels.get("code") != Some("Ok"))
        // OpenMetrics names the family without `_total`, so the parser sees the samples as untyped.
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(failures, 1.0, "{}", scraped.text);
    assert_eq!(scraped.sample("berth_image_pull_duration_seconds_count", &[]), 2.0);

    // kill -9 the first pod's shim; its next container needs a new one.
    let (pod, container) = &pods[0];
    let bootstrap = berth::shim::Bootstrap::load(&dirs.state().join("pods").join(pod)).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(bootstrap.pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    eventually("the dead shim's container to be reported stopped", Duration::from_secs(10), || {
        let mut client = client.clone();
        let container = container.clone();
        async move {
            (cri::status(&mut client, &container).await.state != ContainerState::ContainerRunning as i32).then_some(())
        }
    })
    .await;
    assert_eq!(scrape(&address).await.sample("berth_shims", &[]), 1.0);
    let mut again = container_config("after-shim-death", busybox, &["sleep", "3600"]);
    again.metadata.as_mut().unwrap().attempt = 1;
    let again = run_container(&mut client, pod, &configs[0], again).await;

    // An ExecSync whose caller gives up after 300 ms: berth still runs it to the end, and counts it.
    // Regression: tonic's grpc-timeout enforcement used to drop the handler at the deadline, so such a
    // request was never counted at all and the late-request counter could not move.
    let mut late = tonic::Request::new(ExecSyncRequest {
        container_id: again.clone(),
        cmd: vec!["sleep".into(), "1".into()],
        timeout: 10,
    });
    late.set_timeout(Duration::from_millis(300));
    let gave_up = client.runtime.exec_sync(late).await.unwrap_err();
    // tonic's client keeps its own timer and answers Cancelled ("Timeout expired") when it fires before
    // the daemon's DeadlineExceeded arrives (e2e/compat.rs checks the daemon's answer without one).
    assert!(matches!(gave_up.code(), Code::DeadlineExceeded | Code::Cancelled), "{gave_up:?}");
    let late_count = eventually("the late ExecSync to be counted", Duration::from_secs(10), || {
        let address = address.clone();
        async move {
            scrape(&address)
                .await
                .find("berth_grpc_requests_finished_after_deadline_total", &[("method", "ExecSync")])
                .filter(|count| *count > 0.0)
        }
    })
    .await;
    assert_eq!(late_count, 1.0);

    let scraped = scrape(&address).await;
    assert_eq!(scraped.sample("berth_shim_restarts_total", &[]), 1.0);
    assert_eq!(scraped.sample("berth_shims", &[]), 2.0);
    // The late ExecSync finished with its own answer, after its second of sleep.
    assert_eq!(scraped.sample("berth_grpc_requests_total", &[("method", "ExecSync"), ("code", "Ok")]), 1.0);

    for (pod, _) in &pods {
        remove_pod(&mut client, pod).await;
    }
    let scraped = scrape(&address).await;
    let loopback_del = [("network", "berth-stats-lo"), ("plugin", "loopback"), ("command", "DEL"), ("result", "ok")];
    assert_eq!(scraped.sample("berth_cni_plugin_duration_seconds_count", &loopback_del), 2.0);
    assert_eq!(
        scraped.sample("berth_cni_operation_duration_seconds_count", &[("command", "DEL"), ("result", "ok")]),
        2.0
    );
    assert_eq!(scraped.sample("berth_shims", &[]), 0.0);
}
