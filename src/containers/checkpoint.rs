//! CheckpointContainer: a running container's processes, root filesystem changes and log, written to an
//! archive while it keeps running.
//!
//! CRIU dumps the process tree from its init with the cgroup frozen and leaves it running. What the pod
//! shares with the container (its network and, when shared, PID namespace) and what the spec bound in from
//! the host (volumes, /etc/hosts, the termination-log file, /dev/shm) are recorded as external, so a
//! restore hands it the new pod's. The archive is written beside its destination and renamed into place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_runtime::cgroups::{Cgroup, Layout as CgroupLayout};

use super::{ContainerError, ContainerManager, step};
use crate::checkpoint::CheckpointError;
use crate::checkpoint::archive::{self, ConfigDump};
use crate::checkpoint::criu::{self, Criu, DumpPlan, ExternalNamespace};
use crate::checkpoint::restore::RESTORE_LOG;
use crate::records::ContainerRecord;

/// What CheckpointContainer asks for.
#[derive(Debug, Clone)]
pub struct CheckpointRequest {
    pub container_id: String,
    /// Where the archive goes (absolute; its directory must exist).
    pub location: PathBuf,
    /// None: no limit (CRI's timeout 0).
    pub timeout: Option<Duration>,
}

fn failed(id: &str, step: &'static str) -> impl FnOnce(CheckpointError) -> ContainerError {
    let id = id.to_owned();
    move |source| ContainerError::Checkpoint { id, step, source: Box::new(source) }
}

/// The mounts CRIU must take as external: every bind mount of the spec (their sources are host paths a
/// restore replaces), the cgroup filesystems the runtime mounted for a spec's cgroup mount (on a v1 host
/// one per hierarchy, bound from the host's; `mountinfo` is the container's), and, in a user namespace,
/// the device nodes the runtime bound from the host.
fn external_mounts(spec: &oci_spec::runtime::Spec, mountinfo: &str) -> Vec<String> {
    let mounts = spec.mounts().iter().flatten();
    let mut destinations: Vec<String> = mounts
        .clone()
        .filter(|m| berth_runtime::init::is_bind_mount(m))
        .map(|m| m.destination().display().to_string())
        .collect();
    for cgroup_mount in mounts.filter(|m| m.typ().as_deref() == Some("cgroup")) {
        let top = cgroup_mount.destination();
        destinations.extend(
            cgroup_mount_points(mountinfo).filter(|point| Path::new(point).starts_with(top)).map(str::to_owned),
        );
    }
    let linux = spec.linux().as_ref();
    let in_user_namespace = linux
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|n| n.iter().any(|ns| ns.typ() == oci_spec::runtime::LinuxNamespaceType::User));
    if in_user_namespace {
        for device in linux.and_then(|l| l.devices().as_ref()).into_iter().flatten() {
            destinations.push(device.path().display().to_string());
        }
    }
    destinations.dedup();
    destinations
}

/// Mount points of cgroup and cgroup2 filesystems in a mountinfo text.
fn cgroup_mount_points(mountinfo: &str) -> impl Iterator<Item = &str> {
    mountinfo.lines().filter_map(|line| {
        let (fields, after_separator) = line.split_once(" - ")?;
        let fs_type = after_separator.split(' ').next()?;
        matches!(fs_type, "cgroup" | "cgroup2").then(|| fields.split(' ').nth(4)).flatten()
    })
}

/// The namespaces the container joined by path (the pod's) that CRIU records by inode instead of dumping.
fn external_namespaces(spec: &oci_spec::runtime::Spec) -> Result<Vec<ExternalNamespace>, CheckpointError> {
    use oci_spec::runtime::LinuxNamespaceType as Kind;
    let mut external = Vec::new();
    for namespace in spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()).into_iter().flatten() {
        let (kind, key) = match namespace.typ() {
            Kind::Network => ("net", criu::EXTERNAL_NET_KEY),
            Kind::Pid => ("pid", criu::EXTERNAL_PID_KEY),
            _ => continue,
        };
        let Some(path) = namespace.path() else { continue };
        let inode =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).map_err(|source| CheckpointError::Io {
                step: "inspect the namespace",
                path: path.clone(),
                source,
            })?);
        external.push(ExternalNamespace { kind, inode, key });
    }
    Ok(external)
}

/// What the container's fds 0-2 are (`/proc/PID/fd/N` links), for restore to replace them.
fn descriptors(pid: i32) -> Vec<String> {
    (0..3)
        .map(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|target| target.display().to_string())
                .unwrap_or_else(|_| "/dev/null".to_owned())
        })
        .collect()
}

/// `seconds.nanos` since the epoch as RFC 3339.
fn rfc3339(unix_nanos: i64) -> String {
    berth_runtime::state::rfc3339(unix_nanos.div_euclid(1_000_000_000), unix_nanos.rem_euclid(1_000_000_000) as u32)
}

impl ContainerManager {
    /// Checkpoints a running container into the archive at `request.location`; it keeps running.
    pub async fn checkpoint(&self, request: CheckpointRequest) -> Result<(), ContainerError> {
        let id = request.container_id.as_str();
        let record = self.running(id, "checkpoint it")?;
        if !request.location.is_absolute() {
            return Err(ContainerError::Invalid(format!(
                "checkpoint location {:?} must be an absolute path to the archive to write",
                request.location.display().to_string()
            )));
        }
        if let Some(parent) = request.location.parent()
            && !parent.is_dir()
        {
            return Err(ContainerError::Invalid(format!(
                "checkpoint location {}: directory {} does not exist",
                request.location.display(),
                parent.display()
            )));
        }
        let criu = Criu::locate(&self.criu).map_err(failed(id, "find CRIU"))?;
        let work = self.container_dir(&record).join("checkpoint-work");
        let _ = std::fs::remove_dir_all(&work);
        let result = self.checkpoint_into(&record, &criu, &work, &request).await;
        if let Err(err) = std::fs::remove_dir_all(&work) {
            tracing::warn!(container_id = id, path = %work.display(), error = %err, "cannot remove the checkpoint's work directory");
        }
        if result.is_ok() {
            tracing::info!(container_id = id, location = %request.location.display(), "container checkpointed");
        }
        result
    }

    async fn checkpoint_into(
        &self,
        record: &ContainerRecord,
        criu: &Criu,
        work: &Path,
        request: &CheckpointRequest,
    ) -> Result<(), ContainerError> {
        let id = record.id.as_str();
        let images_dir = work.join(archive::CHECKPOINT_DIR);
        std::fs::create_dir_all(&images_dir).map_err(step(id, "create the checkpoint's work directory"))?;
        let runtime = berth_runtime::Runtime::new(self.layout.runtime_state());
        let (state, _) = runtime.state(id).map_err(step(id, "read the container's runtime state"))?;
        let spec_path = self.bundle(record).join("config.json");
        let spec = oci_spec::runtime::Spec::load(&spec_path).map_err(step(id, "read the container's spec"))?;
        let cgroup =
            Cgroup::new(CgroupLayout::host().map_err(step(id, "read the cgroup layout"))?, state.cgroup_path.clone());
        let mountinfo_path = PathBuf::from(format!("/proc/{}/mountinfo", state.pid));
        let mountinfo = std::fs::read_to_string(&mountinfo_path)
            .map_err(|source| CheckpointError::Io { step: "read its mounts", path: mountinfo_path, source })
            .map_err(failed(id, "list the container's mounts"))?;
        archive::write_json(&images_dir, archive::DESCRIPTORS, &descriptors(state.pid))
            .map_err(failed(id, "record the container's descriptors"))?;
        let plan = DumpPlan {
            pid: state.pid,
            images_dir,
            work_dir: work.to_owned(),
            log_file: work.join(archive::DUMP_LOG),
            root: state.rootfs.clone(),
            external_mounts: external_mounts(&spec, &mountinfo),
            external_namespaces: external_namespaces(&spec).map_err(failed(id, "find the pod's namespaces"))?,
            freezer: cgroup.freezer_dir().filter(|d| d.exists()),
            leave_running: true,
        };
        let root = Path::new("/");
        let skipped: Vec<PathBuf> = spec
            .mounts()
            .iter()
            .flatten()
            .filter_map(|m| m.destination().strip_prefix(root).ok().map(Path::to_path_buf))
            .collect();
        let upper = self.images.container_dir(id).join("upper");
        // The processes and the files they write are taken at the same instant: the cgroup is frozen before
        // CRIU runs (CRIU leaves a cgroup it found frozen frozen) and thawed once the root filesystem's
        // changes are archived. Without a freezer the files are read while the container runs.
        let frozen = plan.freezer.is_some();
        if frozen {
            cgroup.freeze().map_err(step(id, "freeze the container"))?;
        }
        tracing::debug!(container_id = id, criu = %criu.program().display(), args = ?plan.args(), "dumping the container");
        let captured = match criu.run("dump", &plan.args(), &plan.log_file, request.timeout).await {
            Ok(()) => tokio::task::block_in_place(|| {
                let deleted = archive::write_rootfs_diff(&upper, &skipped, work)
                    .map_err(failed(id, "archive its root filesystem changes"))?;
                archive::write_json(work, archive::DELETED_FILES, &deleted).map_err(failed(id, "write deleted.files"))
            }),
            Err(err) => Err(failed(id, "dump its processes")(err)),
        };
        // Whatever happened, the container goes on running (a CRIU stopped half-way leaves it frozen too).
        if let Err(thaw) = cgroup.thaw() {
            tracing::warn!(container_id = id, error = %berth_error_kind::chain(&thaw), "cannot thaw the container after its checkpoint");
        }
        captured?;

        std::fs::copy(&spec_path, work.join(archive::SPEC_DUMP))
            .map_err(step(id, "copy the spec into the checkpoint"))?;
        let config = ConfigDump {
            id: record.id.clone(),
            name: record.name.clone(),
            rootfs_image: record.image.clone(),
            rootfs_image_ref: record.image_id.clone(),
            rootfs_image_name: super::shown_image(record).image,
            runtime: "berth".to_owned(),
            created_time: rfc3339(record.created_at_unix_nanos),
            checkpointed_time: rfc3339(crate::records::now_nanos()),
            restored_time: String::new(),
            restored: false,
        };
        archive::write_json(work, archive::CONFIG_DUMP, &config).map_err(failed(id, "write config.dump"))?;
        // Disk-bound work of a size the container decides: off the runtime's worker.
        tokio::task::block_in_place(|| {
            if !record.log_path.is_empty() && Path::new(&record.log_path).exists() {
                std::fs::copy(&record.log_path, work.join(archive::CONTAINER_LOG))
                    .map_err(step(id, "copy the container's log into the checkpoint"))?;
            }
            archive::pack(work, &request.location).map_err(failed(id, "write the archive"))
        })
    }
}

/// A CreateContainer whose image is a checkpoint: CRI-O's two forms, an archive (`image.image` is its
/// absolute path, as crictl passes it) or a checkpoint image (an OCI image whose manifest carries
/// [`CHECKPOINT_IMAGE_ANNOTATION`] and whose layers hold the archive's files, as buildah makes it and
/// kubelet pulls it). The container is made from the image the checkpoint was taken from, and its
/// processes, root filesystem changes and log come back from the checkpoint.
#[derive(Debug, Clone)]
pub(super) struct Restore {
    pub from: RestoreFrom,
    pub config: ConfigDump,
}

#[derive(Debug, Clone)]
pub(super) enum RestoreFrom {
    Archive(PathBuf),
    /// The checkpoint image's unpacked layers, bottom first.
    Image(Vec<PathBuf>),
}

/// The manifest annotation that marks a checkpoint image (CRI-O's; buildah sets it with `--annotation`).
pub const CHECKPOINT_IMAGE_ANNOTATION: &str = "io.kubernetes.cri-o.annotations.checkpoint.name";

/// The request rewritten to run what the checkpoint ran: its command, environment and working directory.
fn run_what_was_checkpointed(spec: &oci_spec::runtime::Spec, config: &mut crate::cri::v1::ContainerConfig) {
    if let Some(process) = spec.process() {
        config.command = process.args().clone().unwrap_or_default();
        config.args.clear();
        config.working_dir = process.cwd().display().to_string();
        config.envs = process
            .env()
            .iter()
            .flatten()
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| crate::cri::v1::KeyValue { key: key.to_owned(), value: value.as_bytes().to_vec() })
            .collect();
    }
}

fn config_name(config: &crate::cri::v1::ContainerConfig) -> String {
    config.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default()
}

impl ContainerManager {
    /// Whether `image` names a checkpoint (an archive path, or `found`, the image it names, is a checkpoint
    /// image); if so the request is rewritten to run what the checkpoint ran and the checkpoint's metadata
    /// is returned. An absolute path to a file that is not a checkpoint is refused.
    pub(super) fn restore_request(
        &self,
        pod: &crate::records::PodRecord,
        image: &str,
        found: Option<&berth_image::ImageRecord>,
        config: &mut crate::cri::v1::ContainerConfig,
    ) -> Result<Option<Restore>, ContainerError> {
        let name = config_name(config);
        let path = Path::new(image);
        let (from, (dump, spec)) = if path.is_absolute() && path.is_file() {
            let metadata = archive::read_metadata(path).map_err(failed(&name, "read the checkpoint"))?;
            (RestoreFrom::Archive(path.to_owned()), metadata)
        } else {
            let Some(record) = found.filter(|record| self.is_checkpoint_image(record)) else {
                return Ok(None);
            };
            let layers: Vec<PathBuf> = record.chain_ids.iter().map(|c| self.images.snapshot_path(c)).collect();
            let top = layers.iter().rev().find(|l| l.join(archive::CONFIG_DUMP).exists()).cloned().unwrap_or_default();
            let metadata = archive::read_metadata_dir(&top).map_err(failed(&name, "read the checkpoint image"))?;
            (RestoreFrom::Image(layers), metadata)
        };
        if pod.userns.is_some() {
            return Err(ContainerError::Invalid(format!(
                "checkpoint {image}: restoring into a pod with its own user namespace (hostUsers: false) is not supported"
            )));
        }
        if config.tty {
            return Err(ContainerError::Invalid(format!(
                "checkpoint {image}: restoring a container with a terminal (tty) is not supported"
            )));
        }
        run_what_was_checkpointed(&spec, config);
        Ok(Some(Restore { from, config: dump }))
    }

    /// Whether the image's manifest marks it as a checkpoint image.
    fn is_checkpoint_image(&self, record: &berth_image::ImageRecord) -> bool {
        let Ok(bytes) = std::fs::read(self.images.blob_path(&record.manifest)) else { return false };
        serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .is_some_and(|manifest| manifest["annotations"].get(CHECKPOINT_IMAGE_ANNOTATION).is_some())
    }
}

impl ContainerManager {
    /// Unpacks the checkpoint below the new container's directory, brings its root filesystem changes into
    /// the mounted `rootfs` and its log to the container's log path; returns what the shim restores from.
    pub(super) fn prepare_restore(
        &self,
        record: &ContainerRecord,
        restore: &Restore,
        rootfs: &Path,
    ) -> Result<crate::cri::shim::RestoreFrom, ContainerError> {
        let id = record.id.as_str();
        let criu = Criu::locate(&self.criu).map_err(failed(id, "find CRIU"))?;
        let dir = self.restore_dir(record);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(step(id, "create the restore directory"))?;
        match &restore.from {
            RestoreFrom::Archive(path) => archive::unpack(path, &dir).map_err(failed(id, "unpack the checkpoint"))?,
            RestoreFrom::Image(layers) => {
                for layer in layers {
                    archive::copy_layer(layer, &dir).map_err(failed(id, "copy the checkpoint image's files"))?;
                }
            }
        }
        archive::apply_rootfs_changes(&dir, rootfs).map_err(failed(id, "restore its root filesystem changes"))?;
        let log = dir.join(archive::CONTAINER_LOG);
        if !record.log_path.is_empty() && log.exists() && !Path::new(&record.log_path).exists() {
            if let Some(parent) = Path::new(&record.log_path).parent() {
                std::fs::create_dir_all(parent).map_err(step(id, "create the log directory"))?;
            }
            std::fs::copy(&log, &record.log_path).map_err(step(id, "restore the container's log"))?;
        }
        Ok(crate::cri::shim::RestoreFrom {
            criu: criu.program().display().to_string(),
            images_dir: dir.join(archive::CHECKPOINT_DIR).display().to_string(),
            work_dir: dir.display().to_string(),
        })
    }

    /// Where a checkpoint is unpacked for the container's restore (CRIU's work directory too).
    fn restore_dir(&self, record: &ContainerRecord) -> PathBuf {
        self.container_dir(record).join("restore")
    }

    /// After the shim restored the processes: CRIU's images (the container's memory) are not kept; its log
    /// stays beside the container as `restore.log`.
    pub(super) fn finish_restore(&self, record: &ContainerRecord) {
        let dir = self.restore_dir(record);
        let _ = std::fs::rename(dir.join(RESTORE_LOG), self.container_dir(record).join(RESTORE_LOG));
        if let Err(err) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(container_id = %record.id, path = %dir.display(), error = %err, "cannot remove the unpacked checkpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn bind_mounts_are_external_and_device_binds_only_in_a_user_namespace() {
        let base = serde_json::json!({
            "ociVersion": "1.2.0",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/p/hosts", "options": ["rbind", "ro"]},
                {"destination": "/data", "source": "/srv/data", "options": ["rbind", "rprivate"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"}
            ],
            "linux": {"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
                      "namespaces": [{"type": "mount"}]}
        });
        assert_eq!(external_mounts(&spec(base.clone()), ""), ["/etc/hosts", "/data"]);
        let mut userns = base;
        userns["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "user"}]);
        assert_eq!(external_mounts(&spec(userns), ""), ["/etc/hosts", "/data", "/dev/fuse"]);
    }

    #[test]
    fn the_cgroup_hierarchies_below_a_cgroup_mount_are_external() {
        let spec = spec(serde_json::json!({
            "ociVersion": "1.2.0",
            "mounts": [{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]}]
        }));
        let mountinfo = "\
90 80 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/l
95 90 0:60 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
96 95 0:30 /berth/c1 /sys/fs/cgroup/memory ro,nosuid shared:9 - cgroup cgroup rw,memory
97 95 0:31 /berth/c1 /sys/fs/cgroup/unified ro,nosuid - cgroup2 cgroup2 rw
98 90 0:31 / /host-cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(external_mounts(&spec, mountinfo), ["/sys/fs/cgroup/memory", "/sys/fs/cgroup/unified"]);
    }

    #[test]
    fn joined_network_and_pid_namespaces_are_external_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("net");
        std::fs::write(&net, b"").unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&net).unwrap());
        let joined = spec(serde_json::json!({
            "ociVersion": "1.2.0",
            "linux": {"namespaces": [{"type": "network", "path": net}, {"type": "pid"}, {"type": "ipc", "path": net}]}
        }));
        assert_eq!(
            external_namespaces(&joined).unwrap(),
            [ExternalNamespace { kind: "net", inode, key: criu::EXTERNAL_NET_KEY }]
        );
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(1_700_000_000_123_000_000), "2023-11-14T22:13:20.123000000Z");
    }
}
