//! RunPodSandbox: pinned namespaces, CNI, the pod's /etc files (see `crate::pods`).

use berth_cni::{DnsCapability, PortMapping};

use crate::context::Context;
use crate::cri::v1::{Protocol, RunPodSandboxRequest, RunPodSandboxResponse};
use crate::error::RpcError;
use crate::pods::{PodError, PodSpec};
use crate::server::trace::record_id;

pub async fn handle(context: &Context, request: RunPodSandboxRequest) -> Result<RunPodSandboxResponse, RpcError> {
    let config = request.config.ok_or(RpcError::InvalidArgument { field: "config", reason: "missing".into() })?;
    let metadata = config.metadata.unwrap_or_default();
    let linux = config.linux.unwrap_or_default();
    let options = linux.security_context.and_then(|s| s.namespace_options).unwrap_or_default();
    let dns = config.dns_config.map(|d| DnsCapability { servers: d.servers, searches: d.searches, options: d.options });
    let port_mappings = config
        .port_mappings
        .into_iter()
        .filter(|p| p.host_port > 0)
        .map(|p| PortMapping {
            host_port: p.host_port as u16,
            container_port: p.container_port as u16,
            protocol: match Protocol::try_from(p.protocol).unwrap_or(Protocol::Tcp) {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
                Protocol::Sctp => "sctp",
            }
            .to_owned(),
            host_ip: p.host_ip,
        })
        .collect();
    let user_mappings = crate::pods::userns::mappings(options.userns_options.as_ref())
        .map_err(|problem| PodError::userns(&metadata.name, problem))?;
    let spec = PodSpec {
        name: metadata.name,
        namespace: metadata.namespace,
        uid: metadata.uid,
        attempt: metadata.attempt,
        hostname: config.hostname,
        log_directory: config.log_directory,
        runtime_handler: request.runtime_handler,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        network_mode: options.network,
        pid_mode: options.pid,
        ipc_mode: options.ipc,
        cgroup_parent: linux.cgroup_parent,
        sysctls: linux.sysctls.into_iter().collect(),
        dns,
        port_mappings,
        overhead: linux.overhead.map(|o| prost::Message::encode_to_vec(&o)).unwrap_or_default(),
        resources: linux.resources.map(|r| prost::Message::encode_to_vec(&r)).unwrap_or_default(),
        user_mappings,
    };
    let id = context.pods.run(spec).await?;
    record_id("pod_sandbox_id", &id);
    context.containers.watch(id.clone());
    Ok(RunPodSandboxResponse { pod_sandbox_id: id })
}
