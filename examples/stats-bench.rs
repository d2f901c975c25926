//! Stats latency benchmark over one CRI connection (hack/bench/stats.sh runs it): starts N pods of one
//! `sleep` container each, then times ListContainerStats, ListPodSandboxStats and ListPodSandboxMetrics
//! (p50/p90 over many calls, one at a time, as kubelet polls), then removes the pods. Works against any CRI
//! endpoint (berth, containerd).
//!
//! Usage: stats-bench ENDPOINT IMAGE [PODS] [CALLS]

use std::time::{Duration, Instant};

use berth::cli::client::{Client, Endpoint};
use berth::cri::v1::*;

#[path = "bench/mod.rs"]
mod bench;

use bench::{percentile, pod_config, run_sleeping_pod};

async fn start_pod(client: &mut Client, image: &str, n: usize) -> String {
    run_sleeping_pod(client, image, pod_config("stats", n)).await.0
}

async fn time_calls<F, Fut>(calls: usize, mut call: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let began = Instant::now();
        call().await;
        samples.push(began.elapsed());
    }
    (percentile(&mut samples, 0.5), percentile(&mut samples, 0.9))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = Endpoint::parse(&args[1]).expect("endpoint");
    let image = &args[2];
    let pods: usize = args.get(3).map(|s| s.parse().expect("PODS")).unwrap_or(50);
    let calls: usize = args.get(4).map(|s| s.parse().expect("CALLS")).unwrap_or(100);
    let mut client = Client::connect(endpoint, Duration::from_secs(60)).await.expect("connect");
    let mut ids = Vec::new();
    for n in 0..pods {
        ids.push(start_pod(&mut client, image, n).await);
    }
    // A first round so every container has a previous CPU sample and a measured writable layer.
    let first = client.runtime.list_container_stats(ListContainerStatsRequest::default()).await.unwrap().into_inner();
    assert_eq!(first.stats.len(), pods);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (p50, p90) = time_calls(calls, || {
        let mut client = client.clone();
        async move {
            let stats = client.runtime.list_container_stats(ListContainerStatsRequest::default()).await.unwrap();
            assert_eq!(stats.into_inner().stats.len(), pods);
        }
    })
    .await;
    println!("ListContainerStats    ({pods} containers, {calls} calls)  p50 {p50:6.2} ms  p90 {p90:6.2} ms");
    let (p50, p90) = time_calls(calls, || {
        let mut client = client.clone();
        async move {
            let stats = client.runtime.list_pod_sandbox_stats(ListPodSandboxStatsRequest::default()).await.unwrap();
            assert_eq!(stats.into_inner().stats.len(), pods);
        }
    })
    .await;
    println!("ListPodSandboxStats   ({pods} pods, {calls} calls)        p50 {p50:6.2} ms  p90 {p90:6.2} ms");
    // containerd before 2.1 answers Unimplemented; that is reported, not timed as a success.
    let metrics = client.runtime.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {}).await;
    match metrics {
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            println!("ListPodSandboxMetrics ({pods} pods)                   Unimplemented");
        }
        _ => {
            let (p50, p90) = time_calls(calls, || {
                let mut client = client.clone();
                async move {
                    client.runtime.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {}).await.unwrap();
                }
            })
            .await;
            println!("ListPodSandboxMetrics ({pods} pods, {calls} calls)        p50 {p50:6.2} ms  p90 {p90:6.2} ms");
        }
    }

    for pod in ids {
        client.runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await.expect("stop");
        client.runtime.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod }).await.expect("remove");
    }
}
