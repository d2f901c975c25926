//! Containers: CRI's container lifecycle on top of the pod's shim.
//!
//! CreateContainer resolves the image, mounts the container's overlay rootfs, builds the OCI spec
//! ([`spec`]), writes the bundle under `<pod dir>/containers/<id>/bundle` and asks the pod's shim to create
//! the container. The record in the `containers` table is written as `Creating` before any side effect and
//! becomes `Created` once the shim holds the container; failures undo what was made. Exits reach the
//! daemon from each shim's event stream ([`ContainerManager::watch`]) and, after a restart, from the shims'
//! own lists and the exit files they wrote ([`ContainerManager::recover`]).

mod checkpoint;
pub mod spec;

pub use checkpoint::CheckpointRequest;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_error_kind::{ErrorKind, Kinded};
use berth_store::Store;
use prost::Message;
use tokio::sync::broadcast;

use crate::config::Config;
use crate::cri::shim as pb;
use crate::cri::v1 as cri;
use crate::layout::Layout;
use crate::records::{ContainerRecord, ContainerRecordState, PodRecord, PodState, new_id, now_nanos};
use crate::shim::ExitRecord;
use crate::shim::client::{Shim, ShimError, Shims};
use crate::step_clock::StepClock;

/// How long StopPodSandbox and RemoveContainer wait for a SIGKILLed container to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container config: {0}")]
    Invalid(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("pod sandbox {0} does not exist")]
    PodNotFound(String),
    #[error("pod sandbox {0} is not ready: containers can only be created in a ready sandbox")]
    PodNotReady(String),
    #[error("image {0} is not present: pull it first")]
    ImageNotFound(String),
    #[error("image volume {destination}: image {image} is not present: pull it first")]
    ImageVolumeNotFound { destination: String, image: String },
    #[error("image volume {destination} (image {image})")]
    ImageVolumeSubPath {
        destination: String,
        image: String,
        #[source]
        source: berth_image::image_volume::SubPathError,
    },
    #[error("a container named {name:?} (attempt {attempt}) already exists in pod {pod}: {id}")]
    NameTaken { name: String, attempt: u32, pod: String, id: String },
    #[error("container {id} is {state}: cannot {action}")]
    WrongState { id: String, state: &'static str, action: &'static str },
    #[error("container {id}: command {command:?} timed out after {seconds} s and was killed")]
    ExecTimeout { id: String, command: String, seconds: i64 },
    #[error("container {id}: {step}")]
    Step {
        id: String,
        step: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("container {id}")]
    Cdi {
        id: String,
        #[source]
        source: crate::cdi::CdiError,
    },
    #[error("container {id}: checkpoint: cannot {step}")]
    Checkpoint {
        id: String,
        step: &'static str,
        #[source]
        source: Box<crate::checkpoint::CheckpointError>,
    },
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Shim(#[from] ShimError),
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
}

impl Kinded for ContainerError {
    fn kind(&self) -> ErrorKind {
        match self {
            ContainerError::Invalid(_) => ErrorKind::InvalidArgument,
            ContainerError::NotFound(_)
            | ContainerError::PodNotFound(_)
            | ContainerError::ImageNotFound(_)
            | ContainerError::ImageVolumeNotFound { .. } => ErrorKind::NotFound,
            ContainerError::ImageVolumeSubPath { source, .. } => match source {
                berth_image::image_volume::SubPathError::Missing { .. } => ErrorKind::NotFound,
                berth_image::image_volume::SubPathError::Unusable { .. } => ErrorKind::InvalidArgument,
            },
            ContainerError::PodNotReady(_) | ContainerError::WrongState { .. } => ErrorKind::FailedPrecondition,
            ContainerError::NameTaken { .. } => ErrorKind::AlreadyExists,
            ContainerError::ExecTimeout { .. } => ErrorKind::DeadlineExceeded,
            ContainerError::Step { source, .. } => crate::error::kind_of_step(source.as_ref()),
            ContainerError::Cdi { source, .. } => source.kind(),
            ContainerError::Checkpoint { source, .. } => source.kind(),
            ContainerError::Spec(err) => err.kind(),
            ContainerError::Shim(err) => err.kind(),
            ContainerError::Store(err) => err.kind(),
        }
    }
}

fn step<E: std::error::Error + Send + Sync + 'static>(
    id: &str,
    step: &'static str,
) -> impl FnOnce(E) -> ContainerError {
    let id = id.to_owned();
    move |source| ContainerError::Step { id, step, source: Box::new(source) }
}

impl ContainerRecordState {
    pub fn name(self) -> &'static str {
        match self {
            ContainerRecordState::Creating => "being created",
            ContainerRecordState::Created => "created",
            ContainerRecordState::Running => "running",
            ContainerRecordState::Exited => "exited",
            ContainerRecordState::Unknown => "in an unknown state",
        }
    }

    pub fn cri(self) -> cri::ContainerState {
        match self {
            ContainerRecordState::Creating | ContainerRecordState::Created => cri::ContainerState::ContainerCreated,
            ContainerRecordState::Running => cri::ContainerState::ContainerRunning,
            ContainerRecordState::Exited => cri::ContainerState::ContainerExited,
            ContainerRecordState::Unknown => cri::ContainerState::ContainerUnknown,
        }
    }
}

/// What CreateContainer needs from the request.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub pod_id: String,
    pub config: cri::ContainerConfig,
    pub pod_config: Option<cri::PodSandboxConfig>,
}

/// Owns every container's lifecycle.
pub struct ContainerManager {
    layout: Layout,
    store: Arc<Store>,
    images: Arc<berth_image::ImageStore>,
    shims: Shims,
    cgroup_driver: crate::config::CgroupDriver,
    /// The CDI spec files devices are resolved against.
    cdi: Arc<crate::cdi::Registry>,
    /// The CRIU binary checkpoints run (`[checkpoint] criu`), resolved when one is asked for.
    criu: String,
    /// Serializes creations, so a name is checked and reserved in one step (and a retried request waits
    /// for the abandoned one it repeats).
    create_lock: Arc<tokio::sync::Mutex<()>>,
    events: broadcast::Sender<cri::ContainerEventResponse>,
}

impl std::fmt::Debug for ContainerManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerManager").finish_non_exhaustive()
    }
}

fn request_hash(request: &CreateRequest) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    request.pod_id.hash(&mut hasher);
    // Protobuf encoding of maps follows the map's iteration order; sort-insensitive enough for a retry of
    // the very same request, which is what this recognizes.
    let mut config = request.config.clone();
    config.labels = Default::default();
    config.annotations = Default::default();
    config.encode_to_vec().hash(&mut hasher);
    let labels: BTreeMap<_, _> = request.config.labels.iter().collect();
    let annotations: BTreeMap<_, _> = request.config.annotations.iter().collect();
    labels.hash(&mut hasher);
    annotations.hash(&mut hasher);
    hasher.finish()
}

/// The repository digest ContainerStatus reports as `image_ref`: the one of the repository the user named
/// when the image has it, else its first; empty when the image has none (built locally, loaded from a file).
fn repository_digest(image: &berth_image::ImageRecord, spec: Option<&cri::ImageSpec>) -> String {
    let named = spec
        .map(|s| if s.user_specified_image.is_empty() { &s.image } else { &s.user_specified_image })
        .and_then(|name| name.parse::<berth_image::reference::Reference>().ok())
        .map(|reference| format!("{}@", reference.name()));
    named
        .and_then(|prefix| image.repo_digests.iter().find(|d| d.starts_with(&prefix)))
        .or_else(|| image.repo_digests.first())
        .cloned()
        .unwrap_or_default()
}

/// `image_ref` of a container: its repository digest, or the image id when there is none.
fn image_ref_of(record: &ContainerRecord) -> String {
    if record.image_ref.is_empty() { record.image_id.clone() } else { record.image_ref.clone() }
}

/// The ImageSpec ContainerStatus and ListContainers report: the request's, with the image the user named
/// (`user_specified_image`, which kubelet always sends) in place of the image id kubelet resolved it to.
/// kubelet shows this field as the container's image and compares it with the pod's spec to see an image
/// update through; containerd and CRI-O report the user's name too.
fn shown_image(record: &ContainerRecord) -> cri::ImageSpec {
    let mut spec = cri::ImageSpec::decode(record.image_spec.as_slice()).unwrap_or_default();
    if !spec.user_specified_image.is_empty() {
        spec.image = spec.user_specified_image.clone();
    }
    spec
}

/// CRI's reason for an exit.
fn exit_reason(exit_code: i32, oom_killed: bool) -> &'static str {
    if oom_killed {
        "OOMKilled"
    } else if exit_code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

impl ContainerManager {
    pub fn new(
        config: &Config,
        layout: &Layout,
        store: Arc<Store>,
        images: Arc<berth_image::ImageStore>,
    ) -> ContainerManager {
        ContainerManager {
            layout: layout.clone(),
            store,
            images,
            shims: Shims::default(),
            cgroup_driver: config.cgroup.driver,
            cdi: Arc::new(crate::cdi::Registry::new(
                config.cdi.spec_dirs.iter().map(|d| d.as_path().to_owned()).collect(),
            )),
            criu: config.checkpoint.criu.clone(),
            create_lock: Arc::new(tokio::sync::Mutex::new(())),
            events: broadcast::channel(1024).0,
        }
    }

    fn container_dir(&self, record: &ContainerRecord) -> PathBuf {
        self.container_dir_of(&record.pod_id, &record.id)
    }

    fn container_dir_of(&self, pod_id: &str, id: &str) -> PathBuf {
        self.layout.pod_dir(pod_id).join("containers").join(id)
    }

    fn bundle(&self, record: &ContainerRecord) -> PathBuf {
        self.container_dir(record).join("bundle")
    }

    /// Subscribes to container lifecycle events (GetContainerEvents).
    pub fn subscribe(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        self.events.subscribe()
    }

    fn emit(&self, record: &ContainerRecord, kind: cri::ContainerEventType) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: record.id.clone(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status: Some(cri::PodSandboxStatus { id: record.pod_id.clone(), ..Default::default() }),
            containers_statuses: vec![self.status_of(record)],
        });
    }

    async fn shim(&self, pod_id: &str) -> Result<Shim, ShimError> {
        self.shims.get(pod_id, &self.layout.pod_dir(pod_id)).await
    }

    /// The pod's shim; if it died (killed, OOM), a new one is started for the pod's new containers (the
    /// dead one's containers were settled when it died).
    async fn shim_or_restart(self: &Arc<Self>, pod: &PodRecord) -> Result<Shim, ContainerError> {
        match self.shim(&pod.id).await {
            Ok(shim) => Ok(shim),
            Err(err) if err.is_gone() => {
                tracing::warn!(pod_sandbox_id = %pod.id, error = %berth_error_kind::chain(&err), "the pod's shim is gone; starting a new one");
                let pod_dir = self.layout.pod_dir(&pod.id);
                let runtime_root = self.layout.runtime_state();
                let pod_id = pod.id.clone();
                let pid_namespace = pod.pid_mode == crate::pods::MODE_POD;
                let systemd_cgroup = self.cgroup_driver == crate::config::CgroupDriver::Systemd;
                tokio::task::spawn_blocking(move || {
                    crate::shim::launch::start(
                        Path::new("/proc/self/exe"),
                        &pod_id,
                        &pod_dir,
                        &runtime_root,
                        pid_namespace,
                        systemd_cgroup,
                    )?
                    .wait_ready()
                })
                .await
                .map_err(step(&pod.id, "run the shim start"))?
                .map_err(step(&pod.id, "restart the pod's shim"))?;
                crate::metrics::global().shim_restarted();
                let shim = self.shim(&pod.id).await?;
                self.watch(pod.id.clone());
                Ok(shim)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// The container with this id, or the only one whose id starts with it.
    pub fn find(&self, id: &str) -> Result<Option<ContainerRecord>, ContainerError> {
        if id.is_empty() {
            return Ok(None);
        }
        if let Some(record) = self.store.get::<ContainerRecord>(id)? {
            return Ok(Some(record));
        }
        let matching: Vec<ContainerRecord> =
            self.store.list::<ContainerRecord>()?.into_iter().filter(|c| c.id.starts_with(id)).collect();
        Ok(if matching.len() == 1 { matching.into_iter().next() } else { None })
    }

    fn get(&self, id: &str) -> Result<ContainerRecord, ContainerError> {
        self.find(id)?.ok_or_else(|| ContainerError::NotFound(id.to_owned()))
    }

    pub fn list(&self) -> Result<Vec<ContainerRecord>, ContainerError> {
        Ok(self.store.list::<ContainerRecord>()?)
    }

    /// CreateContainer. The work runs in its own task holding the creation lock, so a request kubelet
    /// abandons still completes and its retry gets the same container.
    pub async fn create(self: &Arc<Self>, pod: PodRecord, request: CreateRequest) -> Result<String, ContainerError> {
        let metadata = request.config.metadata.clone().unwrap_or_default();
        if metadata.name.is_empty() {
            return Err(ContainerError::Invalid("metadata.name is empty".into()));
        }
        let image = request.config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if image.is_empty() {
            return Err(ContainerError::Invalid("image.image is empty".into()));
        }
        if pod.state != PodState::Ready {
            return Err(ContainerError::PodNotReady(pod.id));
        }
        let guard = Arc::clone(&self.create_lock).lock_owned().await;
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            let _guard = guard;
            manager.create_locked(pod, request, metadata, image).await
        })
        .await
        .map_err(step("", "run the create task"))?
    }

    async fn create_locked(
        self: &Arc<Self>,
        pod: PodRecord,
        request: CreateRequest,
        metadata: cri::ContainerMetadata,
        image: String,
    ) -> Result<String, ContainerError> {
        let hash = request_hash(&request);
        if let Some(existing) = self
            .list()?
            .into_iter()
            .find(|c| c.pod_id == pod.id && c.name == metadata.name && c.attempt == metadata.attempt)
        {
            if existing.request_hash == hash && existing.state != ContainerRecordState::Creating {
                tracing::info!(container_id = %existing.id, "CreateContainer repeated; returning the container it made");
                return Ok(existing.id);
            }
            return Err(ContainerError::NameTaken {
                name: metadata.name,
                attempt: metadata.attempt,
                pod: pod.id,
                id: existing.id,
            });
        }
        let mut request = request;
        // An absolute path is a checkpoint archive, never an image name.
        let requested = if Path::new(&image).is_absolute() {
            None
        } else {
            self.images.find(&image).await.map_err(step("", "look up the image"))?
        };
        let restore = self.restore_request(&pod, &image, requested.as_ref(), &mut request.config)?;
        let image_record = match &restore {
            // A restore runs on the image the checkpoint was taken from, found by its id.
            Some(restore) => self
                .images
                .find(&restore.config.rootfs_image_ref)
                .await
                .map_err(step("", "look up the image"))?
                .ok_or_else(|| ContainerError::ImageNotFound(restore.config.rootfs_image_name.clone()))?,
            None => requested.ok_or_else(|| ContainerError::ImageNotFound(image.clone()))?,
        };
        let id = new_id().map_err(step("", "generate an id"))?;
        let config = &request.config;
        let log_path = if pod.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            Path::new(&pod.log_directory).join(&config.log_path).display().to_string()
        };
        let mut record = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            name: metadata.name.clone(),
            attempt: metadata.attempt,
            state: ContainerRecordState::Creating,
            request_hash: hash,
            image: image.clone(),
            image_id: image_record.id.to_string(),
            image_ref: repository_digest(&image_record, config.image.as_ref()),
            image_spec: config.image.clone().unwrap_or_default().encode_to_vec(),
            mounts: config.mounts.iter().map(|m| m.encode_to_vec()).collect(),
            resources: config.linux.as_ref().and_then(|l| l.resources.clone()).unwrap_or_default().encode_to_vec(),
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            log_path,
            uid: 0,
            gid: 0,
            supplemental_groups: Vec::new(),
            stop_signal: 15,
            tty: config.tty,
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            pid: 0,
            created_at_unix_nanos: now_nanos(),
            started_at_unix_nanos: 0,
            finished_at_unix_nanos: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
        };
        // Intent first, provisionally: CreateContainer writes one record durably, the outcome below. A crash
        // from here on leaves this record (when a durable write of any record followed it) or the pod's
        // container directory, made before anything else; start-up undoes the container from either.
        self.store.put_provisionally(&record)?;
        crate::failpoints::crash_point!("create-container-after-intent");
        match self.make(&pod, &request, &image_record, restore.as_ref(), &mut record).await {
            Ok(()) => {
                crate::failpoints::crash_point!("create-container-before-created");
                record.state = ContainerRecordState::Created;
                self.store.put(&record)?;
                tracing::info!(container_id = %id, pod_sandbox_id = %pod.id, name = %record.name, "container created");
                self.emit(&record, cri::ContainerEventType::ContainerCreatedEvent);
                Ok(id)
            }
            Err(err) => {
                if let Err(cleanup) = self.dismantle(&record, &mut StepClock::start()).await {
                    tracing::warn!(container_id = %id, error = %berth_error_kind::chain(&cleanup), "undoing a failed CreateContainer failed; Remove will retry");
                    record.state = ContainerRecordState::Unknown;
                    record.message = format!("creation failed: {}", berth_error_kind::chain(&err));
                    self.store.put(&record)?;
                    return Err(err);
                }
                self.store.delete::<ContainerRecord>(&id)?;
                Err(err)
            }
        }
    }

    /// Every side effect of CreateContainer, in order.
    async fn make(
        self: &Arc<Self>,
        pod: &PodRecord,
        request: &CreateRequest,
        image: &berth_image::ImageRecord,
        restore: Option<&checkpoint::Restore>,
        record: &mut ContainerRecord,
    ) -> Result<(), ContainerError> {
        let id = record.id.clone();
        let mut clock = StepClock::start();
        // CDI devices first: an unknown one fails the request before anything is made.
        let cdi_names = crate::cdi::requested(&request.config);
        let cdi_edits = if cdi_names.is_empty() {
            Vec::new()
        } else {
            let registry = self.cdi.clone();
            tokio::task::spawn_blocking(move || registry.resolve(&cdi_names))
                .await
                .map_err(step(&id, "run the CDI task"))?
                .map_err(|source| ContainerError::Cdi { id: id.clone(), source })?
        };
        let bundle = self.bundle(record);
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(step(&id, "create the bundle directory"))?;
        // In a pod with its own user namespace the layers are seen through it (idmapped), so its root owns them.
        let idmap = match (&pod.userns, pod.user_mappings.as_ref().and_then(|m| m.root())) {
            (Some(userns), Some((uid, gid))) => {
                Some(berth_image::rootfs::IdmappedRoot { userns: userns.clone(), uid, gid })
            }
            _ => None,
        };
        self.images
            .mount_rootfs_idmapped(&id, &image.id.to_string(), &rootfs, false, idmap)
            .await
            .map_err(step(&id, "mount the container's root filesystem"))?;
        clock.lap("rootfs");
        let image_volumes = self.mount_image_volumes(&id, &request.config).await?;
        let image_config = self.images.config(image).await.map_err(step(&id, "read the image config"))?;
        let shim = self.shim_or_restart(pod).await?;
        let pod_dir = self.layout.pod_dir(&pod.id);
        let pid_namespace = self.pid_namespace(pod, &shim, &request.config)?;
        let shm = pod_dir.join("shm");
        let spec_request = spec::SpecRequest {
            container_id: &id,
            config: &request.config,
            pod: spec::PodContext {
                record: pod,
                config: request.pod_config.as_ref(),
                etc_dir: &pod_dir,
                shm: pod.ipcns.is_some().then_some(shm.as_path()),
                pid_namespace,
            },
            image: &image_config,
            rootfs: &rootfs,
            cgroup_driver: self.cgroup_driver,
            seccomp_root: &self.layout.root.join("seccomp"),
            image_volumes: &image_volumes,
            cdi: &cdi_edits,
        };
        let built = spec::build(&spec_request)?;
        record.uid = built.uid;
        record.gid = built.gid;
        record.supplemental_groups = built.supplemental_groups.clone();
        record.stop_signal = built.stop_signal;
        let config_path = bundle.join("config.json");
        let bytes = serde_json::to_vec(&built.spec).expect("specs serialize");
        std::fs::write(&config_path, bytes).map_err(step(&id, "write the bundle's config.json"))?;
        clock.lap("spec");
        let restore = match restore {
            // Unpacking the archive is disk-bound work of a size the checkpoint decides.
            Some(restore) => Some(tokio::task::block_in_place(|| self.prepare_restore(record, restore, &rootfs))?),
            None => None,
        };
        let restoring = restore.is_some();
        let created = shim
            .api
            .clone()
            .create(pb::CreateRequest {
                id: id.clone(),
                bundle: bundle.display().to_string(),
                log_path: record.log_path.clone(),
                tty: record.tty,
                stdin: record.stdin,
                stdin_once: record.stdin_once,
                restore,
            })
            .await
            .map_err(shim.failed("Create"))?
            .into_inner();
        record.pid = created.pid;
        if restoring {
            self.finish_restore(record);
        }
        clock.lap("shim_create");
        tracing::debug!(container_id = %id, steps = %clock, "container made");
        Ok(())
    }

    /// Mounts the container's image volumes (`Mount.image`) and resolves their sub paths: the host path to
    /// bind for each, by its index in `config.mounts`. What was mounted before a failure is unmounted with
    /// the rootfs when CreateContainer undoes itself.
    async fn mount_image_volumes(
        &self,
        id: &str,
        config: &cri::ContainerConfig,
    ) -> Result<BTreeMap<usize, PathBuf>, ContainerError> {
        let mut volumes = BTreeMap::new();
        for (index, mount) in config.mounts.iter().enumerate() {
            if !spec::mounts::is_image_volume(mount) {
                continue;
            }
            let image = mount.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
            let destination = mount.container_path.clone();
            let mounted = match self.images.mount_image_volume(id, index, &image).await {
                Ok(path) => path,
                Err(berth_image::RootfsError::ImageNotFound { .. }) => {
                    return Err(ContainerError::ImageVolumeNotFound { destination, image });
                }
                Err(err) => return Err(step(id, "mount an image volume")(err)),
            };
            let source = if mount.image_sub_path.is_empty() {
                mounted
            } else {
                berth_image::image_volume::resolve_sub_path(&mounted, &mount.image_sub_path)
                    .map_err(|source| ContainerError::ImageVolumeSubPath { destination, image, source })?
            };
            volumes.insert(index, source);
        }
        Ok(volumes)
    }

    /// The PID namespace a new container joins, per the container's NamespaceOption.
    fn pid_namespace(
        &self,
        pod: &PodRecord,
        shim: &Shim,
        config: &cri::ContainerConfig,
    ) -> Result<Option<PathBuf>, ContainerError> {
        let options =
            config.linux.as_ref().and_then(|l| l.security_context.as_ref()).and_then(|s| s.namespace_options.as_ref());
        let mode = options.map(|o| o.pid).unwrap_or(pod.pid_mode);
        match mode {
            // POD: the shim's holder.
            crate::pods::MODE_POD if shim.bootstrap.pid_namespace_holder > 0 => {
                Ok(Some(PathBuf::from(format!("/proc/{}/ns/pid", shim.bootstrap.pid_namespace_holder))))
            }
            // TARGET: the target container's namespace (ephemeral debug containers).
            crate::pods::MODE_TARGET => {
                let target_id = options.map(|o| o.target_id.clone()).unwrap_or_default();
                let target = self.get(&target_id).map_err(|_| {
                    ContainerError::Invalid(format!("namespace_options.target_id {target_id:?} is not a container"))
                })?;
                if target.state != ContainerRecordState::Running || target.pod_id != pod.id {
                    return Err(ContainerError::Invalid(format!(
                        "namespace_options.target_id {target_id}: the target must be a running container of the same pod"
                    )));
                }
                Ok(Some(PathBuf::from(format!("/proc/{}/ns/pid", target.pid))))
            }
            _ => Ok(None),
        }
    }

    /// Removes what CreateContainer made: the shim's container, the rootfs mount and writable layer, the
    /// bundle. Idempotent.
    async fn dismantle(&self, record: &ContainerRecord, clock: &mut StepClock) -> Result<(), ContainerError> {
        self.dismantle_by_id(&record.pod_id, &record.id, clock).await
    }

    /// [`dismantle`](Self::dismantle) of a container known only by its ids (one whose record a crash lost).
    async fn dismantle_by_id(&self, pod_id: &str, id: &str, clock: &mut StepClock) -> Result<(), ContainerError> {
        match self.shim(pod_id).await {
            Ok(shim) => match shim.api.clone().delete(pb::ContainerRequest { id: id.to_owned() }).await {
                Ok(_) => {}
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => return Err(shim.failed("Delete")(status).into()),
            },
            // No shim: its containers died with it; the runtime state is removed directly.
            Err(err) if err.is_gone() => {
                let runtime = berth_runtime::Runtime::new(self.layout.runtime_state());
                let owned = id.to_owned();
                tokio::task::spawn_blocking(move || runtime.delete(&owned, true))
                    .await
                    .map_err(step(id, "run the delete task"))?
                    .map_err(step(id, "delete the container's runtime state"))?;
            }
            Err(err) => return Err(err.into()),
        }
        clock.lap("shim_delete");
        let dir = self.container_dir_of(pod_id, id);
        self.images
            .remove_rootfs(id, &dir.join("bundle").join("rootfs"))
            .await
            .map_err(step(id, "remove the container's root filesystem"))?;
        clock.lap("rootfs");
        let removed = match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(step(id, "remove the container directory")(err)),
        };
        clock.lap("directory");
        removed
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let record = self.get(id)?;
        if record.state != ContainerRecordState::Created {
            return Err(ContainerError::WrongState { id: record.id, state: record.state.name(), action: "start it" });
        }
        let shim = self.shim(&record.pod_id).await?;
        let started = shim
            .api
            .clone()
            .start(pb::ContainerRequest { id: record.id.clone() })
            .await
            .map_err(shim.failed("Start"))?
            .into_inner();
        // Re-read: the exit may have been recorded meanwhile (a container that ends at once).
        let mut record = self.get(&record.id)?;
        record.started_at_unix_nanos = started.started_at;
        if record.state == ContainerRecordState::Created {
            record.state = ContainerRecordState::Running;
        }
        self.store.put(&record)?;
        tracing::info!(container_id = %record.id, "container started");
        self.emit(&record, cri::ContainerEventType::ContainerStartedEvent);
        Ok(())
    }

    /// StopContainer: the stop signal, then SIGKILL when `timeout` passes (0 = at once). A stopped or
    /// missing container is not an error.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let Some(record) = self.find(id)? else { return Ok(()) };
        if !matches!(record.state, ContainerRecordState::Running | ContainerRecordState::Created) {
            return Ok(());
        }
        let shim = match self.shim(&record.pod_id).await {
            Ok(shim) => shim,
            Err(err) if err.is_gone() => {
                self.shim_gone(&record.pod_id).await?;
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        };
        let mut api = shim.api.clone();
        let request = pb::ContainerRequest { id: record.id.clone() };
        if !timeout.is_zero() && record.state == ContainerRecordState::Running {
            api.kill(pb::KillRequest { id: record.id.clone(), signal: record.stop_signal, all: false })
                .await
                .map_err(shim.failed("Kill"))?;
            if let Ok(result) = tokio::time::timeout(timeout, api.wait(request.clone())).await {
                let exited = result.map_err(shim.failed("Wait"))?.into_inner();
                self.record_exit(&record.pod_id, &exited)?;
                return Ok(());
            }
            tracing::info!(container_id = %record.id, timeout = ?timeout, "the container outlived its grace period; killing it");
        }
        api.kill(pb::KillRequest { id: record.id.clone(), signal: 9, all: true }).await.map_err(shim.failed("Kill"))?;
        let exited = tokio::time::timeout(KILL_WAIT, api.wait(request))
            .await
            .map_err(|_| ContainerError::Step {
                id: record.id.clone(),
                step: "wait for the killed container to exit",
                source: format!("it did not exit within {} s of SIGKILL", KILL_WAIT.as_secs()).into(),
            })?
            .map_err(shim.failed("Wait"))?
            .into_inner();
        self.record_exit(&record.pod_id, &exited)?;
        Ok(())
    }

    /// Records an exit the shim reported (once; later reports of the same exit change nothing).
    fn record_exit(&self, pod_id: &str, state: &pb::ContainerState) -> Result<(), ContainerError> {
        if state.status != pb::Status::Exited as i32 {
            return Ok(());
        }
        let Some(mut record) = self.store.get::<ContainerRecord>(&state.id)? else { return Ok(()) };
        if record.pod_id != pod_id || record.state == ContainerRecordState::Exited {
            return Ok(());
        }
        record.state = ContainerRecordState::Exited;
        record.exit_code = state.exit_code;
        record.finished_at_unix_nanos = state.finished_at;
        if record.started_at_unix_nanos == 0 {
            record.started_at_unix_nanos = state.started_at;
        }
        record.reason = exit_reason(state.exit_code, state.oom_killed).to_owned();
        record.message = state.message.clone();
        self.store.put(&record)?;
        tracing::info!(container_id = %record.id, exit_code = record.exit_code, reason = %record.reason, "container exited");
        self.emit(&record, cri::ContainerEventType::ContainerStoppedEvent);
        Ok(())
    }

    /// RemoveContainer: a running container is killed first. A missing container is not an error.
    pub async fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let mut clock = StepClock::start();
        let Some(record) = self.find(id)? else { return Ok(()) };
        clock.lap("lookup");
        self.dismantle(&record, &mut clock).await?;
        self.store.delete::<ContainerRecord>(&record.id)?;
        clock.lap("record");
        tracing::info!(container_id = %record.id, "container removed");
        tracing::debug!(container_id = %record.id, steps = %clock, "container removal steps");
        self.emit(&record, cri::ContainerEventType::ContainerDeletedEvent);
        Ok(())
    }

    /// The latest state of a container that may still run: asked of its shim, so an exit that happened a
    /// moment ago is seen even before its event arrives.
    pub async fn refresh(&self, record: ContainerRecord) -> ContainerRecord {
        if !matches!(record.state, ContainerRecordState::Running | ContainerRecordState::Created) {
            return record;
        }
        if let Ok(shim) = self.shim(&record.pod_id).await
            && let Ok(state) = shim.api.clone().state(pb::ContainerRequest { id: record.id.clone() }).await
            && state.get_ref().status == pb::Status::Exited as i32
            && self.record_exit(&record.pod_id, state.get_ref()).is_ok()
            && let Ok(Some(updated)) = self.store.get::<ContainerRecord>(&record.id)
        {
            return updated;
        }
        record
    }

    /// The CRI status of a record.
    pub fn status_of(&self, record: &ContainerRecord) -> cri::ContainerStatus {
        let image_spec = shown_image(record);
        let resources = cri::LinuxContainerResources::decode(record.resources.as_slice()).ok();
        cri::ContainerStatus {
            id: record.id.clone(),
            metadata: Some(cri::ContainerMetadata { name: record.name.clone(), attempt: record.attempt }),
            state: record.state.cri() as i32,
            created_at: record.created_at_unix_nanos,
            started_at: record.started_at_unix_nanos,
            finished_at: record.finished_at_unix_nanos,
            exit_code: record.exit_code,
            image: Some(image_spec),
            image_ref: image_ref_of(record),
            reason: record.reason.clone(),
            message: record.message.clone(),
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
            mounts: record.mounts.iter().filter_map(|m| cri::Mount::decode(m.as_slice()).ok()).collect(),
            log_path: record.log_path.clone(),
            resources: resources.map(|linux| cri::ContainerResources { linux: Some(linux), windows: None }),
            image_id: record.image_id.clone(),
            user: Some(cri::ContainerUser {
                linux: Some(cri::LinuxContainerUser {
                    uid: record.uid as i64,
                    gid: record.gid as i64,
                    supplemental_groups: record.supplemental_groups.iter().map(|&g| g as i64).collect(),
                }),
            }),
            stop_signal: 0,
        }
    }

    /// The CRI summary of a record (ListContainers).
    pub fn summary_of(&self, record: &ContainerRecord) -> cri::Container {
        cri::Container {
            id: record.id.clone(),
            pod_sandbox_id: record.pod_id.clone(),
            metadata: Some(cri::ContainerMetadata { name: record.name.clone(), attempt: record.attempt }),
            image: Some(shown_image(record)),
            image_ref: image_ref_of(record),
            state: record.state.cri() as i32,
            created_at: record.created_at_unix_nanos,
            labels: record.labels.clone().into_iter().collect(),
            annotations: record.annotations.clone().into_iter().collect(),
            image_id: record.image_id.clone(),
        }
    }

    /// Verbose info for ContainerStatus (`info` key), as JSON.
    pub fn info_of(&self, record: &ContainerRecord) -> String {
        let bundle = self.bundle(record);
        let spec: serde_json::Value = std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        serde_json::json!({
            "sandboxID": record.pod_id,
            "pid": record.pid,
            "bundle": bundle,
            "rootfs": bundle.join("rootfs"),
            "runtimeSpec": spec,
        })
        .to_string()
    }

    /// The running container `id`, or why it cannot take an exec or an attach now.
    pub fn running(&self, id: &str, action: &'static str) -> Result<ContainerRecord, ContainerError> {
        // The record, not a State call to the shim: probes run ExecSync every few seconds, and the shim
        // refuses a container that exited before its exit reached the record.
        let record = self.get(id)?;
        if record.state != ContainerRecordState::Running {
            return Err(ContainerError::WrongState { id: record.id, state: record.state.name(), action });
        }
        Ok(record)
    }

    /// The OCI process for running `command` in the container like its own process: the container's user,
    /// env, cwd, capabilities, seccomp and rlimits, with `terminal` (and its initial size) as asked.
    fn exec_process(
        &self,
        record: &ContainerRecord,
        command: Vec<String>,
        terminal: Option<(u32, u32)>,
    ) -> Result<oci_spec::runtime::Process, ContainerError> {
        if command.is_empty() {
            return Err(ContainerError::Invalid("cmd is empty".into()));
        }
        let spec_path = self.bundle(record).join("config.json");
        let spec = oci_spec::runtime::Spec::load(&spec_path).map_err(step(&record.id, "read the container's spec"))?;
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(command));
        process.set_terminal(Some(terminal.is_some()));
        let size = terminal.and_then(|(width, height)| {
            oci_spec::runtime::BoxBuilder::default().width(width as u64).height(height as u64).build().ok()
        });
        process.set_console_size(size);
        Ok(process)
    }

    /// ExecSync: runs `command` in the container like its own process (user, env, cwd, capabilities,
    /// seccomp) and returns its output and exit code.
    pub async fn exec_sync(
        &self,
        id: &str,
        command: Vec<String>,
        timeout_seconds: i64,
    ) -> Result<pb::ExecSyncResponse, ContainerError> {
        let record = self.running(id, "exec in it")?;
        let printable = command.join(" ");
        let process = self.exec_process(&record, command, None)?;
        let shim = self.shim(&record.pod_id).await?;
        let answer = shim
            .api
            .clone()
            .exec_sync(pb::ExecSyncRequest {
                id: record.id.clone(),
                process: serde_json::to_vec(&process).expect("processes serialize"),
                timeout_millis: timeout_seconds.max(0) * 1000,
            })
            .await
            .map_err(shim.failed("ExecSync"))?
            .into_inner();
        if answer.timed_out {
            return Err(ContainerError::ExecTimeout { id: record.id, command: printable, seconds: timeout_seconds });
        }
        Ok(answer)
    }

    /// Starts an exec session through the pod's shim: the returned stream carries the process's output and,
    /// last, its exit code. The process runs until it exits or `input` ends (the client is gone).
    pub async fn exec_session(
        &self,
        id: &str,
        command: Vec<String>,
        terminal: Option<(u32, u32)>,
        streams: (bool, bool, bool),
        input: impl tokio_stream::Stream<Item = pb::StreamInput> + Send + 'static,
    ) -> Result<tonic::Streaming<pb::StreamOutput>, ContainerError> {
        let record = self.running(id, "exec in it")?;
        let process = self.exec_process(&record, command, terminal)?;
        let (stdin, stdout, stderr) = streams;
        let start = pb::StreamInput {
            kind: Some(pb::stream_input::Kind::Exec(pb::ExecStart {
                id: record.id.clone(),
                process: serde_json::to_vec(&process).expect("processes serialize"),
                stdin,
                stdout,
                stderr,
            })),
        };
        let shim = self.shim(&record.pod_id).await?;
        let input = tokio_stream::StreamExt::chain(tokio_stream::once(start), input);
        Ok(shim.api.clone().exec(input).await.map_err(shim.failed("Exec"))?.into_inner())
    }

    /// Starts an attach session to the container's stdio through the pod's shim; it ends when the container
    /// exits or `input` ends (the client detached).
    pub async fn attach_session(
        &self,
        id: &str,
        streams: (bool, bool, bool),
        input: impl tokio_stream::Stream<Item = pb::StreamInput> + Send + 'static,
    ) -> Result<tonic::Streaming<pb::StreamOutput>, ContainerError> {
        let record = self.running(id, "attach to it")?;
        let (stdin, stdout, stderr) = streams;
        // stdin only reaches a container created with one (as with containerd, asking for it otherwise is
        // not an error: there is simply nothing to write to).
        let start = pb::StreamInput {
            kind: Some(pb::stream_input::Kind::Attach(pb::AttachStart {
                id: record.id.clone(),
                stdin: stdin && record.stdin,
                stdout,
                stderr,
            })),
        };
        let shim = self.shim(&record.pod_id).await?;
        let input = tokio_stream::StreamExt::chain(tokio_stream::once(start), input);
        Ok(shim.api.clone().attach(input).await.map_err(shim.failed("Attach"))?.into_inner())
    }

    /// ReopenContainerLog.
    pub async fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let record = self.get(id)?;
        if record.state != ContainerRecordState::Running {
            return Err(ContainerError::WrongState {
                id: record.id,
                state: record.state.name(),
                action: "reopen its log",
            });
        }
        let shim = self.shim(&record.pod_id).await?;
        shim.api
            .clone()
            .reopen_log(pb::ContainerRequest { id: record.id.clone() })
            .await
            .map_err(shim.failed("ReopenLog"))?;
        Ok(())
    }

    /// UpdateContainerResources: applied to the cgroup at once, then recorded.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: cri::LinuxContainerResources,
    ) -> Result<(), ContainerError> {
        let mut record = self.get(id)?;
        if !matches!(record.state, ContainerRecordState::Running | ContainerRecordState::Created) {
            return Err(ContainerError::WrongState {
                id: record.id,
                state: record.state.name(),
                action: "update its resources",
            });
        }
        let oci = spec::resources(&record.id, &resources)?;
        let shim = self.shim(&record.pod_id).await?;
        shim.api
            .clone()
            .update(pb::UpdateRequest {
                id: record.id.clone(),
                resources: serde_json::to_vec(&oci).expect("resources serialize"),
            })
            .await
            .map_err(shim.failed("Update"))?;
        record.resources = resources.encode_to_vec();
        self.store.put(&record)?;
        Ok(())
    }

    /// Follows a pod's shim: every exit it reports is recorded. Ends when the shim goes away; if it died
    /// (rather than being shut down), its containers are settled.
    pub fn watch(self: &Arc<Self>, pod_id: String) {
        let manager = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let Ok(shim) = manager.shim(&pod_id).await else {
                    // Already gone before we could follow it.
                    if let Ok(Some(_)) = manager.store.get::<PodRecord>(&pod_id) {
                        let _ = manager.shim_gone(&pod_id).await;
                    }
                    return;
                };
                if let Ok(stream) = shim.api.clone().events(pb::Empty {}).await {
                    let mut stream = stream.into_inner();
                    while let Ok(Some(event)) = stream.message().await {
                        if let Err(err) = manager.record_exit(&pod_id, &event) {
                            tracing::warn!(pod_sandbox_id = %pod_id, container_id = %event.id, error = %berth_error_kind::chain(&err), "cannot record an exit");
                        }
                    }
                }
                // The stream ended: the pod is being removed, or the shim died. A killed process closes its
                // socket before it is gone from /proc, so give it a moment to finish dying.
                manager.shims.forget(&pod_id);
                for _ in 0..40 {
                    if !shim.bootstrap.is_alive() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if !matches!(manager.store.get::<PodRecord>(&pod_id), Ok(Some(_))) {
                    return;
                }
                if !shim.bootstrap.is_alive() {
                    if let Err(err) = manager.shim_gone(&pod_id).await {
                        tracing::warn!(pod_sandbox_id = %pod_id, error = %berth_error_kind::chain(&err), "cannot settle the containers of a dead shim");
                    }
                    return;
                }
                // Still alive: the connection broke, not the shim. Follow it again.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// The pod's shim is dead: each of its containers that was not known to have exited gets the exit the
    /// shim recorded on disk, or is marked Unknown; processes the shim left behind are killed.
    async fn shim_gone(&self, pod_id: &str) -> Result<(), ContainerError> {
        self.shims.forget(pod_id);
        let pod_dir = self.layout.pod_dir(pod_id);
        for mut record in self.list()?.into_iter().filter(|c| c.pod_id == pod_id) {
            if !matches!(record.state, ContainerRecordState::Running | ContainerRecordState::Created) {
                continue;
            }
            let runtime = berth_runtime::Runtime::new(self.layout.runtime_state());
            let id = record.id.clone();
            let _ =
                tokio::task::spawn_blocking(move || runtime.kill(&id, nix::sys::signal::Signal::SIGKILL, true)).await;
            match ExitRecord::load(&pod_dir, &record.id) {
                Some(exit) => {
                    record.state = ContainerRecordState::Exited;
                    record.exit_code = exit.exit_code;
                    record.finished_at_unix_nanos = exit.finished_at_unix_nanos;
                    record.reason = exit_reason(exit.exit_code, exit.oom_killed).to_owned();
                    record.message = exit.message;
                }
                None => {
                    record.state = ContainerRecordState::Unknown;
                    record.reason = "Unknown".into();
                    record.message = "the pod's shim died; the container was killed and its exit is unknown".into();
                    record.exit_code = 255;
                    record.finished_at_unix_nanos = now_nanos();
                }
            }
            tracing::warn!(container_id = %record.id, pod_sandbox_id = %pod_id, state = record.state.name(), "settled a container of a dead shim");
            self.store.put(&record)?;
            self.emit(&record, cri::ContainerEventType::ContainerStoppedEvent);
        }
        Ok(())
    }

    /// StopPodSandbox: every container of the pod is killed at once (kubelet already gave them their grace
    /// period).
    pub async fn stop_pod(&self, pod_id: &str) -> Result<(), ContainerError> {
        for record in self.list()?.into_iter().filter(|c| c.pod_id == pod_id) {
            self.stop(&record.id, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// RemovePodSandbox, before the pod itself goes: its containers are removed and its shim shut down.
    pub async fn remove_pod(&self, pod_id: &str) -> Result<(), ContainerError> {
        for record in self.list()?.into_iter().filter(|c| c.pod_id == pod_id) {
            self.remove(&record.id).await?;
        }
        if let Ok(shim) = self.shim(pod_id).await {
            let _ = shim.api.clone().shutdown(pb::Empty {}).await;
        }
        self.shims.forget(pod_id);
        Ok(())
    }

    /// At start, before the daemon serves: reconnect to every pod's shim, reconcile the records with what
    /// the shims report and the exits they recorded, finish half-made creations, and follow each shim again.
    pub async fn recover(self: &Arc<Self>, pods: &[PodRecord]) -> Result<(), ContainerError> {
        let records = self.list()?;
        let checks = pods.iter().map(|pod| {
            let manager = Arc::clone(self);
            let pod_id = pod.id.clone();
            let records: Vec<ContainerRecord> = records.iter().filter(|c| c.pod_id == pod.id).cloned().collect();
            async move {
                let result = tokio::time::timeout(Duration::from_secs(10), manager.recover_pod(&pod_id, records)).await;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::warn!(pod_sandbox_id = %pod_id, error = %berth_error_kind::chain(&err), "cannot recover the pod's containers"),
                    Err(_) => tracing::warn!(pod_sandbox_id = %pod_id, "recovering the pod's containers timed out"),
                }
            }
        });
        // Bounded concurrency: a node with hundreds of pods reconnects in batches.
        let checks: Vec<_> = checks.collect();
        let mut pending = checks.into_iter();
        loop {
            let batch: Vec<_> = pending.by_ref().take(16).collect();
            if batch.is_empty() {
                break;
            }
            let handles: Vec<_> = batch.into_iter().map(tokio::spawn).collect();
            for handle in handles {
                let _ = handle.await;
            }
        }
        // Containers of pods that no longer exist (a crash between removing them and the pod).
        for record in records.iter().filter(|c| !pods.iter().any(|p| p.id == c.pod_id)) {
            if let Err(err) = self.remove(&record.id).await {
                tracing::warn!(container_id = %record.id, error = %berth_error_kind::chain(&err), "cannot remove a container of a removed pod");
            }
        }
        // Writable layers no record names: a container whose provisional record a crash lost, once the pod's
        // own directory is gone too (the machine restarted, and /run with it). One whose directory is still in
        // a pod's is that pod's to undo (its rootfs may be mounted there): a pod whose recovery failed above
        // retries it at the next start-up.
        let layered = self.images.layered_containers().map_err(step("", "list the containers' writable layers"))?;
        let in_pods = self.container_directories_in_pods();
        for id in layered.iter().filter(|id| !records.iter().any(|r| &r.id == *id) && !in_pods.contains(*id)) {
            tracing::info!(container_id = %id, "removing the writable layer of a container that has no record");
            if let Err(err) = self.images.remove_layer(id).await {
                tracing::warn!(container_id = %id, error = %berth_error_kind::chain(&err), "cannot remove a writable layer no container uses");
            }
        }
        Ok(())
    }

    /// The names of the container directories in every pod's directory; a pod whose directory cannot be
    /// read counts as having none.
    fn container_directories_in_pods(&self) -> BTreeSet<String> {
        let pods = std::fs::read_dir(self.layout.state.join("pods")).into_iter().flatten().flatten();
        pods.filter_map(|pod| pod.file_name().to_str().and_then(|id| self.container_directories(id).ok()))
            .flatten()
            .collect()
    }

    /// The names of the container directories in a pod's directory (none when it has no `containers/`).
    fn container_directories(&self, pod_id: &str) -> std::io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(self.layout.pod_dir(pod_id).join("containers")) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        let mut names = Vec::new();
        for entry in entries {
            names.extend(entry?.file_name().to_str().map(str::to_owned));
        }
        Ok(names)
    }

    /// Removes the containers a crash left half made before their provisional record reached the disk (see
    /// `create_locked`): the pod's container directories and the shim's containers that no record names.
    async fn remove_unrecorded(
        &self,
        pod_id: &str,
        records: &[ContainerRecord],
        in_shim: &[String],
    ) -> Result<(), ContainerError> {
        let mut ids: BTreeSet<String> = in_shim.iter().cloned().collect();
        ids.extend(self.container_directories(pod_id).map_err(step(pod_id, "list the pod's container directories"))?);
        for id in ids.iter().filter(|id| !records.iter().any(|r| &r.id == *id)) {
            tracing::info!(container_id = %id, pod_sandbox_id = %pod_id, "undoing a container a crash left half made, before its record was on disk");
            self.dismantle_by_id(pod_id, id, &mut StepClock::start()).await?;
        }
        Ok(())
    }

    async fn recover_pod(self: &Arc<Self>, pod_id: &str, records: Vec<ContainerRecord>) -> Result<(), ContainerError> {
        let shim = match self.shim(pod_id).await {
            Ok(shim) => shim,
            Err(err) if err.is_gone() => {
                tracing::warn!(pod_sandbox_id = %pod_id, error = %berth_error_kind::chain(&err), "the pod's shim is gone");
                for record in records.iter().filter(|r| r.state == ContainerRecordState::Creating) {
                    self.remove(&record.id).await?;
                }
                self.remove_unrecorded(pod_id, &records, &[]).await?;
                return self.shim_gone(pod_id).await;
            }
            Err(err) => return Err(err.into()),
        };
        let known = shim.api.clone().list(pb::Empty {}).await.map_err(shim.failed("List"))?.into_inner().containers;
        let known_ids: Vec<String> = known.iter().map(|s| s.id.clone()).collect();
        self.remove_unrecorded(pod_id, &records, &known_ids).await?;
        let pod_dir = self.layout.pod_dir(pod_id);
        for mut record in records {
            if record.state == ContainerRecordState::Creating {
                tracing::info!(container_id = %record.id, "undoing a container a crash left half made");
                self.remove(&record.id).await?;
                continue;
            }
            match known.iter().find(|s| s.id == record.id) {
                Some(state) if state.status == pb::Status::Exited as i32 => self.record_exit(pod_id, state)?,
                Some(state)
                    if state.status == pb::Status::Running as i32 && record.state == ContainerRecordState::Created =>
                {
                    record.state = ContainerRecordState::Running;
                    record.started_at_unix_nanos = state.started_at;
                    self.store.put(&record)?;
                }
                Some(_) => {}
                None if matches!(record.state, ContainerRecordState::Running | ContainerRecordState::Created) => {
                    // The shim does not know it (it restarted): the exit file, or unknown.
                    let state = match ExitRecord::load(&pod_dir, &record.id) {
                        Some(exit) => pb::ContainerState {
                            id: record.id.clone(),
                            status: pb::Status::Exited as i32,
                            exit_code: exit.exit_code,
                            finished_at: exit.finished_at_unix_nanos,
                            oom_killed: exit.oom_killed,
                            message: exit.message,
                            ..Default::default()
                        },
                        None => pb::ContainerState {
                            id: record.id.clone(),
                            status: pb::Status::Exited as i32,
                            exit_code: 255,
                            finished_at: now_nanos(),
                            message: "the pod's shim lost the container; its exit is unknown".into(),
                            ..Default::default()
                        },
                    };
                    self.record_exit(pod_id, &state)?;
                }
                None => {}
            }
        }
        self.watch(pod_id.to_owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(repo_digests: &[&str]) -> berth_image::ImageRecord {
        berth_image::ImageRecord {
            id: berth_image::digest::Digest::of(b"config"),
            repo_tags: Vec::new(),
            repo_digests: repo_digests.iter().map(|d| (*d).to_owned()).collect(),
            size: 0,
            manifest: berth_image::digest::Digest::of(b"manifest"),
            blobs: Vec::new(),
            chain_ids: Vec::new(),
            user: String::new(),
            pulled_at_unix_nanos: 0,
        }
    }

    fn spec(image: &str, user_specified: &str) -> cri::ImageSpec {
        cri::ImageSpec { image: image.into(), user_specified_image: user_specified.into(), ..Default::default() }
    }

    #[test]
    fn the_image_ref_is_the_digest_of_the_repository_the_user_named() {
        let both = image(&["example.com/a@sha256:aa", "docker.io/library/busybox@sha256:bb"]);
        let kubelet = spec("sha256:1234", "busybox:1.37");
        assert_eq!(repository_digest(&both, Some(&kubelet)), "docker.io/library/busybox@sha256:bb");
        assert_eq!(repository_digest(&both, Some(&spec("example.com/a:v1", ""))), "example.com/a@sha256:aa");
        // A name the image no longer carries: its first digest; an image without any: nothing.
        assert_eq!(repository_digest(&both, Some(&spec("sha256:1234", ""))), "example.com/a@sha256:aa");
        assert_eq!(repository_digest(&image(&[]), Some(&kubelet)), "");
    }

    #[test]
    fn status_shows_the_image_the_user_named_and_falls_back_to_the_image_id() {
        let mut record: ContainerRecord = serde_json::from_value(serde_json::json!({
            "id": "c1", "pod_id": "p1", "name": "web", "attempt": 0, "state": "Running", "request_hash": 0,
            "image": "sha256:1234", "image_id": "sha256:1234", "image_spec": [], "mounts": [], "resources": [],
            "labels": {}, "annotations": {}, "log_path": "", "uid": 0, "gid": 0,
            "supplemental_groups": [], "stop_signal": 15, "tty": false, "stdin": false, "stdin_once": false,
            "pid": 1, "created_at_unix_nanos": 1, "started_at_unix_nanos": 2, "finished_at_unix_nanos": 0,
            "exit_code": 0, "reason": "", "message": ""
        }))
        .expect("a record written before image_ref existed still reads");
        assert_eq!(image_ref_of(&record), "sha256:1234");
        record.image_spec = spec("sha256:1234", "registry.k8s.io/busybox:1.37").encode_to_vec();
        record.image_ref = "registry.k8s.io/busybox@sha256:bb".into();
        assert_eq!(shown_image(&record).image, "registry.k8s.io/busybox:1.37");
        assert_eq!(image_ref_of(&record), "registry.k8s.io/busybox@sha256:bb");
        record.image_spec = spec("busybox", "").encode_to_vec();
        assert_eq!(shown_image(&record).image, "busybox");
    }
}
