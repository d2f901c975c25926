//! The soak's driver (hack/soak.sh runs it): for SECONDS it churns pods over one CRI connection at a steady
//! rate, as a busy node's kubelet would, and every sample interval appends one row of the daemon's and the
//! shims' resources and the interval's latencies to CSV.
//!
//! One pod's life (a cycle): RunPodSandbox; CreateContainer and StartContainer of a shell that logs a line every
//! 200 ms; ExecSync `echo`; Exec of `echo` through a streaming session (SPDY and WebSocket in turn); its log
//! file read until a line shows; ContainerStatus; StopContainer, StopPodSandbox, RemovePodSandbox. Beside the
//! cycles, standing pods live the whole run: one serves HTTP, fetched through a PortForward session each
//! cycle, and kubelet's polling runs against all of them (ListPodSandbox and ListContainers every second, the
//! stats lists every 10 s).
//!
//! Usage: soak ENDPOINT IMAGE SECONDS CSV
//! Environment: SOAK_DAEMON_PID (required), SOAK_ROOT (berth's root: its .redb files are measured),
//! SOAK_METRICS (host:port of berth's /metrics: its tokio task count), SOAK_LOG_DIR (pods' logs),
//! SOAK_CYCLES_PER_MINUTE (60), SOAK_WORKERS (cycles in flight at most, 4), SOAK_STANDING (standing pods, 8),
//! SOAK_SAMPLE_SECONDS (60). Exits 1 if any step failed (each failure is printed with the step).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth::cli::client::{Client, Endpoint};
use berth::cri::v1::*;
use berth_streaming::client::{PortForwarder, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "bench/mod.rs"]
#[allow(dead_code)]
mod bench;

/// The steps whose latencies each row carries (p50 and p99 of the interval), in CSV order.
const STEPS: &[&str] = &[
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "ExecSync",
    "ExecSession",
    "PortForward",
    "StopContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
    "ListContainers",
    "ListContainerStats",
    "ListPodSandboxStats",
];
const HTTP_PORT: u16 = 8080;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What the workers record between two samples.
#[derive(Default)]
struct Interval {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    cycles: u64,
    skipped: u64,
}

struct Soak {
    image: String,
    log_dir: PathBuf,
    interval: Mutex<Interval>,
    errors: AtomicU64,
    next_pod: AtomicU64,
}

impl Soak {
    fn record(&self, step: &'static str, took: Duration) {
        self.interval.lock().unwrap().latencies.entry(step).or_default().push(took);
    }

    fn failed(&self, step: &str, detail: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("soak: {step} failed: {detail}");
    }

    /// Times `call` as `step`; a failure is counted and printed, and gives None.
    async fn timed<T, E: std::fmt::Display>(
        &self,
        step: &'static str,
        call: impl std::future::Future<Output = Result<T, E>>,
    ) -> Option<T> {
        let began = Instant::now();
        match call.await {
            Ok(value) => {
                self.record(step, began.elapsed());
                Some(value)
            }
            Err(err) => {
                self.failed(step, err);
                None
            }
        }
    }

    fn pod_config(&self, kind: &str) -> PodSandboxConfig {
        let n = self.next_pod.fetch_add(1, Ordering::Relaxed);
        let uid = format!("uid-soak-{kind}-{n}");
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: format!("soak-{kind}-{n}"),
                uid: uid.clone(),
                namespace: "soak".into(),
                attempt: 0,
            }),
            hostname: format!("soak-{n}"),
            log_directory: self.log_dir.join(format!("{kind}-{n}")).to_string_lossy().into_owned(),
            linux: Some(bench::linux_config(&uid)),
            ..Default::default()
        }
    }

    fn container_config(&self, name: &str, script: &str) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: self.image.clone(), ..Default::default() }),
            command: vec!["sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            ..Default::default()
        }
    }

    /// RunPodSandbox, CreateContainer and StartContainer; returns the pod and container ids and the
    /// container's log file.
    async fn start_pod(&self, client: &mut Client, kind: &str, script: &str) -> Option<(String, String, PathBuf)> {
        let config = self.pod_config(kind);
        let log = Path::new(&config.log_directory).join("main.log");
        let request = RunPodSandboxRequest { config: Some(config.clone()), ..Default::default() };
        let pod =
            self.timed("RunPodSandbox", client.runtime.run_pod_sandbox(request)).await?.into_inner().pod_sandbox_id;
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(self.container_config("main", script)),
            sandbox_config: Some(config),
        };
        let Some(created) = self.timed("CreateContainer", client.runtime.create_container(request)).await else {
            self.remove_pod(client, &pod).await;
            return None;
        };
        let container = created.into_inner().container_id;
        let request = StartContainerRequest { container_id: container.clone() };
        if self.timed("StartContainer", client.runtime.start_container(request)).await.is_none() {
            self.remove_pod(client, &pod).await;
            return None;
        }
        Some((pod, container, log))
    }

    async fn remove_pod(&self, client: &mut Client, pod: &str) {
        let request = StopPodSandboxRequest { pod_sandbox_id: pod.to_owned() };
        self.timed("StopPodSandbox", client.runtime.stop_pod_sandbox(request)).await;
        let request = RemovePodSandboxRequest { pod_sandbox_id: pod.to_owned() };
        self.timed("RemovePodSandbox", client.runtime.remove_pod_sandbox(request)).await;
    }

    /// One pod's whole life; `n` alternates the streaming transport.
    async fn cycle(&self, mut client: Client, web_pod: &str, n: u64) {
        // sh is PID 1 of the container: without the trap it would ignore SIGTERM and StopContainer would wait
        // for its timeout.
        let script = "trap 'exit 0' TERM; i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done";
        let Some((pod, container, log)) = self.start_pod(&mut client, "churn", script).await else { return };
        let transport = if n % 2 == 0 { Transport::Spdy } else { Transport::WebSocket };

        let request =
            ExecSyncRequest { container_id: container.clone(), cmd: vec!["echo".into(), "hi".into()], timeout: 10 };
        if let Some(answer) = self.timed("ExecSync", client.runtime.exec_sync(request)).await {
            let answer = answer.into_inner();
            if answer.exit_code != 0 || answer.stdout != b"hi\n" {
                self.failed("ExecSync", format!("exit {} stdout {:?}", answer.exit_code, answer.stdout));
            }
        }
        self.timed("ExecSession", bench::exec_echo(&mut client, &container, transport)).await;
        self.timed("PortForward", fetch_through_port_forward(&mut client, web_pod, transport)).await;

        if let Err(err) = wait_for_log_line(&log).await {
            self.failed("ReadLog", err);
        }
        let request = ContainerStatusRequest { container_id: container.clone(), verbose: false };
        self.timed("ContainerStatus", client.runtime.container_status(request)).await;
        let request = StopContainerRequest { container_id: container, timeout: 10 };
        self.timed("StopContainer", client.runtime.stop_container(request)).await;
        self.remove_pod(&mut client, &pod).await;
        self.interval.lock().unwrap().cycles += 1;
    }

    /// kubelet's polling: the lists every second (PLEG), the stats every 10 s (housekeeping).
    async fn poll(self: Arc<Self>, mut client: Client) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for n in 0u64.. {
            tick.tick().await;
            self.timed("ListPodSandbox", client.runtime.list_pod_sandbox(ListPodSandboxRequest::default())).await;
            self.timed("ListContainers", client.runtime.list_containers(ListContainersRequest::default())).await;
            if n % 10 == 0 {
                let request = ListContainerStatsRequest::default();
                self.timed("ListContainerStats", client.runtime.list_container_stats(request)).await;
                let request = ListPodSandboxStatsRequest::default();
                self.timed("ListPodSandboxStats", client.runtime.list_pod_sandbox_stats(request)).await;
            }
        }
    }
}

/// Reads the container's log file (CRI format) until it holds a whole stdout line, as `kubectl logs` would.
async fn wait_for_log_line(path: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
        if text.lines().any(|line| line.split(' ').nth(1) == Some("stdout") && line.ends_with(" F line 0")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{}: no `line 0` after 5 s; it holds {:?}", path.display(), text));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// PortForward RPC and a session on which one HTTP request fetches the standing web pod's page.
async fn fetch_through_port_forward(client: &mut Client, pod: &str, transport: Transport) -> Result<(), String> {
    let request = PortForwardRequest { pod_sandbox_id: pod.to_owned(), port: vec![i32::from(HTTP_PORT)] };
    let url = client.runtime.port_forward(request).await.map_err(|s| s.message().to_owned())?.into_inner().url;
    let forwarder = PortForwarder::connect(&url, transport).await.map_err(|e| e.to_string())?;
    let (forwarded, mut app) = tokio::io::duplex(64 * 1024);
    let fetch = async {
        app.write_all(b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n").await.map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        app.read_to_end(&mut response).await.map_err(|e| e.to_string())?;
        Ok::<Vec<u8>, String>(response)
    };
    let (forwarded, response) = tokio::join!(forwarder.forward(HTTP_PORT, forwarded), fetch);
    forwarder.close().await;
    forwarded.map_err(|e| e.to_string())?;
    let response = response?;
    if !response.starts_with(b"HTTP/1.") || !response.ends_with(b"soak\n") {
        return Err(format!("through {transport:?}: unexpected response {:?}", String::from_utf8_lossy(&response)));
    }
    Ok(())
}

/// A line of /proc/PID/status (`VmRSS`, `Threads`) as a number (kB for sizes).
fn status_field(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:"))?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: i32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0)
}

/// The shims' pids: processes named `berth-shim:<pod>` (their command line).
fn shim_pids() -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"berth-shim:")) {
            pids.push(pid);
        }
    }
    pids
}

/// Bytes in the .redb files directly under `root` and one level down.
fn redb_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() && depth < 1 {
                dirs.push((path, depth + 1));
            } else if path.extension().is_some_and(|e| e == "redb") {
                total += meta.len();
            }
        }
    }
    total
}

/// `berth_runtime_tasks` from the daemon's /metrics at `address` (plain HTTP on loopback).
async fn runtime_tasks(address: &str) -> Option<u64> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").await.ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    body.lines().find_map(|l| l.strip_prefix("berth_runtime_tasks ")?.trim().parse().ok())
}

fn percentile_ms(samples: &mut [Duration], p: f64) -> String {
    if samples.is_empty() { String::new() } else { format!("{:.2}", bench::percentile(samples, p)) }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(endpoint), Some(image), Some(seconds), Some(csv)) = (args.get(1), args.get(2), args.get(3), args.get(4))
    else {
        eprintln!("usage: soak ENDPOINT IMAGE SECONDS CSV");
        std::process::exit(2);
    };
    let duration = Duration::from_secs(seconds.parse().expect("SECONDS"));
    let daemon: i32 = env_or("SOAK_DAEMON_PID", 0);
    assert!(daemon > 0, "SOAK_DAEMON_PID names the daemon");
    let root = PathBuf::from(std::env::var("SOAK_ROOT").unwrap_or_default());
    let metrics = std::env::var("SOAK_METRICS").ok();
    let per_minute: u64 = env_or("SOAK_CYCLES_PER_MINUTE", 60);
    let workers: usize = env_or("SOAK_WORKERS", 4);
    let standing: usize = env_or("SOAK_STANDING", 8);
    let sample_every = Duration::from_secs(env_or("SOAK_SAMPLE_SECONDS", 60));

    let client =
        Client::connect(Endpoint::parse(endpoint).expect("endpoint"), Duration::from_secs(60)).await.expect("connect");
    let soak = Arc::new(Soak {
        image: image.clone(),
        log_dir: PathBuf::from(std::env::var("SOAK_LOG_DIR").unwrap_or_else(|_| "/tmp/berth-soak-logs".into())),
        interval: Mutex::new(Interval::default()),
        errors: AtomicU64::new(0),
        next_pod: AtomicU64::new(0),
    });

    // The standing pods: the first serves the page the cycles fetch, the others sleep.
    let mut standing_pods = Vec::new();
    let web = "echo soak > /tmp/index.html && exec httpd -f -p 8080 -h /tmp";
    for n in 0..standing {
        let script = if n == 0 { web } else { "trap 'exit 0' TERM; while true; do sleep 1; done" };
        let (pod, _, _) = soak.start_pod(&mut client.clone(), "standing", script).await.expect("a standing pod starts");
        standing_pods.push(pod);
    }
    let web_pod = standing_pods[0].clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while fetch_through_port_forward(&mut client.clone(), &web_pod, Transport::Spdy).await.is_err() {
        assert!(Instant::now() < deadline, "the standing web pod never served its page");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    *soak.interval.lock().unwrap() = Interval::default();

    let mut columns = vec![
        "seconds",
        "cycles",
        "skipped",
        "errors",
        "daemon_rss_kib",
        "daemon_fds",
        "daemon_threads",
        "runtime_tasks",
        "shims",
        "standing_shim_rss_kib",
        "standing_shim_fds",
        "redb_bytes",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    for step in STEPS {
        columns.push(format!("{step}_p50_ms"));
        columns.push(format!("{step}_p99_ms"));
    }
    std::fs::write(csv, columns.join(",") + "\n").expect("write the CSV");

    let poller = tokio::spawn(soak.clone().poll(client.clone()));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(workers));
    let mut pace = tokio::time::interval(Duration::from_secs(60) / u32::try_from(per_minute.max(1)).unwrap());
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let began = Instant::now();
    let mut next_sample = began + sample_every;
    let mut cycles = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while began.elapsed() < duration {
        tokio::select! {
            _ = pace.tick() => {
                match in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (soak, client, web_pod) = (soak.clone(), client.clone(), web_pod.clone());
                        n += 1;
                        cycles.spawn(async move {
                            soak.cycle(client, &web_pod, n).await;
                            drop(permit);
                        });
                    }
                    // The node cannot keep the pace: counted, so the figures say so.
                    Err(_) => soak.interval.lock().unwrap().skipped += 1,
                }
            }
            _ = tokio::time::sleep_until(next_sample.into()) => {
                next_sample += sample_every;
                let mut interval = std::mem::take(&mut *soak.interval.lock().unwrap());
                let shims = shim_pids();
                let standing_shims: Vec<i32> = shims
                    .iter()
                    .copied()
                    .filter(|pid| {
                        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                        standing_pods.iter().any(|pod| cmdline.windows(12).any(|w| w == &pod.as_bytes()[..12]))
                    })
                    .collect();
                let count = standing_shims.len().max(1) as u64;
                let tasks = match &metrics {
                    Some(address) => runtime_tasks(address).await.map(|t| t.to_string()).unwrap_or_default(),
                    None => String::new(),
                };
                let mut row = vec![
                    began.elapsed().as_secs().to_string(),
                    interval.cycles.to_string(),
                    interval.skipped.to_string(),
                    soak.errors.load(Ordering::Relaxed).to_string(),
                    status_field(daemon, "VmRSS").to_string(),
                    open_fds(daemon).to_string(),
                    status_field(daemon, "Threads").to_string(),
                    tasks,
                    shims.len().to_string(),
                    (standing_shims.iter().map(|pid| status_field(*pid, "VmRSS")).sum::<u64>() / count).to_string(),
                    (standing_shims.iter().map(|pid| open_fds(*pid)).sum::<u64>() / count).to_string(),
                    redb_bytes(&root).to_string(),
                ];
                for step in STEPS {
                    let samples = interval.latencies.entry(step).or_default();
                    row.push(percentile_ms(samples, 0.5));
                    row.push(percentile_ms(samples, 0.99));
                }
                let line = row.join(",");
                println!("{line}");
                let mut file = std::fs::OpenOptions::new().append(true).open(csv).expect("open the CSV");
                std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes()).expect("append to the CSV");
            }
        }
    }
    while cycles.join_next().await.is_some() {}
    poller.abort();
    for pod in &standing_pods {
        soak.remove_pod(&mut client.clone(), pod).await;
    }
    let errors = soak.errors.load(Ordering::Relaxed);
    eprintln!("soak: {n} cycles in {:.0} s, {errors} failed steps", began.elapsed().as_secs_f64());
    if errors > 0 {
        std::process::exit(1);
    }
}
