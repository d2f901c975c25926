//! RunPodSandbox latency over one CRI connection (hack/bench/runp.sh runs it): N sandboxes created one
//! after another, each timed at the client, then stopped and removed. With berth's JSON log, the time spent
//! inside the CNI plugins of each sandbox comes from the daemon's own `CNI ADD done` event, whose
//! `plugins_ms` is the sum of the wall time of every plugin process (spawn to exit, measured in
//! `berth_cni::Cni::add`); the rest of the RPC is berth's overhead (namespaces, loopback, cache, files, shim,
//! database, gRPC). Works against any CRI endpoint; without a log only the latency is reported.
//!
//! Usage: runp-bench ENDPOINT [PODS] [DAEMON_JSON_LOG]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth::cli::client::{Client, Endpoint};
use berth::cri::v1::*;

#[path = "bench/mod.rs"]
#[allow(dead_code)]
mod bench;

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn pod_config(n: usize) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("runp-{n}"),
            uid: format!("uid-runp-{n}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("runp-{n}"),
        log_directory: format!("/tmp/berth-bench-runp-logs/{n}"),
        dns_config: Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["bench.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        linux: Some(bench::linux_config(&format!("uid-runp-{n}"))),
        ..Default::default()
    }
}

async fn run_pod(client: &mut Client, n: usize) -> (String, Duration) {
    let began = Instant::now();
    let id = client
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(pod_config(n)), ..Default::default() })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    (id, began.elapsed())
}

async fn remove_pod(client: &mut Client, id: &str) {
    client.runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.into() }).await.expect("StopPodSandbox");
    client
        .runtime
        .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.into() })
        .await
        .expect("RemovePodSandbox");
}

/// `plugins_ms` of every `CNI ADD done` event in berth's JSON log, by sandbox id.
fn plugin_times(log: &str) -> HashMap<String, f64> {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("read {log}: {e}"));
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|event| event["message"] == "CNI ADD done")
        .filter_map(|event| Some((event["container_id"].as_str()?.to_owned(), event["plugins_ms"].as_f64()?)))
        .collect()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(endpoint) = args.get(1) else {
        eprintln!("usage: runp-bench ENDPOINT [PODS] [DAEMON_JSON_LOG]");
        std::process::exit(2);
    };
    let pods: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50);
    let log = args.get(3);
    let mut client =
        Client::connect(Endpoint::parse(endpoint).expect("endpoint"), Duration::from_secs(30)).await.expect("connect");

    // One sandbox first, not counted: the first ADD creates the bridge and the plugins' iptables chains.
    let (warm, _) = run_pod(&mut client, pods).await;
    remove_pod(&mut client, &warm).await;

    let mut made = Vec::new();
    for n in 0..pods {
        made.push(run_pod(&mut client, n).await);
    }
    let began = Instant::now();
    for (id, _) in &made {
        remove_pod(&mut client, id).await;
    }
    let removal = began.elapsed();

    let rpc: Vec<f64> = made.iter().map(|(_, took)| took.as_secs_f64() * 1e3).collect();
    println!("pods={pods} (sequential, one connection; one warm-up sandbox not counted)");
    println!("RunPodSandbox            p50 {:6.1} ms  p90 {:6.1} ms", percentile(&rpc, 0.5), percentile(&rpc, 0.9));
    if let Some(log) = log {
        let plugins = plugin_times(log);
        let inside: Vec<f64> = made
            .iter()
            .map(|(id, _)| *plugins.get(id).unwrap_or_else(|| panic!("no CNI ADD event for {id}")))
            .collect();
        let outside: Vec<f64> = rpc.iter().zip(&inside).map(|(total, inside)| total - inside).collect();
        let share = inside.iter().sum::<f64>() / rpc.iter().sum::<f64>() * 100.0;
        println!(
            "  inside CNI plugins     p50 {:6.1} ms  p90 {:6.1} ms  ({share:.0}% of the total)",
            percentile(&inside, 0.5),
            percentile(&inside, 0.9)
        );
        println!(
            "  berth's own overhead   p50 {:6.1} ms  p90 {:6.1} ms",
            percentile(&outside, 0.5),
            percentile(&outside, 0.9)
        );
    }
    println!("stop+remove              {:6.1} ms per pod", removal.as_secs_f64() * 1e3 / pods as f64);

    // The transport's share of the overhead: a Version call does no work, so its latency is the round trip
    // through the client, the socket, tonic and the daemon's request task.
    let mut round_trips = Vec::new();
    for _ in 0..pods {
        let began = Instant::now();
        client.runtime.version(VersionRequest::default()).await.expect("Version");
        round_trips.push(began.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "gRPC round trip (Version) p50 {:6.2} ms  p90 {:6.2} ms",
        percentile(&round_trips, 0.5),
        percentile(&round_trips, 0.9)
    );
}
