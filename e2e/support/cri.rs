//! CRI calls the container, network and stats tests share: each panics with the RPC's name on failure, so
//! a test reads as the steps it takes.

use std::time::{Duration, Instant};

use berth::cli::client::Client;
use berth::cri::v1::*;

/// A pod named `name` (uid `uid-<name>`, namespace `e2e`, hostname `<name>-host`) logging under `logs`, with
/// `namespaces` as its NamespaceOption (see [`node_network`] for the common case).
pub fn pod_config(name: &str, logs: &std::path::Path, namespaces: NamespaceOption) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The node's network (and its own IPC and PID namespaces): pods that need no CNI and leave the host as
/// it is.
pub fn node_network() -> NamespaceOption {
    NamespaceOption { network: NamespaceMode::Node as i32, ..Default::default() }
}

/// A container of `image` running `command`, logging to `<name>/0.log` under the pod's log directory.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(ImageSpec { image: image.into(), ..Default::default() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        ..Default::default()
    }
}

pub async fn pull(client: &mut Client, image: &str) {
    client
        .image
        .pull_image(PullImageRequest {
            image: Some(ImageSpec { image: image.into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .expect("PullImage");
}

pub async fn run_pod(client: &mut Client, config: &PodSandboxConfig) -> String {
    client
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest { config: Some(config.clone()), ..Default::default() })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id
}

pub fn create_request(pod: &str, pod_config: &PodSandboxConfig, config: ContainerConfig) -> CreateContainerRequest {
    CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(config),
        sandbox_config: Some(pod_config.clone()),
    }
}

pub async fn create(client: &mut Client, pod: &str, pod_config: &PodSandboxConfig, config: ContainerConfig) -> String {
    client
        .runtime
        .create_container(create_request(pod, pod_config, config))
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id
}

/// A CreateContainer that must fail: its status.
pub async fn create_refused(
    client: &mut Client,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> tonic::Status {
    client.runtime.create_container(create_request(pod, pod_config, config)).await.expect_err("CreateContainer refused")
}

pub async fn start(client: &mut Client, id: &str) {
    client.runtime.start_container(StartContainerRequest { container_id: id.into() }).await.expect("StartContainer");
}

/// Creates and starts a container; returns its id.
pub async fn run_container(
    client: &mut Client,
    pod: &str,
    pod_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let id = create(client, pod, pod_config, config).await;
    start(client, &id).await;
    id
}

pub async fn status(client: &mut Client, id: &str) -> ContainerStatus {
    client
        .runtime
        .container_status(ContainerStatusRequest { container_id: id.into(), verbose: false })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("a status")
}

/// Polls ContainerStatus until the container has exited, for at most `within`.
pub async fn wait_exited(client: &mut Client, id: &str, within: Duration) -> ContainerStatus {
    let deadline = Instant::now() + within;
    loop {
        let status = status(client, id).await;
        if status.state == ContainerState::ContainerExited as i32 {
            return status;
        }
        assert!(Instant::now() < deadline, "container {id} still {:?} after {within:?}", status.state);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn stop_pod(client: &mut Client, pod: &str) {
    client
        .runtime
        .stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: pod.into() })
        .await
        .expect("StopPodSandbox");
}

pub async fn remove_pod(client: &mut Client, pod: &str) {
    client
        .runtime
        .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: pod.into() })
        .await
        .expect("RemovePodSandbox");
}

/// StopPodSandbox then RemovePodSandbox, as kubelet ends a pod.
pub async fn stop_and_remove_pod(client: &mut Client, pod: &str) {
    stop_pod(client, pod).await;
    remove_pod(client, pod).await;
}

/// Runs `cmd` in container `id` (ExecSync, 10 s): its exit code and its stdout followed by its stderr.
pub async fn exec_out(client: &mut Client, id: &str, cmd: &[&str]) -> (i32, String) {
    let reply = client
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    (reply.exit_code, String::from_utf8_lossy(&reply.stdout).into_owned() + &String::from_utf8_lossy(&reply.stderr))
}
