//! The records berth keeps in its state database (see `berth_store`), one type per kind of fact.

use berth_store::{Record, Table};
use serde::{Deserialize, Serialize};

/// A new pod sandbox or container id: 64 hex characters from the kernel's random source, like containerd's
/// and CRI-O's.
pub fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Now, in nanoseconds since the Unix epoch (CRI's timestamps).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Node-wide settings kubelet hands over at run time and expects the runtime to keep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeSettings {
    /// The pod CIDR from UpdateRuntimeConfig, handed to CNI configurations that ask for it. Empty until
    /// kubelet sends one.
    pub pod_cidr: String,
}

impl Record for NodeSettings {
    const TABLE: Table = Table::Node;
    fn key(&self) -> String {
        "settings".to_owned()
    }
}

/// A pod sandbox as berth records it: what RunPodSandbox was asked and what it made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    /// `Creating` until every step succeeded (then `Ready`); `NotReady` once stopped.
    pub state: PodState,
    pub created_at_unix_nanos: i64,
    pub hostname: String,
    pub log_directory: String,
    pub runtime_handler: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    /// NamespaceMode of network, pid and ipc as CRI numbers them (0 POD, 1 CONTAINER, 2 NODE, 3 TARGET).
    pub network_mode: i32,
    pub pid_mode: i32,
    pub ipc_mode: i32,
    pub cgroup_parent: String,
    /// Pinned namespaces (`<state>/pods/<id>/ns/{net,ipc,uts}`), when the pod has its own.
    pub netns: Option<std::path::PathBuf>,
    pub ipcns: Option<std::path::PathBuf>,
    pub utsns: Option<std::path::PathBuf>,
    /// Pod IPs from CNI, IPv4 first; empty for host-network pods.
    pub ips: Vec<String>,
    /// The CNI network the pod was attached to, if any (DEL uses the cached result, not this).
    pub network: Option<String>,
    /// Pod overhead and resources kubelet declared (LinuxContainerResources, protobuf-encoded; empty when
    /// none), from RunPodSandbox and UpdatePodSandboxResources.
    #[serde(default)]
    pub overhead: Vec<u8>,
    #[serde(default)]
    pub resources: Vec<u8>,
    /// The pod's pinned user namespace (`<state>/pods/<id>/ns/user`) and its id maps, when it has its own
    /// (`hostUsers: false`).
    #[serde(default)]
    pub userns: Option<std::path::PathBuf>,
    #[serde(default)]
    pub user_mappings: Option<berth_runtime::pin::UserMappings>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodState {
    Creating,
    Ready,
    NotReady,
}

impl Record for PodRecord {
    const TABLE: Table = Table::Pods;
    fn key(&self) -> String {
        self.id.clone()
    }
}

impl PodRecord {
    /// The name kubelet reserves: one live sandbox per (name, namespace, uid, attempt).
    pub fn reservation(&self) -> (String, String, String, u32) {
        (self.name.clone(), self.namespace.clone(), self.uid.clone(), self.attempt)
    }
}

/// A container as berth records it: what CreateContainer was asked, what it made, and the latest facts
/// the pod's shim reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    pub state: ContainerRecordState,
    /// A hash of the CreateContainer request: a retry of the same request gets this container back.
    pub request_hash: u64,
    /// The image as asked (`ImageSpec.image`) and the image id it resolved to (`sha256:...`).
    pub image: String,
    pub image_id: String,
    /// The image's repository digest (`name@sha256:...`) when it has one: what ContainerStatus reports as
    /// `image_ref`, and kubelet as the pod's `imageID` (containerd and CRI-O report the same).
    #[serde(default)]
    pub image_ref: String,
    /// The CRI `ImageSpec`, `Mount`s and `LinuxContainerResources` of the request, protobuf-encoded, for
    /// ContainerStatus to give back unchanged.
    pub image_spec: Vec<u8>,
    pub mounts: Vec<Vec<u8>>,
    pub resources: Vec<u8>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The CRI log file, absolute (the pod's log_directory joined with the container's log_path); empty
    /// when kubelet asked for none.
    pub log_path: String,
    pub uid: u32,
    pub gid: u32,
    pub supplemental_groups: Vec<u32>,
    pub stop_signal: i32,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
    pub pid: i32,
    pub created_at_unix_nanos: i64,
    pub started_at_unix_nanos: i64,
    pub finished_at_unix_nanos: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerRecordState {
    /// Intent: CreateContainer started; nothing it made is known to work yet.
    Creating,
    Created,
    Running,
    Exited,
    /// The shim that owned it is gone and no exit was recorded.
    Unknown,
}

impl Record for ContainerRecord {
    const TABLE: Table = Table::Containers;
    fn key(&self) -> String {
        self.id.clone()
    }
}
