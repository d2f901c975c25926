//! The OCI runtime spec of a CRI container: `ContainerConfig` + the pod's facts + the image config in, an
//! `oci_spec::runtime::Spec` out. Writing the bundle, creating the container and recording it are the
//! container manager's; this module only decides what the spec says.
//!
//! The reference is what containerd's CRI plugin produces (kubelet and critest are written against it);
//! where berth differs, the function that decides says why. Deliberate differences, in one place:
//! - Container-level sysctls do not exist in CRI v1; the pod's are applied to its pinned namespaces when the
//!   pod is created, so `linux.sysctl` stays empty.
//! - `RLIMIT_NOFILE` is set explicitly to 1048576 (soft and hard), the limit containerd 1.x containers got
//!   from its systemd unit, rather than inherited from whatever started the shim.
//! - Image `VOLUME`s are ignored (containerd's default, `ignore_image_defined_volumes`-like behaviour).
//! - Missing host paths of CRI mounts are created (as directories) by [`build`] itself, as containerd does
//!   while generating the spec; symlinks in host paths are resolved, so the spec names the real source.
//! - User namespaces: mode POD only (`hostUsers: false`), joined from the pod's pinned one (and a shared PID
//!   namespace is made inside it); mode TARGET and CONTAINER are refused as unsupported. The
//!   root filesystem's layers are idmapped, never chowned (containerd 2 does the same with its overlay
//!   snapshotter). Every CRI mount of such a pod is idmapped through the pod's user namespace (`ridmap`,
//!   made by the runtime before it joins the namespace), as containerd 2 with runc 1.2 does: a volume on a
//!   filesystem that cannot be idmapped (before Linux 6.3, tmpfs) fails CreateContainer naming the mount.
//!   A CRI mount's own `uidMappings`/`gidMappings` are accepted only when they are the pod's.
//! - Image volumes (`Mount.image`) are bound read-only from where CreateContainer mounted them
//!   (`berth_image::image_volume`); CDI devices' edits are applied last (`cdi.rs`).
//! - Propagation `rshared`/`rslave` is not checked against the host mount's own propagation (containerd
//!   refuses a bidirectional mount of a private host path); the mount is made and simply does not propagate.

mod cdi;
mod devices;
pub(crate) mod mounts;
mod seccomp;
mod security;
mod signal;
mod user;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_error_kind::{ErrorKind, Kinded};
use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxIdMappingBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResources, LinuxResourcesBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

pub use crate::config::CgroupDriver;
use crate::cri::v1 as cri;
use crate::pods::{MODE_NODE, MODE_POD, MODE_TARGET};
use crate::records::PodRecord;

/// The pod's facts a container needs.
pub struct PodContext<'a> {
    pub record: &'a PodRecord,
    /// The sandbox config kubelet sends with CreateContainer (security context, ...); may be None.
    pub config: Option<&'a cri::PodSandboxConfig>,
    /// Directory holding the pod's `hostname`, `hosts` and `resolv.conf`. They are bind-mounted read-write,
    /// or read-only when the container's root filesystem is read-only (containerd does the same).
    pub etc_dir: &'a Path,
    /// The pod's /dev/shm directory to bind at /dev/shm, or None when the pod uses the host IPC namespace
    /// (then the host's /dev/shm is bound).
    pub shm: Option<&'a Path>,
    /// The PID namespace to join: Some(path) for NamespaceMode POD (the shim's holder) and TARGET (the target
    /// container's /proc/<pid>/ns/pid); None = a new PID namespace (CONTAINER), or the host's when the
    /// container's or the pod's PID mode is NODE.
    pub pid_namespace: Option<PathBuf>,
}

pub struct SpecRequest<'a> {
    /// 64 hex characters.
    pub container_id: &'a str,
    pub config: &'a cri::ContainerConfig,
    pub pod: PodContext<'a>,
    pub image: &'a berth_image::manifest::ImageConfig,
    /// The mounted container rootfs (absolute); `root.path` of the spec. Its /etc/passwd and /etc/group are
    /// read with every symlink resolved inside it (untrusted image content).
    pub rootfs: &'a Path,
    pub cgroup_driver: CgroupDriver,
    /// Directory relative Localhost seccomp profiles are resolved against (kubelet sends absolute paths).
    pub seccomp_root: &'a Path,
    /// The host path each image volume of `config.mounts` (by index) is mounted at, with its sub path.
    pub image_volumes: &'a std::collections::BTreeMap<usize, PathBuf>,
    /// The edits of the CDI devices the container asked for, resolved ([`crate::cdi::Registry`]).
    pub cdi: &'a [crate::cdi::ContainerEdits],
}

#[derive(Debug)]
pub struct BuiltSpec {
    pub spec: Spec,
    /// The user the process runs as, as `ContainerStatus.user` reports it.
    pub uid: u32,
    pub gid: u32,
    /// Every group of the process (the primary gid first, as containerd reports them).
    pub supplemental_groups: Vec<u32>,
    /// The signal StopContainer sends first: `ContainerConfig.stop_signal`, else the image's `StopSignal`,
    /// else SIGTERM.
    pub stop_signal: i32,
}

/// Why a container's spec could not be built. Messages name the container and the field or path.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("container {container_id}: {reason}")]
    Invalid { container_id: String, reason: String },
    #[error("container {container_id}: {reason}")]
    NotFound { container_id: String, reason: String },
    #[error("container {container_id}: {reason} is not supported")]
    Unsupported { container_id: String, reason: String },
    #[error("container {container_id}: {step} {path}")]
    Io {
        container_id: String,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container {container_id}: assemble the OCI spec")]
    Oci {
        container_id: String,
        #[source]
        source: oci_spec::OciSpecError,
    },
}

impl Kinded for SpecError {
    fn kind(&self) -> ErrorKind {
        match self {
            SpecError::Invalid { .. } => ErrorKind::InvalidArgument,
            SpecError::NotFound { .. } => ErrorKind::NotFound,
            SpecError::Unsupported { .. } => ErrorKind::Unimplemented,
            SpecError::Io { .. } | SpecError::Oci { .. } => ErrorKind::Internal,
        }
    }
}

/// A failure inside the spec's submodules, before the container id is attached.
#[derive(Debug)]
pub(crate) enum Problem {
    Invalid(String),
    NotFound(String),
    Unsupported(String),
    Io { step: &'static str, path: PathBuf, source: std::io::Error },
    Oci(oci_spec::OciSpecError),
}

impl Problem {
    fn into_error(self, container_id: &str) -> SpecError {
        let container_id = container_id.to_owned();
        match self {
            Problem::Invalid(reason) => SpecError::Invalid { container_id, reason },
            Problem::NotFound(reason) => SpecError::NotFound { container_id, reason },
            Problem::Unsupported(reason) => SpecError::Unsupported { container_id, reason },
            Problem::Io { step, path, source } => SpecError::Io { container_id, step, path, source },
            Problem::Oci(source) => SpecError::Oci { container_id, source },
        }
    }

    pub(crate) fn io(step: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Problem {
        let path = path.into();
        move |source| Problem::Io { step, path, source }
    }
}

impl From<oci_spec::OciSpecError> for Problem {
    fn from(err: oci_spec::OciSpecError) -> Problem {
        Problem::Oci(err)
    }
}

/// What the spec depends on about this host, read once per build (tests pass their own).
#[derive(Debug, Clone)]
pub(crate) struct HostFacts {
    /// `/sys/fs/cgroup` is the unified (v2) hierarchy.
    pub cgroup_v2: bool,
    /// The memory controller accounts swap (`memory.memsw.*` on v1, `memory.swap.max` on v2).
    pub swap_accounting: bool,
    pub apparmor_enabled: bool,
    /// The hugetlb controller is there (kubelet asks for a limit per huge page size the node has, whether or
    /// not the controller is mounted).
    pub hugetlb: bool,
    /// The node's hostname (host-network pods see it).
    pub hostname: String,
}

impl HostFacts {
    pub(crate) fn detect() -> HostFacts {
        let cgroup_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let swap_accounting = if cgroup_v2 {
            // containerd's test: the controller file of our own cgroup (the root cgroup has none, so there
            // the memory controller being enabled is taken as enough: swap accounting is on by default since
            // Linux 5.8).
            let own = std::fs::read_to_string("/proc/self/cgroup")
                .ok()
                .and_then(|text| text.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
                .unwrap_or_default();
            let own = own.trim().trim_start_matches('/');
            if own.is_empty() {
                std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
                    .map(|c| c.split_whitespace().any(|c| c == "memory"))
                    .unwrap_or(false)
            } else {
                Path::new("/sys/fs/cgroup").join(own).join("memory.swap.max").exists()
            }
        } else {
            Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        };
        let apparmor_enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
            .map(|v| v.trim() == "Y")
            .unwrap_or(false);
        let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let hugetlb = berth_runtime::cgroups::Layout::host().is_ok_and(|layout| layout.has_controller("hugetlb"));
        if !hugetlb {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::debug!("no hugetlb cgroup controller on this host: huge page limits are not applied")
            });
        }
        if !swap_accounting {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::debug!("no swap accounting on this host: swap limits are not applied, as with runc")
            });
        }
        HostFacts { cgroup_v2, swap_accounting, apparmor_enabled, hugetlb, hostname }
    }
}

/// containerd's fallback `PATH` when the image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Open files limit of every container (see the module comment).
const NOFILE_LIMIT: u64 = 1_048_576;

/// [`NOFILE_LIMIT`], or this process's hard limit when that is lower: raising a hard limit needs
/// CAP_SYS_RESOURCE, which a node's root does not always have (some VMs and nested containers).
fn nofile_limit() -> u64 {
    let hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map(|(_, hard)| hard);
    NOFILE_LIMIT.min(hard.unwrap_or(NOFILE_LIMIT))
}

/// Builds the OCI spec of a container. Side effect: missing host paths of CRI bind mounts are created as
/// directories (mode 0755), as containerd does.
pub fn build(request: &SpecRequest) -> Result<BuiltSpec, SpecError> {
    build_with(request, &HostFacts::detect()).map_err(|problem| problem.into_error(request.container_id))
}

/// The cgroups path of a container. cgroupfs: `<cgroup_parent>/<id>` (`/berth/<id>` without a parent);
/// systemd: `<parent slice>:berth:<id>` (runc's `slice:prefix:name`; a parent given as a path contributes its
/// last component, `system.slice` when there is none).
pub fn cgroups_path(parent: &str, container_id: &str, driver: CgroupDriver) -> String {
    match driver {
        CgroupDriver::Cgroupfs => {
            let parent = parent.trim_end_matches('/');
            if parent.is_empty() {
                format!("/berth/{container_id}")
            } else if parent.starts_with('/') {
                format!("{parent}/{container_id}")
            } else {
                format!("/{parent}/{container_id}")
            }
        }
        CgroupDriver::Systemd => {
            let slice = parent.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
            let slice = if slice.is_empty() { "system.slice" } else { slice };
            format!("{slice}:berth:{container_id}")
        }
    }
}

/// The OCI `linux.resources` for new CRI resources (UpdateContainerResources).
pub fn resources(container_id: &str, resources: &cri::LinuxContainerResources) -> Result<LinuxResources, SpecError> {
    linux_resources(Some(resources), &HostFacts::detect()).map_err(|problem| problem.into_error(container_id))
}

pub(crate) fn build_with(request: &SpecRequest, host: &HostFacts) -> Result<BuiltSpec, Problem> {
    let config = request.config;
    let record = request.pod.record;
    let linux = config.linux.as_ref();
    let context = linux.and_then(|l| l.security_context.as_ref());
    let privileged = context.is_some_and(|c| c.privileged);
    if privileged {
        let pod_privileged = request
            .pod
            .config
            .and_then(|c| c.linux.as_ref())
            .and_then(|l| l.security_context.as_ref())
            .map(|c| c.privileged);
        // containerd refuses the same: a privileged container in an unprivileged pod would escape what
        // the pod was admitted with.
        if pod_privileged == Some(false) {
            return Err(Problem::Invalid(
                "a privileged container is not allowed in an unprivileged pod sandbox".into(),
            ));
        }
    }
    check_user_namespace(context, record)?;

    let hostname = if record.utsns.is_some() {
        // Records keep the effective hostname; an empty one (older records) meant the node's.
        Some(if record.hostname.is_empty() { host.hostname.clone() } else { record.hostname.clone() })
    } else {
        None
    };
    let args = process_args(config, &request.image.config)?;
    let env = environment(config, &request.image.config, hostname.as_deref().unwrap_or(&host.hostname))?;
    let cwd = working_dir(config, &request.image.config)?;

    let identity = user::resolve(request.rootfs, context, &request.image.config.user)?;
    let stop_signal = signal::stop_signal(config.stop_signal, &request.image.config.stop_signal);

    let capabilities = security::capabilities(context)?;
    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .user(
            UserBuilder::default()
                .uid(identity.uid)
                .gid(identity.gid)
                .additional_gids(identity.additional_gids.clone())
                .build()?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities.to_oci()?)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(nofile_limit())
                .hard(nofile_limit())
                .build()?,
        ])
        .no_new_privileges(context.is_some_and(|c| c.no_new_privs))
        .build()?;
    let resources = linux.and_then(|l| l.resources.as_ref());
    if let Some(adj) = resources.map(|r| r.oom_score_adj) {
        process.set_oom_score_adj(Some(adj.clamp(-1000, 1000) as i32));
    }
    if let Some(profile) = security::apparmor_profile(context, privileged, host.apparmor_enabled)? {
        process.set_apparmor_profile(Some(profile));
    }

    let mounts = mounts::mounts(&mounts::MountRequest {
        config,
        privileged,
        readonly_rootfs: context.is_some_and(|c| c.readonly_rootfs),
        etc_dir: request.pod.etc_dir,
        shm: request.pod.shm,
        user_mappings: record.user_mappings.as_ref(),
        image_volumes: request.image_volumes,
    })?;

    let devices = devices::devices(&config.devices, privileged)?;
    let mut linux_resources = linux_resources(resources, host)?;
    linux_resources.set_devices(Some(devices.rules));

    let mut linux_builder = LinuxBuilder::default()
        .namespaces(namespaces(request, context, privileged, host)?)
        .resources(linux_resources)
        .cgroups_path(PathBuf::from(cgroups_path(&record.cgroup_parent, request.container_id, request.cgroup_driver)))
        .devices(devices.nodes);
    if let Some(propagation) = mounts.rootfs_propagation {
        linux_builder = linux_builder.rootfs_propagation(propagation);
    }
    if let Some(mappings) = &record.user_mappings {
        // Informational for the runtime (the namespace is joined by path and already mapped); tools that
        // read bundles, and runc, expect them next to a user namespace.
        let oci = |maps: &[berth_runtime::pin::IdMapping]| {
            maps.iter()
                .map(|m| {
                    LinuxIdMappingBuilder::default()
                        .container_id(m.container_id)
                        .host_id(m.host_id)
                        .size(m.size)
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
        };
        linux_builder = linux_builder.uid_mappings(oci(&mappings.uids)?).gid_mappings(oci(&mappings.gids)?);
    }
    if !privileged {
        let (masked, readonly) = security::masked_and_readonly_paths(context);
        linux_builder = linux_builder.masked_paths(masked).readonly_paths(readonly);
        if let Some(profile) = seccomp::profile(context, &capabilities.bounding, request.seccomp_root)? {
            linux_builder = linux_builder.seccomp(profile);
        }
    }

    // oci_spec's builders start from its own example defaults (masked paths, hostname "youki"), so what
    // must be absent is cleared explicitly.
    let mut linux = linux_builder.build()?;
    if privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    }
    let mut spec = SpecBuilder::default()
        .version(berth_runtime::OCI_VERSION)
        .root(RootBuilder::default().path(request.rootfs).readonly(context.is_some_and(|c| c.readonly_rootfs)).build()?)
        .process(process)
        .mounts(mounts.mounts)
        .annotations(annotations(request))
        .linux(linux)
        .build()?;
    // Only with the pod's own UTS namespace: the runtime sets the hostname it is given, and in the host's
    // namespace that would rename the node.
    spec.set_hostname(hostname);
    cdi::apply(&mut spec, request.cdi, privileged)?;
    Ok(BuiltSpec {
        spec,
        uid: identity.uid,
        gid: identity.gid,
        supplemental_groups: identity.additional_gids,
        stop_signal,
    })
}

/// Kubernetes' rule: `command` replaces the image's Entrypoint and `args` its Cmd; a command without args
/// drops the image's Cmd too.
fn process_args(
    config: &cri::ContainerConfig,
    image: &berth_image::manifest::ContainerDefaults,
) -> Result<Vec<String>, Problem> {
    let mut args: Vec<String> =
        if config.command.is_empty() { image.entrypoint.clone().unwrap_or_default() } else { config.command.clone() };
    if !config.args.is_empty() {
        args.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        args.extend(image.cmd.iter().flatten().cloned());
    }
    if args.is_empty() {
        return Err(Problem::Invalid(
            "no command specified: neither the container config nor the image has an entrypoint or command".into(),
        ));
    }
    Ok(args)
}

/// containerd's order: a default PATH, HOSTNAME, the image's Env, then the container config's; a later value
/// of a key replaces the earlier one in place.
fn environment(
    config: &cri::ContainerConfig,
    image: &berth_image::manifest::ContainerDefaults,
    hostname: &str,
) -> Result<Vec<String>, Problem> {
    let mut env: Vec<String> = Vec::new();
    let mut set = |entry: String| {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k).to_owned();
        match env.iter_mut().find(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key) {
            Some(existing) => *existing = entry,
            None => env.push(entry),
        }
    };
    set(DEFAULT_PATH.to_owned());
    set(format!("HOSTNAME={hostname}"));
    for entry in &image.env {
        set(entry.clone());
    }
    for pair in &config.envs {
        if pair.key.is_empty() || pair.key.contains('=') {
            return Err(Problem::Invalid(format!("invalid environment variable name {:?}", pair.key)));
        }
        let value = String::from_utf8(pair.value.clone())
            .map_err(|_| Problem::Invalid(format!("the value of environment variable {} is not UTF-8", pair.key)))?;
        set(format!("{}={value}", pair.key));
    }
    Ok(env)
}

fn working_dir(
    config: &cri::ContainerConfig,
    image: &berth_image::manifest::ContainerDefaults,
) -> Result<PathBuf, Problem> {
    let dir =
        [config.working_dir.as_str(), image.working_dir.as_str()].into_iter().find(|d| !d.is_empty()).unwrap_or("/");
    if !dir.starts_with('/') {
        return Err(Problem::Invalid(format!("working directory {dir:?} is not absolute")));
    }
    Ok(PathBuf::from(dir))
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, Problem> {
    let builder = LinuxNamespaceBuilder::default().typ(typ);
    Ok(match path {
        Some(path) => builder.path(path).build()?,
        None => builder.build()?,
    })
}

/// User (`hostUsers: false`), network, IPC and UTS: the pod's pinned namespaces, or the host's (no entry); a
/// user namespace is joined first, and the mount, PID and cgroup namespaces made after it belong to it.
/// Mount: new. PID: per
/// NamespaceMode. Cgroup: new on cgroup v2 for unprivileged containers (containerd does the same; on v1 a
/// cgroup namespace would hide nothing useful and containerd adds none).
fn namespaces(
    request: &SpecRequest,
    context: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
    host: &HostFacts,
) -> Result<Vec<LinuxNamespace>, Problem> {
    let record = request.pod.record;
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)?];
    for (typ, path) in [
        (LinuxNamespaceType::User, &record.userns),
        (LinuxNamespaceType::Network, &record.netns),
        (LinuxNamespaceType::Ipc, &record.ipcns),
        (LinuxNamespaceType::Uts, &record.utsns),
    ] {
        if let Some(path) = path {
            namespaces.push(namespace(typ, Some(path))?);
        }
    }
    let pid_mode = context.and_then(|c| c.namespace_options.as_ref()).map_or(record.pid_mode, |n| n.pid);
    if let Some(path) = &request.pod.pid_namespace {
        namespaces.push(namespace(LinuxNamespaceType::Pid, Some(path))?);
    } else if pid_mode == MODE_NODE || record.pid_mode == MODE_NODE {
        // The host's PID namespace: no entry.
    } else if pid_mode == MODE_POD || pid_mode == MODE_TARGET {
        return Err(Problem::Invalid(format!(
            "PID namespace mode {} needs a PID namespace to join, and none was given",
            if pid_mode == MODE_POD { "POD" } else { "TARGET" }
        )));
    } else {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None)?);
    }
    if host.cgroup_v2 && !privileged {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }
    Ok(namespaces)
}

/// A container's `userns_options` must say what its pod's do (kubelet sends the same to both): absent means
/// the pod's; mode NODE in a pod with its own user namespace, or other maps, is refused.
fn check_user_namespace(
    context: Option<&cri::LinuxContainerSecurityContext>,
    record: &PodRecord,
) -> Result<(), Problem> {
    let Some(options) = context.and_then(|c| c.namespace_options.as_ref()).and_then(|n| n.userns_options.as_ref())
    else {
        return Ok(());
    };
    let asked = crate::pods::userns::mappings(Some(options)).map_err(|problem| match problem {
        crate::pods::userns::UsernsProblem::Invalid(reason) => Problem::Invalid(reason),
        crate::pods::userns::UsernsProblem::Unsupported(reason) => Problem::Unsupported(reason),
    })?;
    if asked != record.user_mappings {
        let describe = |maps: &Option<berth_runtime::pin::UserMappings>| match maps {
            None => "the host's user namespace".to_owned(),
            Some(m) => format!("a user namespace with uid maps {:?} and gid maps {:?}", m.uids, m.gids),
        };
        return Err(Problem::Invalid(format!(
            "userns_options ask for {}, but pod sandbox {} has {}",
            describe(&asked),
            record.id,
            describe(&record.user_mappings)
        )));
    }
    Ok(())
}

/// `linux.resources` from CRI, as containerd fills it: zero means "not set"; without an explicit swap limit
/// swap is limited to the memory limit (no swapping) where the kernel accounts swap.
fn linux_resources(
    resources: Option<&cri::LinuxContainerResources>,
    host: &HostFacts,
) -> Result<LinuxResources, Problem> {
    let mut builder = LinuxResourcesBuilder::default();
    let Some(r) = resources else {
        return Ok(builder.build()?);
    };
    let mut cpu = LinuxCpuBuilder::default();
    let mut cpu_set = false;
    if r.cpu_period > 0 {
        cpu = cpu.period(r.cpu_period as u64);
        cpu_set = true;
    }
    if r.cpu_quota != 0 {
        cpu = cpu.quota(r.cpu_quota);
        cpu_set = true;
    }
    if r.cpu_shares > 0 {
        cpu = cpu.shares(r.cpu_shares as u64);
        cpu_set = true;
    }
    if !r.cpuset_cpus.is_empty() {
        cpu = cpu.cpus(r.cpuset_cpus.clone());
        cpu_set = true;
    }
    if !r.cpuset_mems.is_empty() {
        cpu = cpu.mems(r.cpuset_mems.clone());
        cpu_set = true;
    }
    if cpu_set {
        builder = builder.cpu(cpu.build()?);
    }
    if r.memory_limit_in_bytes < 0 || (r.memory_swap_limit_in_bytes < 0 && r.memory_swap_limit_in_bytes != -1) {
        return Err(Problem::Invalid(format!(
            "negative memory limit ({} bytes, swap {} bytes)",
            r.memory_limit_in_bytes, r.memory_swap_limit_in_bytes
        )));
    }
    let mut memory = LinuxMemoryBuilder::default();
    let mut memory_set = false;
    if r.memory_limit_in_bytes != 0 {
        memory = memory.limit(r.memory_limit_in_bytes);
        memory_set = true;
        if r.memory_swap_limit_in_bytes == 0 && host.swap_accounting {
            memory = memory.swap(r.memory_limit_in_bytes);
        }
    }
    if r.memory_swap_limit_in_bytes != 0 && host.swap_accounting {
        memory = memory.swap(r.memory_swap_limit_in_bytes);
        memory_set = true;
    }
    if memory_set {
        builder = builder.memory(memory.build()?);
    }
    // Without the controller the limits are dropped, as containerd (disable/tolerate_missing_hugetlb_controller)
    // and CRI-O do: kubelet sends them for every page size the kernel knows, on hosts that mount no hugetlb.
    if !r.hugepage_limits.is_empty() && host.hugetlb {
        let limits = r
            .hugepage_limits
            .iter()
            .map(|h| {
                LinuxHugepageLimitBuilder::default()
                    .page_size(h.page_size.clone())
                    .limit(i64::try_from(h.limit).unwrap_or(i64::MAX))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        builder = builder.hugepage_limits(limits);
    }
    if !r.unified.is_empty() {
        builder = builder.unified(r.unified.clone().into_iter().collect::<HashMap<_, _>>());
    }
    Ok(builder.build()?)
}

/// The container's annotations, then the ones containerd adds for tools that look at bundles.
fn annotations(request: &SpecRequest) -> HashMap<String, String> {
    let config = request.config;
    let record = request.pod.record;
    let mut annotations: HashMap<String, String> = config.annotations.clone().into_iter().collect();
    let name = config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
    let image = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
    for (key, value) in [
        ("io.kubernetes.cri.container-type", "container".to_owned()),
        ("io.kubernetes.cri.sandbox-id", record.id.clone()),
        ("io.kubernetes.cri.sandbox-name", record.name.clone()),
        ("io.kubernetes.cri.sandbox-namespace", record.namespace.clone()),
        ("io.kubernetes.cri.sandbox-uid", record.uid.clone()),
        ("io.kubernetes.cri.container-name", name),
        ("io.kubernetes.cri.image-name", image),
    ] {
        annotations.insert(key.to_owned(), value);
    }
    annotations
}

#[cfg(test)]
mod tests;
