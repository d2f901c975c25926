//! The CRI list-streaming RPCs (KEP-5825): each Stream* RPC answers the same set as its List* counterpart,
//! with the same filter, every message holding at least one item and no item twice, then EOF. Pods use the
//! node's network, so no CNI is involved.

use std::collections::BTreeSet;
use std::fmt::Debug;

use berth::cri::v1::*;

use crate::support::cri::{container_config, pull, run_container, run_pod, stop_and_remove_pod};
use crate::support::registry::TestRegistry;
use crate::support::{Daemon, DaemonDirs};

fn pod_config(name: &str, logs: &std::path::Path, group: &str) -> PodSandboxConfig {
    let mut config = crate::support::cri::pod_config(name, logs, crate::support::cri::node_network());
    config.labels = [("group".to_owned(), group.to_owned())].into();
    config
}

/// Every item of a stream, checking the contract on the way: no empty message, no item twice, EOF.
async fn collect<R, T, K>(
    rpc: &str,
    stream: Result<tonic::Response<tonic::Streaming<R>>, tonic::Status>,
    items: fn(R) -> Vec<T>,
    key: fn(&T) -> K,
) -> BTreeSet<K>
where
    K: Ord + Debug,
{
    let mut stream = stream.unwrap_or_else(|status| panic!("{rpc}: {status:?}")).into_inner();
    let mut keys = BTreeSet::new();
    while let Some(message) = stream.message().await.unwrap_or_else(|status| panic!("{rpc}: {status:?}")) {
        let items = items(message);
        assert!(!items.is_empty(), "{rpc}: a message with no item");
        for item in &items {
            let key = key(item);
            assert!(!keys.contains(&key), "{rpc}: {key:?} sent twice");
            keys.insert(key);
        }
    }
    keys
}

fn listed<T, K: Ord + Debug>(rpc: &str, items: Vec<T>, key: fn(&T) -> K) -> BTreeSet<K> {
    let keys: BTreeSet<K> = items.iter().map(key).collect();
    assert_eq!(keys.len(), items.len(), "{rpc}: an item listed twice");
    keys
}

#[tokio::test]
async fn each_stream_rpc_answers_the_same_set_as_its_list_rpc() {
    let registry = TestRegistry::get();
    let busybox = &registry.image("busybox").reference;
    let web = &registry.image("web").reference;
    let dirs = DaemonDirs::new();
    dirs.write_config(&format!("[registries.\"{}\"]\ninsecure = true\n", registry.address));
    let daemon = Daemon::start_in(&dirs);
    let mut client = daemon.client().await;
    pull(&mut client, busybox).await;
    pull(&mut client, web).await;
    let logs = dirs.path().join("logs");
    let mut pods = Vec::new();
    for p in 0..4 {
        let config = pod_config(&format!("streamed-{p}"), &logs, if p % 2 == 0 { "even" } else { "odd" });
        let pod = run_pod(&mut client, &config).await;
        for c in 0..3 {
            run_container(&mut client, &pod, &config, container_config(&format!("c{c}"), busybox, &["sleep", "3600"]))
                .await;
        }
        pods.push(pod);
    }
    // A stopped pod and an exited container are listed too (by the RPCs that list them).
    let config = pod_config("streamed-stopped", &logs, "odd");
    let stopped = run_pod(&mut client, &config).await;
    run_container(&mut client, &stopped, &config, container_config("done", busybox, &["true"])).await;
    client.runtime.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: stopped.clone() }).await.unwrap();

    let runtime = &mut client.runtime;
    let even = PodSandboxFilter { label_selector: [("group".into(), "even".into())].into(), ..Default::default() };
    for filter in [None, Some(even)] {
        let list = runtime.list_pod_sandbox(ListPodSandboxRequest { filter: filter.clone() }).await.unwrap();
        let expected = listed("ListPodSandbox", list.into_inner().items, |p| p.id.clone());
        assert_eq!(expected.len(), if filter.is_some() { 2 } else { 5 });
        let stream = runtime.stream_pod_sandboxes(StreamPodSandboxesRequest { filter }).await;
        let streamed = collect("StreamPodSandboxes", stream, |m| m.pod_sandboxes, |p| p.id.clone()).await;
        assert_eq!(streamed, expected);
    }

    let one_pod = ContainerFilter { pod_sandbox_id: pods[1].clone(), ..Default::default() };
    for filter in [None, Some(one_pod)] {
        let list = runtime.list_containers(ListContainersRequest { filter: filter.clone() }).await.unwrap();
        let expected = listed("ListContainers", list.into_inner().containers, |c| c.id.clone());
        assert_eq!(expected.len(), if filter.is_some() { 3 } else { 13 });
        let stream = runtime.stream_containers(StreamContainersRequest { filter }).await;
        let streamed = collect("StreamContainers", stream, |m| m.containers, |c| c.id.clone()).await;
        assert_eq!(streamed, expected);
    }

    let stats_key = |s: &ContainerStats| s.attributes.as_ref().expect("attributes").id.clone();
    let one_pod = ContainerStatsFilter { pod_sandbox_id: pods[2].clone(), ..Default::default() };
    for filter in [None, Some(one_pod)] {
        let list = runtime.list_container_stats(ListContainerStatsRequest { filter: filter.clone() }).await.unwrap();
        let expected = listed("ListContainerStats", list.into_inner().stats, stats_key);
        // Exited containers too (the stopped pod's), with what is known of them.
        assert_eq!(expected.len(), if filter.is_some() { 3 } else { 13 }, "{expected:?}");
        let stream = runtime.stream_container_stats(StreamContainerStatsRequest { filter }).await;
        let streamed = collect("StreamContainerStats", stream, |m| m.container_stats, stats_key).await;
        assert_eq!(streamed, expected);
    }

    let pod_stats_key = |s: &PodSandboxStats| s.attributes.as_ref().expect("attributes").id.clone();
    let odd = PodSandboxStatsFilter { label_selector: [("group".into(), "odd".into())].into(), ..Default::default() };
    for filter in [None, Some(odd)] {
        let list = runtime.list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: filter.clone() }).await.unwrap();
        let expected = listed("ListPodSandboxStats", list.into_inner().stats, pod_stats_key);
        assert_eq!(expected.len(), if filter.is_some() { 2 } else { 4 }, "ready pods only");
        let stream = runtime.stream_pod_sandbox_stats(StreamPodSandboxStatsRequest { filter }).await;
        let streamed = collect("StreamPodSandboxStats", stream, |m| m.pod_sandbox_stats, pod_stats_key).await;
        assert_eq!(streamed, expected);
    }

    // Metrics: the same pods, and the same containers in each.
    let metrics_key = |m: &PodSandboxMetrics| {
        let containers: BTreeSet<String> = m.container_metrics.iter().map(|c| c.container_id.clone()).collect();
        (m.pod_sandbox_id.clone(), containers)
    };
    let list = runtime.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {}).await.unwrap();
    let expected = listed("ListPodSandboxMetrics", list.into_inner().pod_metrics, metrics_key);
    assert_eq!(expected.len(), 4);
    assert!(expected.iter().all(|(_, containers)| containers.len() == 3), "{expected:?}");
    let stream = runtime.stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest {}).await;
    let streamed = collect("StreamPodSandboxMetrics", stream, |m| m.pod_sandbox_metrics, metrics_key).await;
    assert_eq!(streamed, expected);

    let image = &mut client.image;
    let by_name = ImageFilter { image: Some(ImageSpec { image: web.clone(), ..Default::default() }) };
    for filter in [None, Some(by_name)] {
        let list = image.list_images(ListImagesRequest { filter: filter.clone() }).await.unwrap();
        let expected = listed("ListImages", list.into_inner().images, |i| i.id.clone());
        assert_eq!(expected.len(), if filter.is_some() { 1 } else { 2 });
        let stream = image.stream_images(StreamImagesRequest { filter }).await;
        let streamed = collect("StreamImages", stream, |m| m.images, |i| i.id.clone()).await;
        assert_eq!(streamed, expected);
    }

    // An empty answer is an empty stream: EOF with no message.
    let nothing = PodSandboxFilter { id: "no-such-pod".into(), ..Default::default() };
    let stream = client.runtime.stream_pod_sandboxes(StreamPodSandboxesRequest { filter: Some(nothing) }).await;
    assert!(collect("StreamPodSandboxes", stream, |m| m.pod_sandboxes, |p| p.id.clone()).await.is_empty());

    for pod in pods.iter().chain([&stopped]) {
        stop_and_remove_pod(&mut client, pod).await;
    }
}
