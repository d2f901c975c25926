//! The container verbs, like crictl's: `berth create`, `start`, `run` (a pod and its container in one),
//! `ps`, `inspect`, `stop`, `rm`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::client::{Client, rpc_failed};
use super::listing::{self, StateKind};
use super::output::{OutputFormat, print, table};
use crate::cri::v1::{
    AuthConfig, Container, ContainerConfig, ContainerFilter, ContainerState, ContainerStateValue,
    ContainerStatusRequest, CreateContainerRequest, ImageSpec, ImageStatusRequest, ListContainersRequest,
    ListContainersResponse, ListPodSandboxRequest, PodSandboxConfig, PullImageRequest, RemoveContainerRequest,
    StartContainerRequest, StopContainerRequest,
};
use crate::error::chain;

/// The labels kubelet puts on a container naming its pod; crictl's columns read them.
const POD_NAME_LABEL: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// How `create` and `run` get the image.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Pull the image even when it is present.
    #[arg(long, conflicts_with = "no_pull")]
    pub with_pull: bool,
    /// Never pull the image.
    #[arg(long)]
    pub no_pull: bool,
    /// Registry credentials as USER:PASSWORD for the pull (default: those configured for the registry).
    #[arg(long)]
    pub creds: Option<String>,
}

/// `berth create POD CONTAINER-CONFIG POD-CONFIG`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The pod to create the container in (ID or unique ID prefix).
    pub pod: String,
    /// The container's ContainerConfig, crictl's JSON or YAML shape.
    pub container_config: PathBuf,
    /// The pod's PodSandboxConfig, as the pod was run with.
    pub pod_config: PathBuf,
    #[command(flatten)]
    pub pull: PullArgs,
}

/// `berth run CONTAINER-CONFIG POD-CONFIG`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    pub container_config: PathBuf,
    pub pod_config: PathBuf,
    /// The runtime handler to run the pod with (default: the runtime's default).
    #[arg(long, visible_alias = "runtime")]
    pub runtime_handler: Option<String>,
    #[command(flatten)]
    pub pull: PullArgs,
}

/// `berth ps`.
#[derive(Debug, clap::Args)]
pub struct ListContainersArgs {
    /// Every container, not only running ones.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Only the container with this ID (or unique ID prefix).
    #[arg(long)]
    pub id: Option<String>,
    /// Only containers of this pod (ID or unique ID prefix).
    #[arg(long, short = 'p')]
    pub pod: Option<String>,
    /// Only containers whose name matches this pattern (a regular expression: literals, ., *, +, ?, ^, $).
    #[arg(long)]
    pub name: Option<String>,
    /// Only containers whose pod's namespace matches this pattern.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Only containers in this state: created, running, exited or unknown.
    #[arg(long, short = 's')]
    pub state: Option<String>,
    /// Only containers with this label (key=value; repeat for several).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Print only container IDs.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Only the most recently created container (in any state).
    #[arg(long, short = 'l')]
    pub latest: bool,
    /// Only the N most recently created containers (in any state; 0: all).
    #[arg(long, short = 'n')]
    pub last: Option<usize>,
    /// Print whole IDs.
    #[arg(long)]
    pub no_trunc: bool,
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `berth inspect CONTAINER...`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Leave out the runtime's verbose information.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Json)]
    pub output: OutputFormat,
}

/// `berth stop CONTAINER...`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    pub ids: Vec<String>,
    /// Seconds between the stop signal and SIGKILL (0: kill at once).
    #[arg(long, short = 't', default_value_t = 0)]
    pub timeout: i64,
    /// Stop every running container.
    #[arg(long, short = 'a')]
    pub all: bool,
}

/// `berth rm CONTAINER...`.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    pub ids: Vec<String>,
    /// Stop (kill) a running container first instead of refusing to remove it.
    #[arg(long, short = 'f')]
    pub force: bool,
    /// Remove every container.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Keep the container's log file (and its rotations).
    #[arg(long, short = 'k')]
    pub keep_logs: bool,
}

fn image_spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: image.to_owned(), ..Default::default() })
}

fn parse_creds(creds: Option<&str>) -> Result<Option<AuthConfig>, String> {
    let Some(creds) = creds else { return Ok(None) };
    let (username, password) = creds.split_once(':').ok_or("--creds takes USER:PASSWORD")?;
    Ok(Some(AuthConfig { username: username.to_owned(), password: password.to_owned(), ..Default::default() }))
}

/// Pulls the container's image when `always`, or when it is absent unless `never`.
async fn ensure_image(
    client: &mut Client,
    container: &ContainerConfig,
    pod: &PodSandboxConfig,
    pull: &PullArgs,
    always: bool,
) -> Result<(), String> {
    let image = container.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    if pull.no_pull {
        return Ok(());
    }
    if !always {
        let request = ImageStatusRequest { image: image_spec(&image), verbose: false };
        let status = client.image.image_status(request).await.map_err(|s| rpc_failed("ImageStatus", s))?;
        if status.into_inner().image.is_some() {
            return Ok(());
        }
    }
    eprintln!("Pulling image {image}");
    let request = PullImageRequest {
        image: container.image.clone(),
        auth: parse_creds(pull.creds.as_deref())?,
        sandbox_config: Some(pod.clone()),
    };
    client.image.pull_image(request).await.map_err(|s| rpc_failed("PullImage", s))?;
    Ok(())
}

async fn create_container(
    client: &mut Client,
    pod_id: &str,
    config: ContainerConfig,
    pod_config: PodSandboxConfig,
) -> Result<String, String> {
    let request = CreateContainerRequest {
        pod_sandbox_id: pod_id.to_owned(),
        config: Some(config),
        sandbox_config: Some(pod_config),
    };
    let answer = client.runtime.create_container(request).await.map_err(|s| rpc_failed("CreateContainer", s))?;
    Ok(answer.into_inner().container_id)
}

async fn start_container(client: &mut Client, id: &str) -> Result<(), String> {
    client
        .runtime
        .start_container(StartContainerRequest { container_id: id.to_owned() })
        .await
        .map_err(|s| format!("starting container {id}: {}", rpc_failed("StartContainer", s)))?;
    Ok(())
}

/// `berth create`: prints the new container's ID. The image is pulled only with `--with-pull`, as crictl
/// does by default.
pub async fn create(mut client: Client, args: CreateArgs) -> Result<(), String> {
    let config = super::cri_config::load_container_config(&args.container_config).map_err(|err| chain(&err))?;
    let pod_config = super::cri_config::load_pod_config(&args.pod_config).map_err(|err| chain(&err))?;
    if args.pull.with_pull {
        ensure_image(&mut client, &config, &pod_config, &args.pull, true).await?;
    }
    let id = create_container(&mut client, &args.pod, config, pod_config).await?;
    println!("{id}");
    Ok(())
}

/// `berth start CONTAINER...`: prints each ID once started.
pub async fn start(mut client: Client, ids: Vec<String>) -> Result<(), String> {
    for id in ids {
        start_container(&mut client, &id).await?;
        println!("{id}");
    }
    Ok(())
}

/// `berth run`: pulls the image when it is absent (`--with-pull`: always; `--no-pull`: never), runs the pod,
/// creates and starts the container, and prints the container's ID.
pub async fn run(mut client: Client, args: RunArgs) -> Result<(), String> {
    let config = super::cri_config::load_container_config(&args.container_config).map_err(|err| chain(&err))?;
    let pod_config = super::cri_config::load_pod_config(&args.pod_config).map_err(|err| chain(&err))?;
    ensure_image(&mut client, &config, &pod_config, &args.pull, args.pull.with_pull).await?;
    let pod_id =
        super::pods::run_pod(&mut client, pod_config.clone(), args.runtime_handler.unwrap_or_default()).await?;
    let id = create_container(&mut client, &pod_id, config, pod_config)
        .await
        .map_err(|err| format!("in pod {pod_id} (still there): {err}"))?;
    start_container(&mut client, &id).await.map_err(|err| format!("in pod {pod_id} (still there): {err}"))?;
    println!("{id}");
    Ok(())
}

/// What `berth ps` selects, on top of what it asks the daemon for.
#[derive(Debug, Default)]
struct ContainerSelection {
    id: String,
    pod: String,
    state: Option<i32>,
    labels: HashMap<String, String>,
    name: Option<listing::NamePattern>,
    namespace: Option<listing::NamePattern>,
    latest: bool,
    last: Option<usize>,
}

impl ContainerSelection {
    fn from_args(args: &ListContainersArgs) -> Result<ContainerSelection, String> {
        let mut state = args.state.as_deref().map(parse_state).transpose()?;
        // Without -a or --state only running containers, and --latest/--last look at every state.
        if state.is_none() && !args.all {
            state = Some(ContainerState::ContainerRunning as i32);
        }
        if args.latest || args.last.is_some_and(|last| last > 0) {
            state = None;
        }
        Ok(ContainerSelection {
            id: args.id.clone().unwrap_or_default(),
            pod: args.pod.clone().unwrap_or_default(),
            state,
            labels: listing::parse_labels(&args.labels)?,
            name: listing::optional_pattern(&args.name)?,
            namespace: listing::optional_pattern(&args.namespace)?,
            latest: args.latest,
            last: args.last,
        })
    }

    fn filter(&self) -> ContainerFilter {
        ContainerFilter {
            id: self.id.clone(),
            state: self.state.map(|state| ContainerStateValue { state }),
            pod_sandbox_id: self.pod.clone(),
            label_selector: self.labels.clone(),
        }
    }

    /// The daemon's answer narrowed by name and pod namespace (and, whatever the daemon did with the
    /// filter, by ID prefix, pod, state and labels), newest first, cut to `--latest`/`--last`.
    fn select(&self, mut containers: Vec<Container>, pods: &PodNames) -> Vec<Container> {
        containers.retain(|container| {
            let name = container.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or_default();
            container.id.starts_with(&self.id)
                && container.pod_sandbox_id.starts_with(&self.pod)
                && self.state.is_none_or(|state| container.state == state)
                && listing::labels_match(&container.labels, &self.labels)
                && listing::pattern_matches(&self.name, name)
                && listing::pattern_matches(&self.namespace, &pods.namespace(container))
        });
        containers.sort_by_key(|container| std::cmp::Reverse(container.created_at));
        containers.truncate(listing::keep_count(containers.len(), self.latest, self.last));
        containers
    }
}

/// Each pod's name and namespace, for the POD and NAMESPACE columns of containers crictl would show as
/// "unknown" (those not created by kubelet, which labels its containers with them).
#[derive(Debug, Default)]
struct PodNames(HashMap<String, (String, String)>);

impl PodNames {
    async fn fetch(client: &mut Client) -> PodNames {
        let request = ListPodSandboxRequest { filter: None };
        let Ok(answer) = client.runtime.list_pod_sandbox(request).await else { return PodNames::default() };
        PodNames(
            answer
                .into_inner()
                .items
                .into_iter()
                .map(|pod| {
                    let metadata = pod.metadata.unwrap_or_default();
                    (pod.id, (metadata.name, metadata.namespace))
                })
                .collect(),
        )
    }

    fn lookup(&self, container: &Container, label: &str, pick: fn(&(String, String)) -> &String) -> String {
        container
            .labels
            .get(label)
            .or_else(|| self.0.get(&container.pod_sandbox_id).map(pick))
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned())
    }

    fn name(&self, container: &Container) -> String {
        self.lookup(container, POD_NAME_LABEL, |pod| &pod.0)
    }

    fn namespace(&self, container: &Container) -> String {
        self.lookup(container, POD_NAMESPACE_LABEL, |pod| &pod.1)
    }
}

fn parse_state(state: &str) -> Result<i32, String> {
    let state = match state.to_ascii_lowercase().as_str() {
        "created" => ContainerState::ContainerCreated,
        "running" => ContainerState::ContainerRunning,
        "exited" => ContainerState::ContainerExited,
        "unknown" => ContainerState::ContainerUnknown,
        _ => return Err(format!("--state {state:?}: should be one of created, running, exited or unknown")),
    };
    Ok(state as i32)
}

fn state_name(state: i32) -> &'static str {
    match ContainerState::try_from(state) {
        Ok(ContainerState::ContainerCreated) => "Created",
        Ok(ContainerState::ContainerRunning) => "Running",
        Ok(ContainerState::ContainerExited) => "Exited",
        Ok(ContainerState::ContainerUnknown) | Err(_) => "Unknown",
    }
}

async fn list_containers(client: &mut Client, filter: Option<ContainerFilter>) -> Result<Vec<Container>, String> {
    let request = ListContainersRequest { filter };
    let answer = client.runtime.list_containers(request).await.map_err(|s| rpc_failed("ListContainers", s))?;
    Ok(answer.into_inner().containers)
}

/// `berth ps`.
pub async fn list(mut client: Client, args: ListContainersArgs) -> Result<(), String> {
    let selection = ContainerSelection::from_args(&args)?;
    let containers = list_containers(&mut client, Some(selection.filter())).await?;
    let pods = PodNames::fetch(&mut client).await;
    let containers = selection.select(containers, &pods);
    if args.quiet {
        containers.iter().for_each(|container| println!("{}", container.id));
        return Ok(());
    }
    if args.output != OutputFormat::Table {
        let mut value = serde_json::to_value(ListContainersResponse { containers })
            .map_err(|e| format!("cannot encode the containers: {e}"))?;
        listing::name_enums(&mut value, StateKind::Container);
        return print(args.output, &value, |_| String::new());
    }
    let rows: Vec<Vec<String>> = containers
        .iter()
        .map(|container| {
            let metadata = container.metadata.clone().unwrap_or_default();
            let image = container.image.as_ref().map(|i| i.image.as_str()).unwrap_or_default();
            // An image ID (what kubelet passes) is shortened like other IDs; a name is shown whole.
            let image = if image.starts_with("sha256:") {
                listing::short_id(image, "sha256:", args.no_trunc)
            } else {
                image.to_owned()
            };
            vec![
                listing::short_id(&container.id, "", args.no_trunc),
                image,
                listing::ago(container.created_at),
                state_name(container.state).to_owned(),
                metadata.name,
                metadata.attempt.to_string(),
                listing::short_id(&container.pod_sandbox_id, "", args.no_trunc),
                pods.name(container),
                pods.namespace(container),
            ]
        })
        .collect();
    let header = ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD", "NAMESPACE"];
    print!("{}", table(&header, &rows));
    Ok(())
}

/// `berth inspect`: each container's status and verbose info.
pub async fn inspect(mut client: Client, args: InspectArgs) -> Result<(), String> {
    let mut documents = Vec::new();
    for id in &args.ids {
        let request = ContainerStatusRequest { container_id: id.clone(), verbose: !args.quiet };
        let answer =
            client.runtime.container_status(request).await.map_err(|s| rpc_failed("ContainerStatus", s))?.into_inner();
        let mut status = answer.status.ok_or_else(|| format!("ContainerStatus of {id} returned no status"))?;
        // Times that have not happened yet print as Go's zero time, as crictl prints them.
        if status.state == ContainerState::ContainerCreated as i32 {
            status.started_at = 0;
        }
        if status.state != ContainerState::ContainerExited as i32
            && status.state != ContainerState::ContainerUnknown as i32
        {
            status.finished_at = 0;
        }
        let times = ["createdAt", "startedAt", "finishedAt"];
        documents.push(listing::status_document(&status, StateKind::Container, &times, &answer.info)?);
    }
    listing::print_documents(args.output, documents)
}

async fn stop_container(client: &mut Client, id: &str, timeout: i64) -> Result<(), String> {
    client
        .runtime
        .stop_container(StopContainerRequest { container_id: id.to_owned(), timeout })
        .await
        .map_err(|s| format!("stopping container {id}: {}", rpc_failed("StopContainer", s)))?;
    Ok(())
}

/// The IDs given, or with `--all` every container listed by `filter`.
async fn ids_or_all(
    client: &mut Client,
    verb: &str,
    ids: Vec<String>,
    all: bool,
    filter: Option<ContainerFilter>,
) -> Result<Vec<String>, String> {
    match (all, ids.is_empty()) {
        (true, true) => Ok(list_containers(client, filter).await?.into_iter().map(|c| c.id).collect()),
        (true, false) => Err(format!("{verb}: give CONTAINER IDs or --all, not both")),
        (false, true) => Err(format!("{verb}: give at least one CONTAINER ID (or --all)")),
        (false, false) => Ok(ids),
    }
}

/// `berth stop [-t SECONDS] CONTAINER...`: prints each ID once stopped.
pub async fn stop(mut client: Client, args: StopArgs) -> Result<(), String> {
    let running = ContainerFilter {
        state: Some(ContainerStateValue { state: ContainerState::ContainerRunning as i32 }),
        ..Default::default()
    };
    for id in ids_or_all(&mut client, "stop", args.ids, args.all, Some(running)).await? {
        stop_container(&mut client, &id, args.timeout).await?;
        println!("{id}");
    }
    Ok(())
}

/// `berth rm [-f] CONTAINER...`: a running container is refused unless `-f`, which kills it first. The log
/// file and its rotations go too unless `--keep-logs`, as crictl removes them (the runtime leaves a
/// container's logs to whoever owns the log directory: kubelet, or here the operator).
pub async fn remove(mut client: Client, args: RemoveArgs) -> Result<(), String> {
    for id in ids_or_all(&mut client, "rm", args.ids, args.all, None).await? {
        let request = ContainerStatusRequest { container_id: id.clone(), verbose: false };
        let status = client
            .runtime
            .container_status(request)
            .await
            .map_err(|s| format!("removing container {id}: {}", rpc_failed("ContainerStatus", s)))?
            .into_inner()
            .status
            .unwrap_or_default();
        if status.state == ContainerState::ContainerRunning as i32 {
            if !args.force {
                return Err(format!("container {id} is running, stop it first (or rm -f)"));
            }
            stop_container(&mut client, &id, 0).await?;
        }
        client
            .runtime
            .remove_container(RemoveContainerRequest { container_id: id.clone() })
            .await
            .map_err(|s| format!("removing container {id}: {}", rpc_failed("RemoveContainer", s)))?;
        if !args.keep_logs && !status.log_path.is_empty() {
            remove_logs(Path::new(&status.log_path));
        }
        println!("{id}");
    }
    Ok(())
}

/// Removes `path` and its rotations (`path.*`); what cannot be removed is reported, not fatal.
fn remove_logs(path: &Path) {
    let mut files = vec![path.to_path_buf()];
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        let rotated = format!("{name}.");
        if let Ok(entries) = std::fs::read_dir(dir) {
            files.extend(
                entries
                    .flatten()
                    .filter(|entry| entry.file_name().to_str().is_some_and(|n| n.starts_with(&rotated)))
                    .map(|entry| entry.path()),
            );
        }
    }
    for file in files {
        match std::fs::remove_file(&file) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                eprintln!("berth: cannot remove log file {}: {err}", file.display());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::v1::ContainerMetadata;

    fn container(id: &str, pod: &str, name: &str, created_at: i64, state: ContainerState) -> Container {
        Container {
            id: id.into(),
            pod_sandbox_id: pod.into(),
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            state: state as i32,
            created_at,
            labels: [("tier".to_owned(), name.to_owned())].into(),
            ..Default::default()
        }
    }

    fn containers() -> Vec<Container> {
        vec![
            container("c1", "p1", "web", 10, ContainerState::ContainerRunning),
            container("c2", "p1", "sidecar", 20, ContainerState::ContainerExited),
            container("c3", "p2", "web", 30, ContainerState::ContainerRunning),
            container("c4", "p2", "init", 40, ContainerState::ContainerCreated),
        ]
    }

    fn args() -> ListContainersArgs {
        ListContainersArgs {
            all: false,
            id: None,
            pod: None,
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

    fn pods() -> PodNames {
        PodNames(
            [
                ("p1".to_owned(), ("one".to_owned(), "default".to_owned())),
                ("p2".to_owned(), ("two".to_owned(), "prod".to_owned())),
            ]
            .into(),
        )
    }

    fn select(args: ListContainersArgs) -> Vec<String> {
        ContainerSelection::from_args(&args).unwrap().select(containers(), &pods()).into_iter().map(|c| c.id).collect()
    }

    #[test]
    fn ps_shows_running_containers_unless_asked_for_more() {
        assert_eq!(select(args()), ["c3", "c1"]);
        assert_eq!(select(ListContainersArgs { all: true, ..args() }), ["c4", "c3", "c2", "c1"]);
        assert_eq!(select(ListContainersArgs { state: Some("Exited".into()), ..args() }), ["c2"]);
        assert_eq!(select(ListContainersArgs { state: Some("created".into()), ..args() }), ["c4"]);
        assert_eq!(select(ListContainersArgs { latest: true, ..args() }), ["c4"], "--latest looks at every state");
        assert_eq!(select(ListContainersArgs { last: Some(2), ..args() }), ["c4", "c3"]);
        assert!(ContainerSelection::from_args(&ListContainersArgs { state: Some("gone".into()), ..args() }).is_err());
    }

    #[test]
    fn ps_filters_by_id_pod_name_namespace_and_label() {
        let all = || ListContainersArgs { all: true, ..args() };
        assert_eq!(select(ListContainersArgs { id: Some("c2".into()), ..all() }), ["c2"]);
        assert_eq!(select(ListContainersArgs { pod: Some("p1".into()), ..all() }), ["c2", "c1"]);
        assert_eq!(select(ListContainersArgs { name: Some("^web$".into()), ..all() }), ["c3", "c1"]);
        assert_eq!(select(ListContainersArgs { namespace: Some("^prod$".into()), ..all() }), ["c4", "c3"]);
        assert_eq!(select(ListContainersArgs { labels: vec!["tier=sidecar".into()], ..all() }), ["c2"]);
        let filter =
            ContainerSelection::from_args(&ListContainersArgs { pod: Some("p1".into()), ..args() }).unwrap().filter();
        assert_eq!(filter.pod_sandbox_id, "p1");
        assert_eq!(filter.state, Some(ContainerStateValue { state: ContainerState::ContainerRunning as i32 }));
    }

    #[test]
    fn pod_columns_come_from_kubelet_labels_then_the_pod() {
        let pods = pods();
        let mut labelled = container("c9", "p1", "x", 0, ContainerState::ContainerRunning);
        assert_eq!((pods.name(&labelled), pods.namespace(&labelled)), ("one".to_owned(), "default".to_owned()));
        labelled.labels.insert(POD_NAME_LABEL.into(), "kube-pod".into());
        assert_eq!(pods.name(&labelled), "kube-pod");
        let orphan = container("c8", "gone", "x", 0, ContainerState::ContainerRunning);
        assert_eq!(pods.namespace(&orphan), "unknown");
    }

    #[test]
    fn removing_logs_takes_rotations_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["web.log", "web.log.20240101-000000", "web.log.1.gz", "web.logger", "other.log"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        remove_logs(&dir.path().join("web.log"));
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["other.log", "web.logger"]);
    }
}
