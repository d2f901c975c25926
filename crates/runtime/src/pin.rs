//! Pinned namespaces: network, IPC and UTS namespaces (a pod sandbox's) that exist without any process in
//! them, kept alive by a bind mount of their /proc/<pid>/ns file onto a file of the caller's choosing.
//!
//! They are created either by `berth __pin` ([`main`], [`pin`]), a freshly exec'd single-threaded helper
//! that unshares, sets the hostname and namespaced sysctls, bind-mounts the namespace files and exits, or
//! by [`pin_in_thread`], which does the same on a short-lived thread of the caller (network, IPC and UTS
//! namespaces belong to a thread, not to the whole process, so a multi-threaded daemon can make them
//! without forking; it saves the helper's exec, ~2 ms per pod sandbox). Containers then join
//! them by path (`linux.namespaces[].path`). [`unpin`] unmounts and removes them; it is idempotent, so a
//! removal a crash interrupted can simply be repeated.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// The namespaces a pod sandbox pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinnedKind {
    Net,
    Ipc,
    Uts,
}

impl PinnedKind {
    pub fn name(self) -> &'static str {
        match self {
            PinnedKind::Net => "net",
            PinnedKind::Ipc => "ipc",
            PinnedKind::Uts => "uts",
        }
    }

    fn flag(self) -> CloneFlags {
        match self {
            PinnedKind::Net => CloneFlags::CLONE_NEWNET,
            PinnedKind::Ipc => CloneFlags::CLONE_NEWIPC,
            PinnedKind::Uts => CloneFlags::CLONE_NEWUTS,
        }
    }
}

/// What to pin, and where: each namespace becomes the file `dir/<kind>` (`dir/net`, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinRequest {
    pub dir: PathBuf,
    pub kinds: Vec<PinnedKind>,
    /// Set in the new UTS namespace.
    pub hostname: Option<String>,
    /// Namespaced sysctls (`net.*` with a network namespace, `kernel.shm*`/`kernel.msg*`/`kernel.sem`/
    /// `fs.mqueue.*` with an IPC namespace), written from inside the new namespaces.
    pub sysctls: BTreeMap<String, String>,
}

impl PinRequest {
    /// The file a pinned namespace lives at.
    pub fn path(&self, kind: PinnedKind) -> PathBuf {
        self.dir.join(kind.name())
    }
}

/// Pins the namespaces with the helper `<init_binary> __pin`. On failure nothing is left pinned.
pub fn pin(init_binary: &Path, request: &PinRequest) -> Result<()> {
    std::fs::create_dir_all(&request.dir).map_err(RuntimeError::io("create the namespace directory", &request.dir))?;
    let mut helper = Command::new(init_binary)
        .arg("__pin")
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RuntimeError::io("start the namespace helper", init_binary))?;
    let request_json = serde_json::to_vec(request).expect("pin requests serialize");
    let written = helper.stdin.take().map(|mut stdin| stdin.write_all(&request_json));
    let mut stderr = String::new();
    if let Some(mut pipe) = helper.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = helper.wait().map_err(RuntimeError::io("wait for the namespace helper", init_binary))?;
    if status.success() && matches!(written, Some(Ok(()))) {
        return Ok(());
    }
    let _ = unpin(&request.dir);
    Err(RuntimeError::Setup(format!(
        "pin namespaces in {}: {}",
        request.dir.display(),
        stderr.trim().strip_prefix("berth pin: ").unwrap_or(stderr.trim())
    )))
}

/// Pins the namespaces from a new thread of this process, which unshares them, sets them up and exits
/// (they stay alive through their bind mounts). On failure nothing is left pinned.
pub fn pin_in_thread(request: &PinRequest) -> Result<()> {
    std::fs::create_dir_all(&request.dir).map_err(RuntimeError::io("create the namespace directory", &request.dir))?;
    let owned = request.clone();
    let outcome = std::thread::Builder::new()
        .name("berth-pin".into())
        .spawn(move || pin_current_thread(&owned, "/proc/thread-self/ns"))
        .map_err(RuntimeError::io("start the namespace thread", &request.dir))?
        .join()
        .unwrap_or_else(|_| Err(RuntimeError::Setup("the namespace thread panicked".into())));
    if let Err(err) = outcome {
        let _ = unpin(&request.dir);
        return Err(RuntimeError::Setup(format!(
            "pin namespaces in {}: {}",
            request.dir.display(),
            berth_error_kind::chain(&err)
        )));
    }
    Ok(())
}

/// Unmounts and removes pinned namespaces (and the directory, if that leaves it empty). Missing ones are fine.
pub fn unpin(dir: &Path) -> Result<()> {
    for kind in [PinnedKind::Net, PinnedKind::Ipc, PinnedKind::Uts] {
        let path = dir.join(kind.name());
        match umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(errno) => {
                return Err(RuntimeError::sys(format!("unmount the pinned namespace {}", path.display()))(errno));
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RuntimeError::Io { step: "remove the pinned namespace file", path, source }),
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// Entry point of `berth __pin`: reads a [`PinRequest`] as JSON on stdin. Never returns.
pub fn main() -> ! {
    let mut input = Vec::new();
    let outcome = std::io::stdin()
        .read_to_end(&mut input)
        .map_err(RuntimeError::io("read the request from", "stdin"))
        .and_then(|_| {
            serde_json::from_slice::<PinRequest>(&input)
                .map_err(|err| RuntimeError::Setup(format!("the pin request is not valid JSON: {err}")))
        })
        .and_then(|request| pin_here(&request));
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(err) => {
            eprintln!("berth pin: {}", berth_error_kind::chain(&err));
            std::process::exit(1);
        }
    }
}

fn pin_here(request: &PinRequest) -> Result<()> {
    crate::init::ensure_single_threaded()?;
    pin_current_thread(request, "/proc/self/ns")
}

/// Unshares the namespaces for the calling thread, configures them and bind-mounts them; `ns_dir` names
/// this thread's namespace files (`/proc/self/ns` in a single-threaded helper, `/proc/thread-self/ns` on a
/// thread). sysctls are written through /proc/sys, which shows the writing thread's namespaces.
fn pin_current_thread(request: &PinRequest, ns_dir: &str) -> Result<()> {
    let mut flags = CloneFlags::empty();
    for kind in &request.kinds {
        flags |= kind.flag();
    }
    unshare(flags).map_err(RuntimeError::sys(format!("unshare({flags:?})")))?;
    if let Some(hostname) = request.hostname.as_deref().filter(|h| !h.is_empty()) {
        if !request.kinds.contains(&PinnedKind::Uts) {
            return Err(RuntimeError::Setup("a hostname needs a UTS namespace".into()));
        }
        nix::unistd::sethostname(hostname).map_err(RuntimeError::sys(format!("sethostname {hostname:?}")))?;
    }
    for (key, value) in &request.sysctls {
        let file = crate::namespaces::sysctl_file(key)
            .ok_or_else(|| RuntimeError::Setup(format!("invalid sysctl name {key:?}")))?;
        std::fs::write(&file, value).map_err(RuntimeError::io("write sysctl", &file))?;
    }
    for kind in &request.kinds {
        let target = request.path(*kind);
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&target)
            .map_err(RuntimeError::io("create the pin file", &target))?;
        let source = format!("{ns_dir}/{}", kind.name());
        mount(Some(source.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(RuntimeError::sys(format!("bind {source} onto {}", target.display())))?;
    }
    Ok(())
}
