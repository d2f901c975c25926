//! PodSandboxStatus and ListPodSandbox: the recorded sandboxes as CRI shows them.

use std::collections::HashMap;

use crate::context::Context;
use crate::cri::v1::{
    LinuxPodSandboxStatus, ListPodSandboxRequest, ListPodSandboxResponse, Namespace, NamespaceOption, PodIp,
    PodSandbox, PodSandboxMetadata, PodSandboxNetworkStatus, PodSandboxState, PodSandboxStatus,
    PodSandboxStatusRequest, PodSandboxStatusResponse,
};
use crate::error::RpcError;
use crate::pods::PodError;
use crate::records::{PodRecord, PodState};
use crate::server::trace::record_id;

fn state(record: &PodRecord) -> PodSandboxState {
    if record.state == PodState::Ready { PodSandboxState::SandboxReady } else { PodSandboxState::SandboxNotready }
}

fn metadata(record: &PodRecord) -> PodSandboxMetadata {
    PodSandboxMetadata {
        name: record.name.clone(),
        uid: record.uid.clone(),
        namespace: record.namespace.clone(),
        attempt: record.attempt,
    }
}

pub async fn status(context: &Context, request: PodSandboxStatusRequest) -> Result<PodSandboxStatusResponse, RpcError> {
    record_id("pod_sandbox_id", &request.pod_sandbox_id);
    let pods = context.pods.clone();
    let id = request.pod_sandbox_id.clone();
    let record = context
        .blocking("read the pod sandbox", move || Ok(pods.find(&id)?))
        .await?
        .ok_or_else(|| RpcError::Pod(PodError::NotFound(request.pod_sandbox_id.clone())))?;
    let mut ips = record.ips.iter().map(|ip| PodIp { ip: ip.clone() });
    let network =
        PodSandboxNetworkStatus { ip: ips.next().map(|p| p.ip).unwrap_or_default(), additional_ips: ips.collect() };
    let mut info = HashMap::new();
    if request.verbose {
        let detail = serde_json::json!({
            "netns": record.netns,
            "ipcns": record.ipcns,
            "utsns": record.utsns,
            "userns": record.userns,
            "userMappings": record.user_mappings,
            "network": record.network,
            "cgroupParent": record.cgroup_parent,
            "hostname": record.hostname,
            "state": format!("{:?}", record.state),
            "podDir": context.layout.pod_dir(&record.id),
            "shim": crate::shim::Bootstrap::load(&context.layout.pod_dir(&record.id)).ok(),
        });
        info.insert("info".to_owned(), detail.to_string());
    }
    Ok(PodSandboxStatusResponse {
        status: Some(PodSandboxStatus {
            id: record.id.clone(),
            metadata: Some(metadata(&record)),
            state: state(&record).into(),
            created_at: record.created_at_unix_nanos,
            network: Some(network),
            linux: Some(LinuxPodSandboxStatus {
                namespaces: Some(Namespace {
                    options: Some(NamespaceOption {
                        network: record.network_mode,
                        pid: record.pid_mode,
                        ipc: record.ipc_mode,
                        userns_options: record.user_mappings.as_ref().map(crate::pods::userns::to_cri),
                        ..Default::default()
                    }),
                }),
            }),
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
            runtime_handler: record.runtime_handler.clone(),
        }),
        info,
        // For kubelet's evented PLEG: the pod's containers as ContainerStatus reports them.
        containers_statuses: context
            .containers
            .list()?
            .iter()
            .filter(|c| c.pod_id == record.id)
            .map(|c| context.containers.status_of(c))
            .collect(),
        timestamp: crate::records::now_nanos(),
    })
}

pub async fn list(context: &Context, request: ListPodSandboxRequest) -> Result<ListPodSandboxResponse, RpcError> {
    let pods = context.pods.clone();
    let records = context.blocking("list pod sandboxes", move || Ok(pods.list()?)).await?;
    let filter = request.filter.unwrap_or_default();
    let items = records
        .iter()
        .filter(|r| filter.id.is_empty() || r.id.starts_with(&filter.id))
        .filter(|r| filter.state.as_ref().is_none_or(|s| s.state == i32::from(state(r))))
        .filter(|r| filter.label_selector.iter().all(|(k, v)| r.labels.get(k) == Some(v)))
        .map(|r| PodSandbox {
            id: r.id.clone(),
            metadata: Some(metadata(r)),
            state: state(r).into(),
            created_at: r.created_at_unix_nanos,
            labels: r.labels.clone().into_iter().collect(),
            annotations: r.annotations.clone().into_iter().collect(),
            runtime_handler: r.runtime_handler.clone(),
        })
        .collect();
    Ok(ListPodSandboxResponse { items })
}
