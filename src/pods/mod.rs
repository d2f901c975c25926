//! Pod sandboxes: pinned namespaces, CNI networking and the files every container of the pod shares.
//!
//! A sandbox has no process of its own (DESIGN.md, "Pod model"): its network, IPC and UTS namespaces are
//! pinned by bind mounts (`berth __pin`) under `<state>/pods/<id>/ns/`, CNI wires the network namespace,
//! and `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` are written under `<state>/pods/<id>/`.
//!
//! A pod with `hostUsers: false` (CRI `userns_options`, mode POD) also gets a user namespace with kubelet's
//! id maps, pinned as `ns/user` by the exec'd helper (a threaded daemon cannot unshare one), and its
//! network, IPC and UTS namespaces are made inside it, so the containers' root has capabilities over them
//! (mounting sysfs and mqueue needs that). Its containers join it (see `containers::spec`), their root
//! filesystems and volumes are idmapped through it (`berth_image::rootfs`, the runtime's `ridmap`), the
//! pod's `/etc` files and `/dev/shm` belong to its root, and a shared PID namespace is made inside it (so
//! such a pod pins its namespaces before its shim starts, instead of meanwhile).
//!
//! State on disk and in the database follows "intent before side effects, facts after": the record is
//! written as `Creating` before anything is made, and becomes `Ready` last. Every failure undoes what was
//! made (CNI DEL before the network namespace is unpinned, because plugins such as bridge find the rules
//! they must delete from inside it); Stop and Remove are idempotent and finish what a crash interrupted.

mod bandwidth;
pub mod userns;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_cni::{AttachRequest, AttachmentRef, Capabilities, Cni, CniOptions, DnsCapability, PodIdentity, PortMapping};
use berth_error_kind::{ErrorKind, Kinded};
use berth_runtime::pin::{PinRequest, PinnedKind, UserMappings};
use berth_store::Store;

use crate::config::Config;
use crate::layout::Layout;
use crate::records::{NodeSettings, PodRecord, PodState, new_id, now_nanos};
use crate::step_clock::StepClock;

/// CRI NamespaceMode numbers (api.proto `NamespaceMode`).
pub const MODE_POD: i32 = 0;
pub const MODE_NODE: i32 = 2;
pub const MODE_TARGET: i32 = 3;

/// Why a pod operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("invalid pod sandbox config: {0}")]
    Invalid(String),
    #[error("pod sandbox config: {0} is not supported")]
    Unsupported(String),
    #[error("pod sandbox {0} does not exist")]
    NotFound(String),
    #[error("pod sandbox {0} is not ready")]
    NotReady(String),
    #[error("the pod network is not ready: {0}")]
    NetworkNotReady(String),
    #[error("pod sandbox {pod}: {step}")]
    Step {
        pod: String,
        step: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Store(#[from] berth_store::StoreError),
}

impl Kinded for PodError {
    fn kind(&self) -> ErrorKind {
        match self {
            PodError::Invalid(_) => ErrorKind::InvalidArgument,
            PodError::Unsupported(_) => ErrorKind::Unimplemented,
            PodError::NotFound(_) => ErrorKind::NotFound,
            PodError::NotReady(_) => ErrorKind::FailedPrecondition,
            PodError::NetworkNotReady(_) => ErrorKind::FailedPrecondition,
            PodError::Step { source, .. } => crate::error::kind_of_step(source.as_ref()),
            PodError::Store(err) => err.kind(),
        }
    }
}

fn step<E: std::error::Error + Send + Sync + 'static>(pod: &str, step: &'static str) -> impl FnOnce(E) -> PodError {
    let pod = pod.to_owned();
    move |source| PodError::Step { pod, step, source: Box::new(source) }
}

/// What RunPodSandbox needs from the CRI request, in berth's own terms.
#[derive(Debug, Clone, Default)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub runtime_handler: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub network_mode: i32,
    pub pid_mode: i32,
    pub ipc_mode: i32,
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    pub dns: Option<DnsCapability>,
    pub port_mappings: Vec<PortMapping>,
    /// LinuxPodSandboxConfig.overhead and .resources, protobuf-encoded (recorded, not applied: kubelet
    /// manages pod cgroups).
    pub overhead: Vec<u8>,
    pub resources: Vec<u8>,
    /// The id maps of the pod's own user namespace (`hostUsers: false`), checked by `userns::mappings`;
    /// None = the host's.
    pub user_mappings: Option<UserMappings>,
}

impl PodError {
    /// A refused `userns_options` of the pod `pod` (its name, as kubelet gave it).
    pub fn userns(pod: &str, problem: userns::UsernsProblem) -> PodError {
        match problem {
            userns::UsernsProblem::Invalid(reason) => PodError::Invalid(format!("pod {pod:?}: {reason}")),
            userns::UsernsProblem::Unsupported(reason) => PodError::Unsupported(format!("pod {pod:?}: {reason}")),
        }
    }
}

/// Owns every pod's lifecycle. Mutations of one pod are serialized by that pod's lock (creations by the
/// lock of the name kubelet reserves); different pods are made and removed in parallel, since nothing
/// they touch is shared (CNI plugins lock their own state).
pub struct PodManager {
    layout: Layout,
    store: Arc<Store>,
    init_binary: PathBuf,
    /// The systemd cgroup driver: shims live in scopes systemd makes.
    systemd_cgroup: bool,
    cni: Cni,
    /// The CNI configuration directory, re-read only when it changes (Status asks every few seconds).
    network: std::sync::Mutex<berth_cni::ConfigWatcher>,
    /// Per-object locks: a pod id, or `run:` + the reserved name for a RunPodSandbox in progress.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for PodManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodManager").finish_non_exhaustive()
    }
}

/// Sysctls a pod may set: those namespaced by the network or IPC namespace it gets (kubelet's "safe" and
/// "unsafe" namespaced sets); anything else would change the whole node.
fn check_sysctl(key: &str, has_netns: bool, has_ipcns: bool) -> Result<(), PodError> {
    let ipc = key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue.");
    let net = key.starts_with("net.");
    match (net, ipc) {
        (true, _) if has_netns => Ok(()),
        (_, true) if has_ipcns => Ok(()),
        (true, _) => {
            Err(PodError::Invalid(format!("sysctl {key:?} needs the pod's own network namespace (not hostNetwork)")))
        }
        (_, true) => Err(PodError::Invalid(format!("sysctl {key:?} needs the pod's own IPC namespace (not hostIPC)"))),
        _ => Err(PodError::Invalid(format!(
            "sysctl {key:?} is not namespaced; pods may only set net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.*"
        ))),
    }
}

/// The pod's hostname: kubelet always sends one; other clients (critest, crictl files) may not, and then
/// it is the node's, as with containerd (the pod name could be longer than the 64 bytes a hostname holds).
fn effective_hostname(asked: &str) -> String {
    if asked.is_empty() {
        nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
    } else {
        asked.to_owned()
    }
}

impl PodManager {
    pub fn new(config: &Config, layout: &Layout, store: Arc<Store>) -> PodManager {
        let cni = Cni::new(CniOptions {
            bin_dirs: config.cni.bin_dirs.iter().map(|d| d.to_path_buf()).collect(),
            cache_dir: layout.root.join("cni"),
            plugin_timeout: Duration::from_secs(60),
            native: config.cni.native.into(),
        })
        .with_observer(Arc::new(crate::metrics::CniCallMetrics));
        PodManager {
            layout: layout.clone(),
            store,
            init_binary: PathBuf::from("/proc/self/exe"),
            systemd_cgroup: config.cgroup.driver == crate::config::CgroupDriver::Systemd,
            cni,
            network: std::sync::Mutex::new(berth_cni::ConfigWatcher::new(config.cni.conf_dir.as_path())),
            locks: Default::default(),
        }
    }

    pub fn pod_dir(&self, id: &str) -> PathBuf {
        self.layout.pod_dir(id)
    }

    /// Creates the sandbox, or returns the existing one kubelet already asked for (a retry after its
    /// timeout gets the sandbox, not "name is reserved").
    pub async fn run(self: &Arc<Self>, spec: PodSpec) -> Result<String, PodError> {
        for (field, value) in
            [("metadata.name", &spec.name), ("metadata.namespace", &spec.namespace), ("metadata.uid", &spec.uid)]
        {
            if value.is_empty() {
                return Err(PodError::Invalid(format!("{field} is empty")));
            }
        }
        let has_netns = spec.network_mode != MODE_NODE;
        let has_ipcns = spec.ipc_mode != MODE_NODE;
        for key in spec.sysctls.keys() {
            check_sysctl(key, has_netns, has_ipcns)?;
        }
        bandwidth::from_annotations(&spec.annotations).map_err(PodError::Invalid)?;
        let key = format!("run:{}/{}/{}/{}", spec.namespace, spec.name, spec.uid, spec.attempt);
        let mut clock = StepClock::start();
        let result = self
            .exclusive(key.clone(), move |manager| {
                clock.lap("queue");
                manager.run_blocking(spec, clock)
            })
            .await;
        self.forget_lock(&key);
        result
    }

    /// The lock of `key`, made on first use.
    fn lock_of(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(self.locks.lock().expect("pod locks").entry(key.to_owned()).or_default())
    }

    /// Drops the lock of an object that is gone, unless someone else still holds or waits for it.
    fn forget_lock(&self, key: &str) {
        let mut locks = self.locks.lock().expect("pod locks");
        if locks.get(key).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            locks.remove(key);
        }
    }

    /// The full id of the pod `id` names (an id or a unique prefix), for its lock.
    async fn resolve(self: &Arc<Self>, id: &str) -> Result<Option<String>, PodError> {
        let manager = Arc::clone(self);
        let id = id.to_owned();
        tokio::task::spawn_blocking(move || Ok(manager.find(&id)?.map(|record| record.id))).await.map_err(|join| {
            PodError::Step { pod: String::new(), step: "look up the sandbox", source: Box::new(join) }
        })?
    }

    /// Runs `work` on a blocking thread (it spawns helpers and plugins and waits for them) while holding
    /// the lock of `key`. The lock travels with the work: a request whose caller gave up (kubelet's
    /// timeout) still finishes under the lock, so the retry finds its result instead of racing it.
    async fn exclusive<T: Send + 'static>(
        self: &Arc<Self>,
        key: String,
        work: impl FnOnce(&PodManager) -> Result<T, PodError> + Send + 'static,
    ) -> Result<T, PodError> {
        let guard = self.lock_of(&key).lock_owned().await;
        let manager = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            work(&manager)
        })
        .await
        .map_err(|join| PodError::Step {
            pod: String::new(),
            step: "run the sandbox worker",
            source: Box::new(join),
        })?
    }

    fn run_blocking(&self, spec: PodSpec, mut clock: StepClock) -> Result<String, PodError> {
        let existing = self.store.list::<PodRecord>()?;
        let wanted = (spec.name.clone(), spec.namespace.clone(), spec.uid.clone(), spec.attempt);
        if let Some(pod) = existing.iter().find(|p| p.reservation() == wanted && p.state == PodState::Ready) {
            tracing::info!(pod_sandbox_id = %pod.id, "RunPodSandbox repeated for a ready sandbox; returning it");
            return Ok(pod.id.clone());
        }
        if spec.user_mappings.is_some() {
            check_user_namespace_modes(&spec)?;
            match userns::make_searchable(&self.layout.state) {
                Ok(changed) if !changed.is_empty() => tracing::info!(
                    directories = ?changed,
                    "added search permission for others (o+x) so user-namespaced containers reach the state directory"
                ),
                Ok(_) => {}
                Err(err) => tracing::warn!(
                    error = %err,
                    state = %self.layout.state.display(),
                    "cannot make the state directory searchable; user-namespaced containers may fail to start"
                ),
            }
        }
        let id = new_id().map_err(step("", "generate an id"))?;
        let has_netns = spec.network_mode != MODE_NODE;
        let has_ipcns = spec.ipc_mode != MODE_NODE;
        let dir = self.pod_dir(&id);
        let ns_dir = dir.join("ns");
        let mut record = PodRecord {
            id: id.clone(),
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            uid: spec.uid.clone(),
            attempt: spec.attempt,
            state: PodState::Creating,
            created_at_unix_nanos: now_nanos(),
            hostname: effective_hostname(&spec.hostname),
            log_directory: spec.log_directory.clone(),
            runtime_handler: spec.runtime_handler.clone(),
            labels: spec.labels.clone(),
            annotations: spec.annotations.clone(),
            network_mode: spec.network_mode,
            pid_mode: spec.pid_mode,
            ipc_mode: spec.ipc_mode,
            cgroup_parent: spec.cgroup_parent.clone(),
            netns: has_netns.then(|| ns_dir.join("net")),
            ipcns: has_ipcns.then(|| ns_dir.join("ipc")),
            // kubelet gives host-network pods the node's UTS namespace (and hostname).
            utsns: has_netns.then(|| ns_dir.join("uts")),
            ips: Vec::new(),
            network: None,
            overhead: spec.overhead.clone(),
            resources: spec.resources.clone(),
            userns: spec.user_mappings.is_some().then(|| ns_dir.join(berth_runtime::pin::USER_NAMESPACE_FILE)),
            user_mappings: spec.user_mappings.clone(),
        };
        clock.lap("lookup");
        // Intent first, provisionally: RunPodSandbox writes one record durably, the outcome below. A crash
        // from here on leaves this record (when a durable write of any record followed it) or the pod's
        // directory and cached CNI attachment, which start-up undoes by the pod's id alone (`recover`).
        self.store.put_provisionally(&record)?;
        clock.lap("intent");
        crate::failpoints::crash_point!("run-pod-sandbox-after-intent");
        match self.make(&spec, &mut record, &dir, &mut clock) {
            Ok(plugins) => {
                crate::failpoints::crash_point!("run-pod-sandbox-before-ready");
                record.state = PodState::Ready;
                self.store.put(&record)?;
                clock.lap("ready");
                let plugins_ms = plugins.as_secs_f64() * 1000.0;
                tracing::debug!(pod_sandbox_id = %id, steps = %clock, plugins_ms, "pod sandbox steps");
                tracing::info!(pod_sandbox_id = %id, pod = %spec.name, namespace = %spec.namespace, ips = ?record.ips, "pod sandbox ready");
                Ok(id)
            }
            Err(err) => {
                // A DEL that fails here keeps only the netns and the cached attachment, for start-up to
                // retry; the record goes either way, since kubelet never learnt this id.
                if let Err(cleanup) = self.teardown(&record, &mut StepClock::start()) {
                    tracing::warn!(pod_sandbox_id = %id, error = %berth_error_kind::chain(&cleanup), "undoing a failed RunPodSandbox failed; Remove will retry");
                    return Err(err);
                }
                self.store.delete::<PodRecord>(&id)?;
                Err(err)
            }
        }
    }

    /// Every side effect of RunPodSandbox. A thread starts the shim (its exec, and its cgroup, see
    /// `shim::launch`) while this one pins the namespaces and wires the network (none needs the other);
    /// the shim is waited for last. Returns the time spent inside the CNI plugins.
    fn make(
        &self,
        spec: &PodSpec,
        record: &mut PodRecord,
        dir: &Path,
        clock: &mut StepClock,
    ) -> Result<Duration, PodError> {
        let id = record.id.clone();
        std::fs::create_dir_all(dir).map_err(step(&id, "create the pod directory"))?;
        if record.user_mappings.is_some() {
            // The shim's PID-namespace holder joins the pod's user namespace, so it must exist first.
            self.pin_namespaces(spec, record, dir)?;
            clock.lap("pin");
            let shim = self.start_shim(spec, &id, dir)?;
            clock.lap("shim_spawn");
            let result = self.make_files_and_network(spec, record, dir, clock);
            return Self::finish_with_shim(&id, result, Ok(shim), clock);
        }
        std::thread::scope(|scope| {
            let starting = scope.spawn(|| self.start_shim(spec, &id, dir));
            let pinned = self.pin_namespaces(spec, record, dir);
            clock.lap("pin");
            let result = pinned.and_then(|()| self.make_files_and_network(spec, record, dir, clock));
            let shim = starting.join().unwrap_or_else(|_| {
                Err(step(&id, "start the pod's shim")(std::io::Error::other("the thread starting it panicked")))
            });
            Self::finish_with_shim(&id, result, shim, clock)
        })
    }

    /// Waits for the shim even after a failure (so teardown finds it in its cgroup, and kills it), then
    /// returns the first error, or the time spent inside the CNI plugins.
    fn finish_with_shim(
        id: &str,
        result: Result<Duration, PodError>,
        shim: Result<crate::shim::launch::Launching, PodError>,
        clock: &mut StepClock,
    ) -> Result<Duration, PodError> {
        let ready = shim.and_then(|shim| shim.wait_ready().map_err(step(id, "start the pod's shim")));
        clock.lap("shim_wait");
        let plugins = result?;
        ready?;
        Ok(plugins)
    }

    fn start_shim(&self, spec: &PodSpec, id: &str, dir: &Path) -> Result<crate::shim::launch::Launching, PodError> {
        crate::shim::launch::start(
            &self.init_binary,
            id,
            dir,
            &self.layout.runtime_state(),
            spec.pid_mode == MODE_POD,
            self.systemd_cgroup,
        )
        .map_err(step(id, "start the pod's shim"))
    }

    /// The pod's `/etc/hostname`, `/etc/resolv.conf` and `/dev/shm`, then the network (CNI ADD), then
    /// `/etc/hosts`, which lists the pod's IPs. Returns the time spent inside the CNI plugins.
    fn make_files_and_network(
        &self,
        spec: &PodSpec,
        record: &mut PodRecord,
        dir: &Path,
        clock: &mut StepClock,
    ) -> Result<Duration, PodError> {
        let id = record.id.clone();
        // The pod's root may edit its files, as it could without a user namespace.
        let owner = record.user_mappings.as_ref().and_then(UserMappings::root);
        let hostname = etc_hostname(spec, &record.hostname);
        let resolv = resolv_conf(spec.dns.as_ref());
        for (name, content) in [("hostname", format!("{hostname}\n")), ("resolv.conf", resolv)] {
            write_pod_file(&dir.join(name), &content, owner).map_err(step(&id, "write the pod's /etc files"))?;
        }
        if record.ipcns.is_some() {
            mount_shm(&dir.join("shm"), owner).map_err(step(&id, "mount the pod's /dev/shm"))?;
        }
        clock.lap("files_and_shm");
        let mut plugins = Duration::ZERO;
        if let Some(netns) = &record.netns {
            let network = self.network().map_err(PodError::NetworkNotReady)?;
            let pod_cidr = self.store.get::<NodeSettings>("settings")?.map(|s| s.pod_cidr).filter(|c| !c.is_empty());
            let request = AttachRequest {
                container_id: id.clone(),
                netns: netns.clone(),
                ifname: "eth0".into(),
                pod: PodIdentity { namespace: spec.namespace.clone(), name: spec.name.clone(), uid: spec.uid.clone() },
                capabilities: Capabilities {
                    port_mappings: spec.port_mappings.clone(),
                    dns: spec.dns.clone(),
                    bandwidth: bandwidth::from_annotations(&spec.annotations).map_err(PodError::Invalid)?,
                    ..Default::default()
                },
                pod_cidr,
            };
            // No record write here: CNI's cache entry (written before the first plugin runs) is the intent
            // DEL works from, found by the pod id alone.
            record.network = Some(network.name.clone());
            let started = std::time::Instant::now();
            let attached = self.cni.add(&network, &request);
            crate::metrics::global().cni_operation(berth_cni::Command::Add, attached.is_ok(), started.elapsed());
            let attached = attached.map_err(step(&id, "attach the pod network (CNI ADD)"))?;
            plugins = attached.timings.in_plugins;
            record.ips = attached.result.pod_ips("eth0").iter().map(|ip| ip.to_string()).collect();
            clock.lap("cni");
            crate::failpoints::crash_point!("run-pod-sandbox-after-cni-add");
        }
        let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for ip in &record.ips {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        }
        write_pod_file(&dir.join("hosts"), &hosts, owner).map_err(step(&id, "write the pod's /etc/hosts"))?;
        clock.lap("hosts");
        Ok(plugins)
    }

    /// Pins the pod's namespaces (net, IPC, UTS; user first and owning them when it has its own).
    fn pin_namespaces(&self, spec: &PodSpec, record: &PodRecord, dir: &Path) -> Result<(), PodError> {
        let id = record.id.clone();
        let hostname = record.hostname.clone();
        let mut kinds = Vec::new();
        if record.netns.is_some() {
            kinds.extend([PinnedKind::Net, PinnedKind::Uts]);
        }
        if record.ipcns.is_some() {
            kinds.push(PinnedKind::Ipc);
        }
        if !kinds.is_empty() {
            let request = PinRequest {
                dir: dir.join("ns"),
                kinds,
                hostname: record.utsns.is_some().then(|| hostname.clone()),
                sysctls: spec.sysctls.clone(),
                user: record.user_mappings.clone(),
            };
            if request.user.is_some() {
                // unshare(CLONE_NEWUSER) is refused to a multi-threaded process: the exec'd helper makes it.
                berth_runtime::pin::pin(&self.init_binary, &request)
                    .map_err(step(&id, "pin the pod's namespaces (with its user namespace)"))?;
            } else {
                berth_runtime::pin::pin_in_thread(&request).map_err(step(&id, "pin the pod's namespaces"))?;
            }
        }
        Ok(())
    }

    /// CNI DEL of the pod's attachment, from the cached result (idempotent).
    fn release_network(&self, record: &PodRecord) -> Result<(), PodError> {
        // A pod with its own netns may have been attached even if its record never said so (a crash
        // between ADD and the record); DEL of an attachment that was never cached is a cheap no-op.
        if record.network.is_some() || record.netns.is_some() {
            self.release_attachment(&record.id, record.netns.clone())?;
        }
        Ok(())
    }

    /// CNI DEL of whatever is cached for `id` (a no-op when nothing is).
    fn release_attachment(&self, id: &str, netns: Option<PathBuf>) -> Result<(), PodError> {
        let attachment = AttachmentRef { container_id: id.to_owned(), ifname: "eth0".into(), netns };
        let started = std::time::Instant::now();
        let detached = self.cni.del(&attachment, None);
        // A DEL with nothing cached ran no plugin (hostNetwork pods, repeated Stop/Remove): not a CNI call.
        if !detached.as_ref().is_ok_and(|d| d.networks.is_empty()) {
            crate::metrics::global().cni_operation(berth_cni::Command::Del, detached.is_ok(), started.elapsed());
        }
        detached.map_err(step(id, "release the pod network (CNI DEL)"))?;
        Ok(())
    }

    /// Releases the network and unpins the namespaces: the reverse of `make`, tolerant of half-made pods.
    ///
    /// A DEL that fails does not fail the teardown (a pod must always be removable): the shim and /dev/shm
    /// go, but the pinned namespaces and the pod directory stay, with the cached attachment, until a DEL
    /// succeeds — bridge deletes its masquerade rules by the addresses it finds inside the netns, so
    /// unpinning first would leak them. Daemon start-up retries (`recover`).
    fn teardown(&self, record: &PodRecord, clock: &mut StepClock) -> Result<Teardown, PodError> {
        let network = self.release_network(record);
        clock.lap("cni_del");
        self.teardown_after_del(&record.id, network, clock)
    }

    fn teardown_after_del(
        &self,
        id: &str,
        network: Result<(), PodError>,
        clock: &mut StepClock,
    ) -> Result<Teardown, PodError> {
        let dir = self.pod_dir(id);
        crate::failpoints::crash_point!("pod-teardown-after-cni-del");
        // Whatever is left of the shim (normally gone after Shutdown; one killed with -9 may have left its
        // PID-namespace holder) is killed with its cgroup, frozen so nothing forks away.
        crate::shim::cgroup(id, self.systemd_cgroup)
            .and_then(|cgroup| cgroup.delete())
            .map_err(step(id, "stop the pod's shim"))?;
        clock.lap("shim_cgroup");
        unmount(&dir.join("shm")).map_err(step(id, "unmount the pod's /dev/shm"))?;
        clock.lap("shm");
        if let Err(err) = network {
            tracing::warn!(
                pod_sandbox_id = %id,
                error = %berth_error_kind::chain(&err),
                "CNI DEL failed; the pod's network namespace stays pinned and its attachment cached until a DEL \
                 succeeds (retried on Remove and at daemon start-up)"
            );
            return Ok(Teardown::NetworkKept);
        }
        berth_runtime::pin::unpin(&dir.join("ns")).map_err(step(id, "unpin the pod's namespaces"))?;
        clock.lap("unpin");
        let removed = match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(Teardown::Done),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Teardown::Done),
            Err(err) => Err(step(id, "remove the pod directory")(err)),
        };
        clock.lap("directory");
        removed
    }

    /// Stops the sandbox (its containers were stopped first): marks it NotReady, then releases its network.
    /// Idempotent; a missing sandbox is not an error (CRI).
    ///
    /// A failed DEL does not fail Stop: the pod is NotReady first, so kubelet can go on to remove it instead
    /// of keeping it Terminating while a plugin fails; the cached attachment is kept and DEL is retried on
    /// Remove and at daemon start-up.
    pub async fn stop(self: &Arc<Self>, id: String) -> Result<(), PodError> {
        let Some(id) = self.resolve(&id).await? else { return Ok(()) };
        self.exclusive(id.clone(), move |manager| {
            let Some(mut record) = manager.find(&id)? else { return Ok(()) };
            if record.state != PodState::NotReady {
                record.state = PodState::NotReady;
                manager.store.put(&record)?;
            }
            crate::failpoints::crash_point!("stop-pod-sandbox-after-not-ready");
            if let Err(err) = manager.release_network(&record) {
                tracing::warn!(
                    pod_sandbox_id = %record.id,
                    error = %berth_error_kind::chain(&err),
                    "CNI DEL failed at StopPodSandbox; retried on Remove and at daemon start-up"
                );
            }
            Ok(())
        })
        .await
    }

    /// Removes everything the sandbox had. Idempotent; a missing sandbox is not an error (CRI). A failing
    /// DEL never makes a pod unremovable (see `teardown`).
    pub async fn remove(self: &Arc<Self>, id: String) -> Result<(), PodError> {
        let Some(id) = self.resolve(&id).await? else { return Ok(()) };
        let key = id.clone();
        let result = self
            .exclusive(key.clone(), move |manager| {
                let mut clock = StepClock::start();
                let Some(record) = manager.find(&id)? else { return Ok(()) };
                clock.lap("lookup");
                let outcome = manager.teardown(&record, &mut clock)?;
                crate::failpoints::crash_point!("remove-pod-sandbox-before-forget");
                manager.store.delete::<PodRecord>(&record.id)?;
                clock.lap("record");
                tracing::info!(pod_sandbox_id = %record.id, network_kept = outcome == Teardown::NetworkKept, "pod sandbox removed");
                tracing::debug!(pod_sandbox_id = %record.id, steps = %clock, "pod sandbox removal steps");
                Ok(())
            })
            .await;
        self.forget_lock(&key);
        result
    }

    /// UpdatePodSandboxResources: kubelet writes the pod's cgroup itself; the runtime records what it was
    /// told (overhead and resources, protobuf-encoded) so status and debugging can show it.
    pub async fn update_resources(
        self: &Arc<Self>,
        id: &str,
        overhead: Option<crate::cri::v1::LinuxContainerResources>,
        resources: Option<crate::cri::v1::LinuxContainerResources>,
    ) -> Result<(), PodError> {
        use prost::Message;
        let id = self.resolve(id).await?.ok_or_else(|| PodError::NotFound(id.to_owned()))?;
        self.exclusive(id.clone(), move |manager| {
            let mut record = manager.find(&id)?.ok_or_else(|| PodError::NotFound(id.clone()))?;
            record.overhead = overhead.map(|o| o.encode_to_vec()).unwrap_or_default();
            record.resources = resources.map(|r| r.encode_to_vec()).unwrap_or_default();
            manager.store.put(&record)?;
            Ok(())
        })
        .await
    }

    /// Finishes what a crash or a failing plugin left, before the daemon serves. It assumes:
    /// - a sandbox still `Creating` was never answered to kubelet, so it is undone (CNI DEL, unpin, files,
    ///   record), exactly as a failed RunPodSandbox would have been;
    /// - a `NotReady` sandbox with a cached CNI attachment is one whose DEL failed at Stop: DEL is retried;
    /// - a cached attachment or a pod directory without a record belongs to a sandbox removed while its DEL
    ///   failed: DEL is retried with its still-pinned netns, then the namespaces and the directory go.
    ///
    /// Nothing here stops the daemon from starting: a failure is logged, and the next start-up (or, for
    /// sandboxes still recorded, Remove) retries. Ready sandboxes are kept as they are.
    pub fn recover(&self) -> Result<usize, PodError> {
        let mut undone = 0;
        let cache_dir = &self.cni.options().cache_dir;
        let cached = berth_cni::cached_container_ids(cache_dir).unwrap_or_else(|err| {
            tracing::warn!(path = %cache_dir.display(), error = %err, "cannot list the CNI result cache");
            Vec::new()
        });
        let mut recorded = std::collections::HashSet::new();
        for mut record in self.store.list::<PodRecord>()? {
            match record.state {
                PodState::Creating => {
                    tracing::info!(pod_sandbox_id = %record.id, "undoing a sandbox a crash left half made");
                    match self.teardown(&record, &mut StepClock::start()) {
                        Ok(_) => {
                            self.store.delete::<PodRecord>(&record.id)?;
                            undone += 1;
                            continue;
                        }
                        Err(err) => {
                            // Listed as stopped, so kubelet removes it (and Remove retries).
                            tracing::warn!(pod_sandbox_id = %record.id, error = %berth_error_kind::chain(&err), "undoing a half-made sandbox failed; it is kept as NotReady");
                            record.state = PodState::NotReady;
                            self.store.put(&record)?;
                        }
                    }
                }
                PodState::NotReady if cached.contains(&record.id) => {
                    tracing::info!(pod_sandbox_id = %record.id, "retrying the CNI DEL of a stopped sandbox");
                    if let Err(err) = self.release_network(&record) {
                        tracing::warn!(pod_sandbox_id = %record.id, error = %berth_error_kind::chain(&err), "CNI DEL failed again; retried on Remove and at the next start-up");
                    }
                }
                _ => {}
            }
            recorded.insert(record.id);
        }
        let pods_dir = self.layout.state.join("pods");
        let mut leftovers: Vec<String> = std::fs::read_dir(&pods_dir)
            .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        leftovers.extend(cached);
        leftovers.sort();
        leftovers.dedup();
        for id in leftovers.into_iter().filter(|id| !recorded.contains(id) && is_pod_id(id)) {
            tracing::info!(pod_sandbox_id = %id, "retrying the cleanup of a removed sandbox");
            let netns = self.pod_dir(&id).join("ns").join("net");
            let network = self.release_attachment(&id, Some(netns));
            match self.teardown_after_del(&id, network, &mut StepClock::start()) {
                Ok(Teardown::Done) => undone += 1,
                Ok(Teardown::NetworkKept) => {}
                Err(err) => {
                    tracing::warn!(pod_sandbox_id = %id, error = %berth_error_kind::chain(&err), "cleaning up a removed sandbox failed; retried at the next start-up");
                }
            }
        }
        Ok(undone)
    }

    /// How `network`'s chain runs: in process, or by executing the plugin binaries (Status shows it).
    pub fn chain_path(&self, network: &berth_cni::NetworkConfig) -> berth_cni::ChainPath {
        self.cni.chain_path(&network.list)
    }

    /// The network pods are wired into, or why there is none (the NetworkReady condition's message).
    pub fn network(&self) -> Result<berth_cni::NetworkConfig, String> {
        let mut watcher = self.network.lock().expect("network watcher lock");
        match watcher.poll() {
            Ok(network) => Ok(network.clone()),
            Err(err) => Err(berth_error_kind::chain(err)),
        }
    }

    /// The sandbox with this id, or the only one whose id starts with it (crictl accepts prefixes).
    pub fn find(&self, id: &str) -> Result<Option<PodRecord>, PodError> {
        if id.is_empty() {
            return Ok(None);
        }
        if let Some(record) = self.store.get::<PodRecord>(id)? {
            return Ok(Some(record));
        }
        let matching: Vec<PodRecord> =
            self.store.list::<PodRecord>()?.into_iter().filter(|p| p.id.starts_with(id)).collect();
        Ok(if matching.len() == 1 { matching.into_iter().next() } else { None })
    }

    pub fn list(&self) -> Result<Vec<PodRecord>, PodError> {
        Ok(self.store.list::<PodRecord>()?)
    }
}

/// What a teardown did: everything, or everything but the network, whose DEL failed (see
/// `PodManager::teardown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Teardown {
    Done,
    NetworkKept,
}

/// A sandbox id as `new_id` makes them (64 lowercase hex digits): only such directories and cache entries
/// are treated as pods'.
fn is_pod_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pod's /dev/shm: one tmpfs its containers share (bind-mounted into each), 64 MiB like Docker's and
/// containerd's default; `owner` (the root of the pod's user namespace) owns its root directory.
/// The pod's hostname as its `/etc/hostname` and `/etc/hosts` give it: the node's for a host-network pod.
fn etc_hostname(spec: &PodSpec, hostname: &str) -> String {
    if spec.network_mode == MODE_NODE {
        return nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    }
    hostname.to_owned()
}

/// The pod's `/etc/resolv.conf`: from its DNSConfig, or the node's own when it has none (hostNetwork, or
/// kubelet's "Default" policy).
fn resolv_conf(dns: Option<&DnsCapability>) -> String {
    match dns {
        Some(dns) if !dns.servers.is_empty() || !dns.searches.is_empty() || !dns.options.is_empty() => {
            let mut text = String::new();
            if !dns.searches.is_empty() {
                text.push_str(&format!("search {}\n", dns.searches.join(" ")));
            }
            for server in &dns.servers {
                text.push_str(&format!("nameserver {server}\n"));
            }
            if !dns.options.is_empty() {
                text.push_str(&format!("options {}\n", dns.options.join(" ")));
            }
            text
        }
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    }
}

/// Writes one of the pod's `/etc` files, owned by `owner` (the root of the pod's user namespace) if given.
fn write_pod_file(path: &Path, content: &str, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    std::fs::write(path, content)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

fn mount_shm(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    use nix::mount::MsFlags;
    std::fs::create_dir_all(path)?;
    let mut options = String::from("mode=1777,size=65536k");
    if let Some((uid, gid)) = owner {
        options.push_str(&format!(",uid={uid},gid={gid}"));
    }
    nix::mount::mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(options.as_str()),
    )
    .map_err(std::io::Error::from)
}

/// A pod with its own user namespace must have its own network, IPC and PID namespaces made inside it
/// (Kubernetes refuses `hostUsers: false` with hostNetwork, hostIPC or hostPID too).
fn check_user_namespace_modes(spec: &PodSpec) -> Result<(), PodError> {
    for (what, mode) in [("network", spec.network_mode), ("IPC", spec.ipc_mode), ("PID", spec.pid_mode)] {
        if mode == MODE_NODE {
            return Err(PodError::Invalid(format!(
                "pod {:?}: a pod with its own user namespace cannot use the host's {what} namespace",
                spec.name
            )));
        }
    }
    Ok(())
}

/// Unmounts `path` if it is mounted (idempotent).
fn unmount(path: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::check_sysctl;

    #[test]
    fn only_namespaced_sysctls_are_accepted() {
        assert!(check_sysctl("net.ipv4.ip_forward", true, true).is_ok());
        assert!(check_sysctl("kernel.shm_rmid_forced", true, true).is_ok());
        assert!(check_sysctl("net.ipv4.ip_forward", false, true).is_err());
        assert!(check_sysctl("kernel.msgmax", true, false).is_err());
        let err = check_sysctl("kernel.panic", true, true).unwrap_err().to_string();
        assert!(err.contains("not namespaced"), "{err}");
    }
}
