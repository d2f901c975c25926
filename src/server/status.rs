//! Status: whether the runtime and the pod network are ready, which runtime handlers exist, and (verbose)
//! how this daemon is configured.
//!
//! kubelet marks the node NotReady while either condition is false, and reports the reason and message to
//! `kubectl describe node`, so both say exactly what is missing.

use std::collections::HashMap;

use serde_json::json;

use crate::context::Context;
use crate::cri::v1::{
    RuntimeCondition, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StatusRequest,
    StatusResponse,
};
use crate::error::RpcError;
use crate::records::NodeSettings;
use crate::version::{GIT_COMMIT, RUNTIME_API_VERSION, RUNTIME_NAME, RUNTIME_VERSION};

/// The condition names and reason kubelet looks for (k8s.io/cri-api: RuntimeReady, NetworkReady).
pub const RUNTIME_READY: &str = "RuntimeReady";
pub const NETWORK_READY: &str = "NetworkReady";
pub const NETWORK_PLUGIN_NOT_READY: &str = "NetworkPluginNotReady";

pub async fn handle(context: &Context, request: StatusRequest) -> Result<StatusResponse, RpcError> {
    let store = context.store.clone();
    let pods = context.pods.clone();
    let (network, settings, schema_version) = context
        .blocking("read runtime status", move || {
            let network = pods.network();
            let settings = store.get::<NodeSettings>("settings")?.unwrap_or_default();
            Ok((network, settings, store.schema_version()?))
        })
        .await?;

    let network_condition = match &network {
        Ok(_) => condition(NETWORK_READY, true, "", ""),
        Err(message) => condition(NETWORK_READY, false, NETWORK_PLUGIN_NOT_READY, message),
    };
    let status = RuntimeStatus { conditions: vec![condition(RUNTIME_READY, true, "", ""), network_condition] };

    let mut info = HashMap::new();
    if request.verbose {
        let network_info = match &network {
            Ok(config) => json!({
                "confDir": context.config.cni.conf_dir.as_path(),
                "file": config.path,
                "name": config.name,
                "cniVersion": config.cni_version,
                "plugins": config.plugin_types,
                "runs": context.pods.chain_path(config).to_string(),
            }),
            Err(message) => json!({ "confDir": context.config.cni.conf_dir.as_path(), "error": message }),
        };
        let entries = [
            (
                "version",
                json!({
                    "runtimeName": RUNTIME_NAME,
                    "runtimeVersion": RUNTIME_VERSION.to_owned(),
                    "runtimeApiVersion": RUNTIME_API_VERSION,
                    "gitCommit": GIT_COMMIT,
                }),
            ),
            ("config", serde_json::to_value(context.config.redacted()).unwrap_or_default()),
            ("network", network_info),
            ("runtimeConfig", json!({ "podCIDR": settings.pod_cidr })),
            ("store", json!({ "path": context.store.path(), "schemaVersion": schema_version })),
            ("cgroup", cgroup_info()),
        ];
        for (key, value) in entries {
            info.insert(key.to_owned(), value.to_string());
        }
    }

    Ok(StatusResponse {
        status: Some(status),
        info,
        runtime_handlers: runtime_handlers(context),
        features: Some(RuntimeFeatures {
            // Strict leaves out the groups of the image's /etc/group (containers/spec/user.rs), and
            // ContainerStatus.user reports the ids the process got, which is what kubelet checks.
            supplemental_groups_policy: true,
            // A user-namespaced pod on the host's network would need the netns owned by the pod's user
            // namespace; berth does not offer it, so kubelet must not schedule such pods here.
            user_namespaces_host_network: false,
        }),
    })
}

fn condition(kind: &str, ready: bool, reason: &str, message: &str) -> RuntimeCondition {
    RuntimeCondition { r#type: kind.to_owned(), status: ready, reason: reason.to_owned(), message: message.to_owned() }
}

/// The default handler (empty name) and every configured one, in name order.
fn runtime_handlers(context: &Context) -> Vec<RuntimeHandler> {
    // user_namespaces: kubelet runs `hostUsers: false` pods only on handlers that say so (every handler
    // runs them the same way: a pinned pod user namespace, idmapped layers and volumes).
    // recursive_read_only_mounts: `rro` is made with mount_setattr(2), so it is offered where the kernel has it.
    let features = RuntimeHandlerFeatures {
        recursive_read_only_mounts: berth_runtime::mount_api::mount_setattr_available(),
        user_namespaces: true,
    };
    std::iter::once(String::new())
        .chain(context.config.runtime_handlers.keys().cloned())
        .map(|name| RuntimeHandler { name, features: Some(features) })
        .collect()
}

/// The host's cgroup layout as containers see it, and whether moving a process into a cgroup waits for an
/// RCU grace period here (see `berth_runtime::cgroups::Layout::favors_dynamic_modifications`).
fn cgroup_info() -> serde_json::Value {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let layout = match berth_runtime::cgroups::Layout::host() {
        Ok(layout) if layout.is_v2() => "v2",
        Ok(berth_runtime::cgroups::Layout::V1 { unified: Some(_), .. }) => "hybrid",
        Ok(_) => "v1",
        Err(_) => "unknown",
    };
    json!({
        "layout": layout,
        "favordynmods": berth_runtime::cgroups::Layout::favors_dynamic_modifications(&mountinfo),
    })
}
