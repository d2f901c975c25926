//! What the pod benchmarks share (included by `examples/*-bench.rs` with `#[path]`): the pod they make and
//! how they summarize latencies.

use std::time::Duration;

use berth::cli::client::Client;
use berth::cri::v1::*;
use berth_streaming::client::{CommandIo, Transport, run_command};
use tokio::io::AsyncReadExt;

/// The p-th percentile of `samples` (0.0 to 1.0), in milliseconds.
pub fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1000.0
}

/// The Linux part of a pod's config: the pod's cgroup, `$BENCH_CGROUP_PARENT/pod<uid>` (cgroupfs), as kubelet
/// gives one to every pod (`/kubepods/besteffort/pod<uid>`); the scripts set a parent per run so that they
/// can remove its cgroups afterwards. With `BENCH_CGROUP_SLICE` instead (systemd driver), the slice kubelet's
/// systemd driver names: `$BENCH_CGROUP_SLICE-pod<uid, dashes as underscores>.slice`. Without either, none
/// (the runtime's default).
pub fn linux_config(uid: &str) -> LinuxPodSandboxConfig {
    let cgroup_parent = match (std::env::var("BENCH_CGROUP_PARENT"), std::env::var("BENCH_CGROUP_SLICE")) {
        (Ok(parent), _) if !parent.is_empty() => format!("{}/pod{uid}", parent.trim_end_matches('/')),
        (_, Ok(slice)) if !slice.is_empty() => format!("{slice}-pod{}.slice", uid.replace('-', "_")),
        _ => String::new(),
    };
    LinuxPodSandboxConfig { cgroup_parent, ..Default::default() }
}

/// Pod `n` of a benchmark run named `run`: its own network namespace, logs under /tmp/berth-bench-logs.
pub fn pod_config(run: &str, n: usize) -> PodSandboxConfig {
    let uid = format!("uid-bench-{run}-{n}");
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: format!("bench-{run}-{n}"),
            uid: uid.clone(),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: format!("bench-{n}"),
        log_directory: format!("/tmp/berth-bench-logs/{run}-{n}"),
        linux: Some(linux_config(&uid)),
        ..Default::default()
    }
}

/// RunPodSandbox, then CreateContainer and StartContainer of `sleep 3600` from `image`; returns the pod and
/// container ids.
pub async fn run_sleeping_pod(client: &mut Client, image: &str, config: PodSandboxConfig) -> (String, String) {
    let pod = client
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), ..Default::default() })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let container = start_container(client, &pod, config, image, "sleep", sleep_command()).await;
    (pod, container)
}

/// A container `name` running `command` from `image`, logging to `<name>.log`.
pub fn container_config(name: &str, image: &str, command: Vec<String>) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), ..Default::default() }),
        command,
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

/// `sleep 3600`, what the benchmarks' pods run.
pub fn sleep_command() -> Vec<String> {
    vec!["sleep".into(), "3600".into()]
}

/// CreateContainer and StartContainer of `command` from `image` in `pod` (made from `config`), logging to
/// `<name>.log`; returns the container id.
pub async fn start_container(
    client: &mut Client,
    pod: &str,
    config: PodSandboxConfig,
    image: &str,
    name: &str,
    command: Vec<String>,
) -> String {
    let container = client
        .runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.to_owned(),
            config: Some(container_config(name, image, command)),
            sandbox_config: Some(config),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    client
        .runtime
        .start_container(StartContainerRequest { container_id: container.clone() })
        .await
        .expect("StartContainer");
    container
}

/// Exec RPC and its streaming session of `echo hi`; checks the output and the exit code.
#[allow(dead_code)] // pod-bench and stats-bench include this module and never exec.
pub async fn exec_echo(client: &mut Client, container: &str, transport: Transport) -> Result<(), String> {
    let request = ExecRequest {
        container_id: container.to_owned(),
        cmd: vec!["echo".into(), "hi".into()],
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let url = client.runtime.exec(request).await.map_err(|s| format!("Exec: {:?}: {}", s.code(), s.message()))?;
    let (stdout, mut captured) = tokio::io::duplex(1024);
    let io =
        CommandIo { stdout: Some(Box::new(stdout)), stderr: Some(Box::new(tokio::io::sink())), ..CommandIo::default() };
    let code = run_command(&url.into_inner().url, transport, io).await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    captured.read_to_string(&mut out).await.map_err(|e| e.to_string())?;
    if code != 0 || out != "hi\n" {
        return Err(format!("echo through {transport:?} gave code {code} and {out:?}"));
    }
    Ok(())
}
