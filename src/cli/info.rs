//! `berth info`: the daemon's verbose Status, like `crictl info`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::client::{Client, rpc_failed};
use super::output::{OutputFormat, print, table};
use crate::cri::v1::StatusRequest;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InfoView {
    conditions: Vec<ConditionView>,
    runtime_handlers: Vec<HandlerView>,
    features: BTreeMap<&'static str, bool>,
    /// The daemon's verbose info, each value decoded from the JSON string it travels as.
    info: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct ConditionView {
    #[serde(rename = "type")]
    kind: String,
    status: bool,
    reason: String,
    message: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HandlerView {
    name: String,
    recursive_read_only_mounts: bool,
    user_namespaces: bool,
}

pub async fn run(mut client: Client, format: OutputFormat) -> Result<(), String> {
    let answer = client.runtime.status(StatusRequest { verbose: true }).await.map_err(|s| rpc_failed("Status", s))?;
    let answer = answer.into_inner();
    let conditions = answer
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .map(|c| ConditionView { kind: c.r#type, status: c.status, reason: c.reason, message: c.message })
        .collect();
    let runtime_handlers = answer
        .runtime_handlers
        .into_iter()
        .map(|h| {
            let features = h.features.unwrap_or_default();
            HandlerView {
                name: h.name,
                recursive_read_only_mounts: features.recursive_read_only_mounts,
                user_namespaces: features.user_namespaces,
            }
        })
        .collect();
    let features = answer.features.unwrap_or_default();
    let features = BTreeMap::from([
        ("supplementalGroupsPolicy", features.supplemental_groups_policy),
        ("userNamespacesHostNetwork", features.user_namespaces_host_network),
    ]);
    let info = answer
        .info
        .into_iter()
        .map(|(key, text)| {
            let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
            (key, value)
        })
        .collect();
    let view = InfoView { conditions, runtime_handlers, features, info };
    print(format, &view, render)
}

fn render(view: &InfoView) -> String {
    let conditions: Vec<Vec<String>> = view
        .conditions
        .iter()
        .map(|c| vec![c.kind.clone(), c.status.to_string(), c.reason.clone(), c.message.clone()])
        .collect();
    let handlers: Vec<Vec<String>> = view
        .runtime_handlers
        .iter()
        .map(|h| {
            let name = if h.name.is_empty() { "(default)".to_owned() } else { h.name.clone() };
            vec![name, h.recursive_read_only_mounts.to_string(), h.user_namespaces.to_string()]
        })
        .collect();
    let mut text = table(&["CONDITION", "STATUS", "REASON", "MESSAGE"], &conditions);
    text.push('\n');
    text.push_str(&table(&["HANDLER", "RECURSIVE-RO-MOUNTS", "USER-NAMESPACES"], &handlers));
    let version = &view.info.get("version");
    if let Some(version) = version.and_then(|v| v.get("runtimeVersion")).and_then(|v| v.as_str()) {
        text.push_str(&format!("\nVersion: {version}\n"));
    }
    if let Some(config) = view.info.get("config") {
        let daemon = &config["daemon"];
        text.push_str(&format!(
            "Root: {}\nState: {}\nCgroup driver: {}\nCNI config: {}\n",
            daemon["root"].as_str().unwrap_or("?"),
            daemon["state"].as_str().unwrap_or("?"),
            config["cgroup"]["driver"].as_str().unwrap_or("?"),
            config["cni"]["conf_dir"].as_str().unwrap_or("?"),
        ));
    }
    if let Some(cgroup) = view.info.get("cgroup") {
        text.push_str(&format!(
            "Cgroups: {}, favordynmods {}\n",
            cgroup["layout"].as_str().unwrap_or("?"),
            if cgroup["favordynmods"].as_bool() == Some(true) { "on" } else { "off" },
        ));
    }
    text.push_str("(use -o json for everything)\n");
    text
}
