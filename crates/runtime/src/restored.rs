//! Containers whose process tree is brought back from a checkpoint rather than started from the spec.
//!
//! The runtime makes everything around the process as [`Runtime::create`] does (state directory, spec,
//! cgroup with the spec's resources) and hands the caller a [`RestoreTarget`]; the caller (berth's shim,
//! through CRIU) restores the process tree into it, left stopped. Until `start`, the container is
//! `created`: a marker file stands where the start gate would be, and `start` resumes every process of
//! the cgroup with SIGCONT.

use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;

use crate::cgroups::Cgroup;
use crate::container::{OpenedBundle, Runtime};
use crate::error::{Result, RuntimeError};
use crate::state::{ContainerState, StateDir, Status, process_start_time};

/// What the caller restores the process tree into.
#[derive(Debug)]
pub struct RestoreTarget<'a> {
    pub id: &'a str,
    pub spec: &'a Spec,
    /// The container's root filesystem (already mounted), absolute.
    pub rootfs: &'a Path,
    /// The container's cgroup, made and limited; the restored processes belong in it.
    pub cgroup: &'a Cgroup,
}

impl StateDir {
    /// Present while a restored container waits for `start` (its processes are stopped).
    pub(crate) fn restored_marker(&self) -> PathBuf {
        self.path.join("restored.stopped")
    }
}

impl Runtime {
    /// Creates container `id` from the bundle with the process tree `restore` brings back (it returns the
    /// tree's root pid, a child of the caller, every process stopped). On an error everything made here is
    /// undone, including whatever `restore` left in the cgroup.
    pub fn create_restored<E: From<RuntimeError>>(
        &self,
        id: &str,
        bundle: &Path,
        restore: impl FnOnce(&RestoreTarget) -> std::result::Result<i32, E>,
    ) -> std::result::Result<ContainerState, E> {
        let dir = self.state_dir(id)?;
        let opened = OpenedBundle::open(bundle)?;
        let mut cleanup = self.make_state_dir(&dir, id)?;
        let mut state = opened.first_state(&dir, id, self.systemd_cgroup)?;
        let (spec, rootfs) = (&opened.spec, &opened.rootfs);
        let cgroup = state.cgroup()?;
        let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
        // The restored processes are put into the directories by the restore; a systemd scope is started
        // around them afterwards.
        cgroup.create(None, resources)?;
        cleanup.cgroup = Some(cgroup.clone());
        if let Some(resources) = resources {
            cgroup.apply(resources)?;
        }
        crate::init::create_mount_points(spec, rootfs)?;
        let target = RestoreTarget { id, spec, rootfs, cgroup: &cgroup };
        let pid = match restore(&target) {
            Ok(pid) => pid,
            Err(err) => {
                // A restore that failed half-way may have left processes in the cgroup.
                let _ = cgroup.signal_all(Signal::SIGKILL);
                return Err(err);
            }
        };
        cleanup.pid = Some(pid);
        cgroup.adopt(pid, resources)?;
        std::fs::write(dir.restored_marker(), b"").map_err(RuntimeError::io("create", dir.restored_marker()))?;
        state.pid = pid;
        state.pid_start_time = process_start_time(pid).unwrap_or(0);
        state.status = Status::Created;
        dir.save(&state)?;
        cleanup.disarm();
        Ok(state)
    }

    /// `start` of a restored container: every process of its cgroup continues.
    pub(crate) fn resume_restored(&self, dir: &StateDir, state: &ContainerState) -> Result<()> {
        state.cgroup()?.signal_all(Signal::SIGCONT)?;
        std::fs::remove_file(dir.restored_marker()).map_err(RuntimeError::io("remove", dir.restored_marker()))
    }
}
