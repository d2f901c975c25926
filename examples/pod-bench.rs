//! Pod-ready benchmark over one CRI connection (hack/bench/pods.sh runs it): RunPodSandbox, CreateContainer
//! and StartContainer of `sleep` from an image, N pods sequentially and N pods at a concurrency, then
//! ExecSync `true` and stop+remove. The sequential pods are also timed RPC by RPC at the client, and torn
//! down as kubelet does (StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox), so each RPC has
//! its own median; the concurrent ones are stopped and removed as pods. Works against any CRI endpoint
//! (berth, containerd).
//!
//! Usage: pod-bench ENDPOINT IMAGE [PODS] [CONCURRENCY]

use std::time::{Duration, Instant};

use berth::cli::client::{Client, Endpoint};
use berth::cri::v1::*;

#[path = "bench/mod.rs"]
mod bench;

use bench::{percentile, pod_config, run_sleeping_pod};

/// Client-side latencies of each RPC, by name, in the order first seen.
#[derive(Default)]
struct PerRpc(Vec<(&'static str, Vec<Duration>)>);

impl PerRpc {
    /// Awaits `call`, adds its latency under `name`, and returns its answer.
    async fn time<T>(&mut self, name: &'static str, call: impl Future<Output = T>) -> T {
        let began = Instant::now();
        let answer = call.await;
        let took = began.elapsed();
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, samples)) => samples.push(took),
            None => self.0.push((name, vec![took])),
        }
        answer
    }
}

/// One pod ready, each RPC timed into `rpcs`: returns (pod id, container id, elapsed).
async fn pod_ready_per_rpc(
    client: &mut Client,
    image: &str,
    n: usize,
    rpcs: &mut PerRpc,
) -> (String, String, Duration) {
    let began = Instant::now();
    let config = pod_config("seq", n);
    let request = RunPodSandboxRequest { config: Some(config.clone()), ..Default::default() };
    let pod = rpcs.time("RunPodSandbox", client.runtime.run_pod_sandbox(request)).await;
    let pod = pod.expect("RunPodSandbox").into_inner().pod_sandbox_id;
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(bench::container_config("sleep", image, bench::sleep_command())),
        sandbox_config: Some(config),
    };
    let container = rpcs.time("CreateContainer", client.runtime.create_container(request)).await;
    let container = container.expect("CreateContainer").into_inner().container_id;
    let request = StartContainerRequest { container_id: container.clone() };
    rpcs.time("StartContainer", client.runtime.start_container(request)).await.expect("StartContainer");
    (pod, container, began.elapsed())
}

/// kubelet's teardown, each RPC timed into `rpcs`: the container stopped (SIGKILL at once) and removed, then
/// the pod. Returns the whole.
async fn teardown_per_rpc(client: &mut Client, pod: &str, container: &str, rpcs: &mut PerRpc) -> Duration {
    let began = Instant::now();
    let request = StopContainerRequest { container_id: container.into(), timeout: 0 };
    rpcs.time("StopContainer", client.runtime.stop_container(request)).await.expect("StopContainer");
    let request = RemoveContainerRequest { container_id: container.into() };
    rpcs.time("RemoveContainer", client.runtime.remove_container(request)).await.expect("RemoveContainer");
    let request = StopPodSandboxRequest { pod_sandbox_id: pod.into() };
    rpcs.time("StopPodSandbox", client.runtime.stop_pod_sandbox(request)).await.expect("StopPodSandbox");
    let request = RemovePodSandboxRequest { pod_sandbox_id: pod.into() };
    rpcs.time("RemovePodSandbox", client.runtime.remove_pod_sandbox(request)).await.expect("RemovePodSandbox");
    began.elapsed()
}

/// One pod ready: returns (pod id, container id, elapsed).
async fn pod_ready(client: &mut Client, image: &str, run: &str, n: usize) -> (String, String, Duration) {
    let began = Instant::now();
    let (pod, container) = run_sleeping_pod(client, image, pod_config(run, n)).await;
    (pod, container, began.elapsed())
}

async fn teardown(client: &mut Client, pod: &str) -> Duration {
    let began = Instant::now();
    client
        .runtime
        .stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.into() })
        .await
        .expect("StopPodSandbox");
    client
        .runtime
        .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.into() })
        .await
        .expect("RemovePodSandbox");
    began.elapsed()
}

/// A field of /proc/PID/smaps_rollup, in KiB.
fn kib(pid: i32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:"))?.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}

/// Every process: pid, parent pid, command line (arguments joined by spaces).
fn processes() -> Vec<(i32, i32, String)> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // The parent is the second field after the command name, which ends with the last ')'.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        all.push((pid, ppid.unwrap_or(0), cmdline));
    }
    all
}

/// Total RSS and PSS (KiB) and count of the processes whose command line contains `needle`, plus their
/// children whose command line contains `child` (containerd's pause process under its shim), if given.
fn processes_matching(all: &[(i32, i32, String)], needle: &str, child: Option<&str>) -> (f64, f64, usize) {
    let matched: Vec<i32> = all.iter().filter(|(_, _, cmd)| cmd.contains(needle)).map(|(pid, _, _)| *pid).collect();
    let children =
        all.iter().filter(|(_, ppid, cmd)| child.is_some_and(|child| matched.contains(ppid) && cmd.contains(child)));
    let mut totals = (0.0, 0.0, 0);
    for pid in matched.iter().copied().chain(children.map(|(pid, _, _)| *pid)) {
        totals.0 += kib(pid, "Rss");
        totals.1 += kib(pid, "Pss");
        totals.2 += 1;
    }
    totals
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(endpoint), Some(image)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: pod-bench ENDPOINT IMAGE [PODS] [CONCURRENCY]");
        std::process::exit(2);
    };
    let pods: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(50);
    let concurrency: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(10);
    let client =
        Client::connect(Endpoint::parse(endpoint).expect("endpoint"), Duration::from_secs(30)).await.expect("connect");

    // Sequential.
    let mut ready = Vec::new();
    let mut made = Vec::new();
    let mut rpcs = PerRpc::default();
    for n in 0..pods {
        let (pod, container, took) = pod_ready_per_rpc(&mut client.clone(), image, n, &mut rpcs).await;
        ready.push(took);
        made.push((pod, container));
    }
    // Memory with every sequential pod running: the daemon's RSS, and per pod what runs for it (berth's
    // shim; containerd's shim and pause process), from /proc/PID/smaps_rollup. Read once the runtime has
    // settled (BENCH_SETTLE_SECONDS, as pods.sh sets it), as on a node where the pods have been up a while: berth
    // returns its heap's free pages every 10 s after work, Go's scavenger returns containerd's in the background.
    if let Some(daemon) = std::env::var("BENCH_DAEMON_PID").ok().and_then(|p| p.parse::<i32>().ok()) {
        let settle = std::env::var("BENCH_SETTLE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs(settle)).await;
        // Only the shims of this run's pods (other berth daemons may run on the machine). BENCH_PER_POD_MATCH
        // names another runtime's per-pod process ({pod}: the pod id's first 12 characters), and
        // BENCH_PER_POD_CHILD what else runs for the pod under it (containerd: the pause process).
        let needle = std::env::var("BENCH_PER_POD_MATCH").unwrap_or_else(|_| "berth-shim:{pod}".into());
        let child = std::env::var("BENCH_PER_POD_CHILD").ok().filter(|c| !c.is_empty());
        let all = processes();
        let mut rss = 0.0;
        let mut pss = 0.0;
        let mut count = 0;
        for (pod, _) in &made {
            let (r, p, c) = processes_matching(&all, &needle.replace("{pod}", &pod[..12]), child.as_deref());
            rss += r;
            pss += p;
            count += c;
        }
        let per_pod = match &child {
            Some(child) => format!("{needle} + children {child:?}"),
            None => needle.clone(),
        };
        println!("daemon RSS with {pods} pods      {:7.1} MiB", kib(daemon, "Rss") / 1024.0);
        println!(
            "per pod ({count} processes matching {per_pod}): RSS {:.2} MiB  PSS {:.2} MiB",
            rss / 1024.0 / pods as f64,
            pss / 1024.0 / pods as f64
        );
        // What the runtime costs the node: RSS counts the pages a daemon shares with its shims (berth's are
        // one binary) once per process, PSS divides them among the processes sharing them, so the sum of PSS
        // is the memory these processes take together.
        let daemon_pss = kib(daemon, "Pss");
        println!(
            "runtime total PSS with {pods} pods {:7.1} MiB (daemon {:.1} MiB + the per-pod processes)",
            (daemon_pss + pss) / 1024.0,
            daemon_pss / 1024.0
        );
    }
    let mut exec = Vec::new();
    for (_, container) in made.iter().take(50) {
        let began = Instant::now();
        let request = ExecSyncRequest { container_id: container.clone(), cmd: vec!["true".into()], timeout: 10 };
        let answer = rpcs.time("ExecSync", client.clone().runtime.exec_sync(request)).await;
        assert_eq!(answer.expect("ExecSync").into_inner().exit_code, 0);
        exec.push(began.elapsed());
    }
    let mut removal = Vec::new();
    for (pod, container) in &made {
        removal.push(teardown_per_rpc(&mut client.clone(), pod, container, &mut rpcs).await);
    }

    // Concurrent: `concurrency` workers share the connection.
    let began = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let client = client.clone();
        let image = image.clone();
        workers.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for n in (w..pods).step_by(concurrency) {
                let (pod, _, took) = pod_ready(&mut client.clone(), &image, "par", n).await;
                made.push((pod, took));
            }
            made
        }));
    }
    let mut parallel = Vec::new();
    let mut parallel_pods = Vec::new();
    for worker in workers {
        for (pod, took) in worker.await.expect("worker") {
            parallel.push(took);
            parallel_pods.push(pod);
        }
    }
    let wall = began.elapsed();
    for pod in &parallel_pods {
        teardown(&mut client.clone(), pod).await;
    }
    // Memory that comes back: the daemon's RSS once everything is gone and it has settled again.
    let idle_after = match std::env::var("BENCH_DAEMON_PID").ok().and_then(|p| p.parse::<i32>().ok()) {
        Some(daemon) => {
            let settle = std::env::var("BENCH_SETTLE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            tokio::time::sleep(Duration::from_secs(settle)).await;
            Some((kib(daemon, "Rss") / 1024.0, kib(daemon, "Anonymous") / 1024.0))
        }
        None => None,
    };

    println!("pods={pods} concurrency={concurrency}");
    println!(
        "pod ready sequential   p50 {:7.1} ms  p90 {:7.1} ms",
        percentile(&mut ready, 0.5),
        percentile(&mut ready, 0.9)
    );
    println!(
        "pod ready at {concurrency:<2} conc.  p50 {:7.1} ms  p90 {:7.1} ms  all {pods} in {:.2} s",
        percentile(&mut parallel, 0.5),
        percentile(&mut parallel, 0.9),
        wall.as_secs_f64()
    );
    println!(
        "ExecSync true          p50 {:7.1} ms  p90 {:7.1} ms",
        percentile(&mut exec, 0.5),
        percentile(&mut exec, 0.9)
    );
    println!(
        "stop+remove (4 RPCs)   p50 {:7.1} ms  p90 {:7.1} ms",
        percentile(&mut removal, 0.5),
        percentile(&mut removal, 0.9)
    );
    if let Some((rss, anonymous)) = idle_after {
        // Anonymous is the daemon's own memory (heap, stacks); the rest is the binary's and libraries' pages.
        println!("daemon RSS idle after all removed {rss:5.1} MiB  (anonymous {anonymous:.1} MiB)");
    }
    println!("per RPC, sequential pods, at the client:");
    for (name, samples) in &mut rpcs.0 {
        println!("  {name:<20} p50 {:7.1} ms  p90 {:7.1} ms", percentile(samples, 0.5), percentile(samples, 0.9));
    }
}
