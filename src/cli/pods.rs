//! The pod verbs, like crictl's: `berth runp`, `pods`, `inspectp`, `stopp`, `rmp`.

use std::path::PathBuf;

use super::client::{Client, rpc_failed};
use super::listing::{self, StateKind};
use super::output::{OutputFormat, print, table};
use crate::cri::v1::{
    ListPodSandboxRequest, ListPodSandboxResponse, PodSandbox, PodSandboxFilter, PodSandboxState, PodSandboxStateValue,
    PodSandboxStatusRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use crate::error::chain;

/// `berth runp POD-CONFIG`.
#[derive(Debug, clap::Args)]
pub struct RunPodArgs {
    /// The pod's PodSandboxConfig, crictl's JSON or YAML shape.
    pub config: PathBuf,
    /// The runtime handler to run the pod with (default: the runtime's default).
    #[arg(long, visible_alias = "runtime")]
    pub runtime_handler: Option<String>,
}

/// `berth pods`.
#[derive(Debug, clap::Args)]
pub struct ListPodsArgs {
    /// Only the pod with this ID (or unique ID prefix).
    #[arg(long)]
    pub id: Option<String>,
    /// Only pods whose name matches this pattern (a regular expression: literals, ., *, +, ?, ^, $).
    #[arg(long)]
    pub name: Option<String>,
    /// Only pods whose namespace matches this pattern.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only pods in this state: ready or notready.
    #[arg(long, short = 's')]
    pub state: Option<String>,
    /// Only pods with this label (key=value; repeat for several).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Print only pod IDs.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Only the most recently created pod.
    #[arg(long, short = 'l')]
    pub latest: bool,
    /// Only the N most recently created pods (0: all).
    #[arg(long, short = 'n')]
    pub last: Option<usize>,
    /// Print whole IDs.
    #[arg(long)]
    pub no_trunc: bool,
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `berth inspectp POD...`.
#[derive(Debug, clap::Args)]
pub struct InspectPodArgs {
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Leave out the runtime's verbose information.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Json)]
    pub output: OutputFormat,
}

/// `berth rmp POD...`.
#[derive(Debug, clap::Args)]
pub struct RemovePodArgs {
    pub ids: Vec<String>,
    /// Stop a ready pod first instead of refusing to remove it.
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Remove every pod.
    #[arg(long, short = 'a')]
    pub all: bool,
}

/// `berth runp`: prints the new pod's ID.
pub async fn run(mut client: Client, args: RunPodArgs) -> Result<(), String> {
    let config = super::cri_config::load_pod_config(&args.config).map_err(|err| chain(&err))?;
    let id = run_pod(&mut client, config, args.runtime_handler.unwrap_or_default()).await?;
    println!("{id}");
    Ok(())
}

pub(super) async fn run_pod(
    client: &mut Client,
    config: crate::cri::v1::PodSandboxConfig,
    runtime_handler: String,
) -> Result<String, String> {
    let request = RunPodSandboxRequest { config: Some(config), runtime_handler };
    let answer = client.runtime.run_pod_sandbox(request).await.map_err(|s| rpc_failed("RunPodSandbox", s))?;
    Ok(answer.into_inner().pod_sandbox_id)
}

/// What `berth pods` selects, on top of what it asks the daemon for.
#[derive(Debug, Default)]
struct PodSelection {
    id: String,
    state: Option<i32>,
    labels: std::collections::HashMap<String, String>,
    name: Option<listing::NamePattern>,
    namespace: Option<listing::NamePattern>,
    latest: bool,
    last: Option<usize>,
}

impl PodSelection {
    fn from_args(args: &ListPodsArgs) -> Result<PodSelection, String> {
        Ok(PodSelection {
            id: args.id.clone().unwrap_or_default(),
            state: args.state.as_deref().map(parse_state).transpose()?,
            labels: listing::parse_labels(&args.labels)?,
            name: listing::optional_pattern(&args.name)?,
            namespace: listing::optional_pattern(&args.namespace)?,
            latest: args.latest,
            last: args.last,
        })
    }

    fn filter(&self) -> PodSandboxFilter {
        PodSandboxFilter {
            id: self.id.clone(),
            state: self.state.map(|state| PodSandboxStateValue { state }),
            label_selector: self.labels.clone(),
        }
    }

    /// The daemon's answer narrowed by name and namespace (and, whatever the daemon did with the filter,
    /// by ID prefix, state and labels), newest first, cut to `--latest`/`--last`.
    fn select(&self, mut pods: Vec<PodSandbox>) -> Vec<PodSandbox> {
        pods.retain(|pod| {
            let metadata = pod.metadata.clone().unwrap_or_default();
            pod.id.starts_with(&self.id)
                && self.state.is_none_or(|state| pod.state == state)
                && listing::labels_match(&pod.labels, &self.labels)
                && listing::pattern_matches(&self.name, &metadata.name)
                && listing::pattern_matches(&self.namespace, &metadata.namespace)
        });
        pods.sort_by_key(|pod| std::cmp::Reverse(pod.created_at));
        pods.truncate(listing::keep_count(pods.len(), self.latest, self.last));
        pods
    }
}

fn parse_state(state: &str) -> Result<i32, String> {
    match state.to_ascii_lowercase().as_str() {
        "ready" => Ok(PodSandboxState::SandboxReady as i32),
        "notready" => Ok(PodSandboxState::SandboxNotready as i32),
        _ => Err(format!("--state {state:?}: should be ready or notready")),
    }
}

fn state_name(state: i32) -> &'static str {
    match PodSandboxState::try_from(state) {
        Ok(PodSandboxState::SandboxReady) => "Ready",
        Ok(PodSandboxState::SandboxNotready) => "NotReady",
        Err(_) => "Unknown",
    }
}

/// `berth pods`.
pub async fn list(mut client: Client, args: ListPodsArgs) -> Result<(), String> {
    let selection = PodSelection::from_args(&args)?;
    let request = ListPodSandboxRequest { filter: Some(selection.filter()) };
    let pods =
        client.runtime.list_pod_sandbox(request).await.map_err(|s| rpc_failed("ListPodSandbox", s))?.into_inner();
    let pods = selection.select(pods.items);
    if args.quiet {
        pods.iter().for_each(|pod| println!("{}", pod.id));
        return Ok(());
    }
    if args.output != OutputFormat::Table {
        let mut value = serde_json::to_value(ListPodSandboxResponse { items: pods })
            .map_err(|e| format!("cannot encode the pods: {e}"))?;
        listing::name_enums(&mut value, StateKind::Pod);
        return print(args.output, &value, |_| String::new());
    }
    let rows: Vec<Vec<String>> = pods
        .iter()
        .map(|pod| {
            let metadata = pod.metadata.clone().unwrap_or_default();
            vec![
                listing::short_id(&pod.id, "", args.no_trunc),
                listing::ago(pod.created_at),
                state_name(pod.state).to_owned(),
                metadata.name,
                metadata.namespace,
                metadata.attempt.to_string(),
                if pod.runtime_handler.is_empty() { "(default)".to_owned() } else { pod.runtime_handler.clone() },
            ]
        })
        .collect();
    print!("{}", table(&["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"], &rows));
    Ok(())
}

/// `berth inspectp`: each pod's status and verbose info.
pub async fn inspect(mut client: Client, args: InspectPodArgs) -> Result<(), String> {
    let mut documents = Vec::new();
    for id in &args.ids {
        let request = PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: !args.quiet };
        let answer = client
            .runtime
            .pod_sandbox_status(request)
            .await
            .map_err(|s| rpc_failed("PodSandboxStatus", s))?
            .into_inner();
        let status = answer.status.ok_or_else(|| format!("PodSandboxStatus of {id} returned no status"))?;
        documents.push(listing::status_document(&status, StateKind::Pod, &["createdAt"], &answer.info)?);
    }
    listing::print_documents(args.output, documents)
}

/// `berth stopp POD...`.
pub async fn stop(mut client: Client, ids: Vec<String>) -> Result<(), String> {
    for id in ids {
        stop_pod(&mut client, &id).await?;
    }
    Ok(())
}

async fn stop_pod(client: &mut Client, id: &str) -> Result<(), String> {
    client
        .runtime
        .stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.to_owned() })
        .await
        .map_err(|s| format!("stopping pod {id}: {}", rpc_failed("StopPodSandbox", s)))?;
    println!("Stopped sandbox {id}");
    Ok(())
}

/// `berth rmp [-f] POD...` or `berth rmp -a`: a ready pod is refused unless `-f`, which stops it first.
pub async fn remove(mut client: Client, args: RemovePodArgs) -> Result<(), String> {
    let ids = match (args.all, args.ids.is_empty()) {
        (true, true) => {
            let request = ListPodSandboxRequest { filter: None };
            let pods = client
                .runtime
                .list_pod_sandbox(request)
                .await
                .map_err(|s| rpc_failed("ListPodSandbox", s))?
                .into_inner();
            pods.items.into_iter().map(|pod| pod.id).collect()
        }
        (true, false) => return Err("rmp: give POD IDs or --all, not both".to_owned()),
        (false, true) => return Err("rmp: give at least one POD ID (or --all)".to_owned()),
        (false, false) => args.ids,
    };
    for id in ids {
        let request = PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: false };
        let status = client
            .runtime
            .pod_sandbox_status(request)
            .await
            .map_err(|s| format!("removing pod {id}: {}", rpc_failed("PodSandboxStatus", s)))?
            .into_inner()
            .status
            .unwrap_or_default();
        if status.state == PodSandboxState::SandboxReady as i32 {
            if !args.force {
                return Err(format!("pod sandbox {id} is running, stop it first (or rmp -f)"));
            }
            stop_pod(&mut client, &id).await?;
        }
        client
            .runtime
            .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.clone() })
            .await
            .map_err(|s| format!("removing pod {id}: {}", rpc_failed("RemovePodSandbox", s)))?;
        println!("Removed sandbox {id}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::v1::PodSandboxMetadata;

    fn pod(id: &str, name: &str, namespace: &str, created_at: i64, ready: bool, labels: &[(&str, &str)]) -> PodSandbox {
        PodSandbox {
            id: id.into(),
            metadata: Some(PodSandboxMetadata { name: name.into(), namespace: namespace.into(), ..Default::default() }),
            state: if ready { 0 } else { 1 },
            created_at,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    fn ids(pods: &[PodSandbox]) -> Vec<&str> {
        pods.iter().map(|p| p.id.as_str()).collect()
    }

    fn pods() -> Vec<PodSandbox> {
        vec![
            pod("aaa1", "web-1", "default", 10, true, &[("app", "web")]),
            pod("bbb2", "db", "prod", 30, false, &[("app", "db")]),
            pod("aaa3", "web-2", "prod", 20, true, &[("app", "web"), ("tier", "front")]),
        ]
    }

    fn args() -> ListPodsArgs {
        ListPodsArgs {
            id: None,
            name: None,
            namespace: None,
            state: None,
            labels: vec![],
            quiet: false,
            latest: false,
            last: None,
            no_trunc: false,
            output: OutputFormat::Table,
        }
    }

    #[test]
    fn pods_list_newest_first_and_filter_by_every_flag() {
        let select = |args: ListPodsArgs| PodSelection::from_args(&args).unwrap().select(pods());
        assert_eq!(ids(&select(args())), ["bbb2", "aaa3", "aaa1"]);
        assert_eq!(ids(&select(ListPodsArgs { id: Some("aaa".into()), ..args() })), ["aaa3", "aaa1"]);
        assert_eq!(ids(&select(ListPodsArgs { state: Some("NotReady".into()), ..args() })), ["bbb2"]);
        assert_eq!(ids(&select(ListPodsArgs { state: Some("ready".into()), ..args() })), ["aaa3", "aaa1"]);
        assert_eq!(ids(&select(ListPodsArgs { labels: vec!["tier=front".into()], ..args() })), ["aaa3"]);
        assert_eq!(ids(&select(ListPodsArgs { name: Some("^web".into()), ..args() })), ["aaa3", "aaa1"]);
        assert_eq!(ids(&select(ListPodsArgs { namespace: Some("prod".into()), ..args() })), ["bbb2", "aaa3"]);
        assert_eq!(ids(&select(ListPodsArgs { latest: true, ..args() })), ["bbb2"]);
        assert_eq!(ids(&select(ListPodsArgs { last: Some(2), ..args() })), ["bbb2", "aaa3"]);
        assert!(PodSelection::from_args(&ListPodsArgs { state: Some("running".into()), ..args() }).is_err());
    }

    #[test]
    fn the_daemon_is_asked_for_what_it_can_filter() {
        let args =
            ListPodsArgs { id: Some("ab".into()), state: Some("ready".into()), labels: vec!["a=b".into()], ..args() };
        let filter = PodSelection::from_args(&args).unwrap().filter();
        assert_eq!(filter.id, "ab");
        assert_eq!(filter.state, Some(PodSandboxStateValue { state: 0 }));
        assert_eq!(filter.label_selector["a"], "b");
        assert_eq!(PodSelection::from_args(&super::tests::args()).unwrap().filter().state, None);
    }
}
