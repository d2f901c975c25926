//! Pinned namespaces: network, IPC, UTS and user namespaces (a pod sandbox's) that exist without any
//! process in them, kept alive by a bind mount of their /proc/<pid>/ns file onto a file of the caller's
//! choosing.
//!
//! They are created either by `berth __pin` ([`main`], [`pin`]), a freshly exec'd single-threaded helper
//! that unshares, brings `lo` up in a new network namespace, sets the hostname and namespaced sysctls,
//! bind-mounts the namespace files and exits, or
//! by [`pin_in_thread`], which does the same on a short-lived thread of the caller (network, IPC and UTS
//! namespaces belong to a thread, not to the whole process, so a multi-threaded daemon can make them
//! without forking; it saves the helper's exec, ~2 ms per pod sandbox). Containers then join
//! them by path (`linux.namespaces[].path`). [`unpin`] unmounts and removes them; it is idempotent, so a
//! removal a crash interrupted can simply be repeated.
//!
//! A user namespace (a pod with `hostUsers: false`) needs the helper: unshare(CLONE_NEWUSER) is refused to a
//! multi-threaded process. The helper cannot finish alone either: once inside the new user namespace it has
//! no capability over the host's, so it can neither write its own id maps (user_namespaces(7): only a
//! process with CAP_SETUID in the parent namespace may map other ids than its own) nor bind-mount in the
//! host's mount namespace. So the caller and the helper take turns over the helper's stdin and stdout:
//!
//! ```text
//! caller                                         berth __pin
//!   request (one JSON line)  ───────────────────▶  unshare(CLONE_NEWUSER)
//!   writes /proc/<pid>/{uid,gid}_map  ◀── "map" ──
//!                            ─── "mapped" ──────▶  setresuid/setresgid(0): root of the new namespace
//!                                                  unshare(NET|IPC|UTS): owned by the new user namespace
//!                                                  lo up, hostname, sysctls
//!   bind-mounts /proc/<pid>/ns/{user,net,...} ◀── "pin" ──
//!   closes stdin             ───────────────────▶  exits
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// The namespaces a pod sandbox pins. A user namespace is not listed among them: it is asked for with
/// [`PinRequest::user`] and owns the others.
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

/// The file name of a pinned user namespace, next to the others.
pub const USER_NAMESPACE_FILE: &str = "user";

/// One line of a uid_map or gid_map: `size` ids from `container_id` inside map to `host_id` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// The id maps of a user namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMappings {
    pub uids: Vec<IdMapping>,
    pub gids: Vec<IdMapping>,
}

impl UserMappings {
    /// The host ids root (0) of the namespace is, if it is mapped.
    pub fn root(&self) -> Option<(u32, u32)> {
        let host = |maps: &[IdMapping]| maps.iter().find(|m| m.container_id == 0 && m.size > 0).map(|m| m.host_id);
        Some((host(&self.uids)?, host(&self.gids)?))
    }
}

fn render_map(maps: &[IdMapping]) -> String {
    maps.iter().map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size)).collect()
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
    /// A new user namespace with these maps, pinned as `dir/user`, owning the other namespaces. Only
    /// [`pin`] (the helper) can make one.
    #[serde(default)]
    pub user: Option<UserMappings>,
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
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RuntimeError::io("start the namespace helper", init_binary))?;
    let mut stdin = helper.stdin.take();
    let stdout = helper.stdout.take();
    let mut request_json = serde_json::to_vec(request).expect("pin requests serialize");
    request_json.push(b'\n');
    let written = stdin.as_mut().map(|pipe| pipe.write_all(&request_json));
    let mut conversation = Ok(());
    if request.user.is_some() {
        conversation = match (stdin.as_mut(), stdout) {
            (Some(stdin), Some(stdout)) => pin_user_namespace(helper.id(), request, stdin, stdout),
            _ => Err(RuntimeError::Setup("the namespace helper has no stdin or stdout".into())),
        };
    }
    // Closing stdin ends the helper (it waits for EOF once a user namespace is pinned).
    drop(stdin);
    let mut stderr = String::new();
    if let Some(mut pipe) = helper.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let status = helper.wait().map_err(RuntimeError::io("wait for the namespace helper", init_binary))?;
    if status.success() && matches!(written, Some(Ok(()))) && conversation.is_ok() {
        return Ok(());
    }
    let _ = unpin(&request.dir);
    let helper_said = stderr.trim().strip_prefix("berth pin: ").unwrap_or(stderr.trim()).to_owned();
    let reason = match conversation {
        // The helper's own message, when it failed first, says more than "it stopped talking".
        Err(err) if helper_said.is_empty() => berth_error_kind::chain(&err),
        Err(err) => format!("{helper_said} ({})", berth_error_kind::chain(&err)),
        Ok(()) => helper_said,
    };
    Err(RuntimeError::Setup(format!("pin namespaces in {}: {reason}", request.dir.display())))
}

/// The caller's turns when the helper makes a user namespace (see the module comment): map its ids, then
/// bind-mount its namespaces once it has made them.
fn pin_user_namespace(
    pid: u32,
    request: &PinRequest,
    stdin: &mut std::process::ChildStdin,
    stdout: std::process::ChildStdout,
) -> Result<()> {
    use std::io::BufRead;
    let mappings = request.user.as_ref().expect("asked with a user namespace");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut expect = |word: &str| -> Result<()> {
        match lines.next() {
            Some(Ok(line)) if line == word => Ok(()),
            Some(Ok(line)) => Err(RuntimeError::Setup(format!("the namespace helper said {line:?}, not {word:?}"))),
            _ => Err(RuntimeError::Setup(format!("the namespace helper stopped before {word:?}"))),
        }
    };
    expect("map")?;
    // gid_map first, like runc; setgroups stays allowed, since the writer has CAP_SETGID in the parent.
    for (file, maps) in [("gid_map", &mappings.gids), ("uid_map", &mappings.uids)] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, render_map(maps)).map_err(RuntimeError::io("write", &path))?;
    }
    stdin.write_all(b"mapped\n").map_err(RuntimeError::io("answer the namespace helper on", "stdin"))?;
    expect("pin")?;
    let mut files: Vec<&str> = vec![USER_NAMESPACE_FILE];
    files.extend(request.kinds.iter().map(|k| k.name()));
    for name in files {
        let target = request.dir.join(name);
        create_pin_file(&target)?;
        let source = format!("/proc/{pid}/ns/{name}");
        mount(Some(source.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(RuntimeError::sys(format!("bind {source} onto {}", target.display())))?;
    }
    Ok(())
}

fn create_pin_file(target: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(target)
        .map_err(RuntimeError::io("create the pin file", target))?;
    Ok(())
}

/// Pins the namespaces from a new thread of this process, which unshares them, sets them up and exits
/// (they stay alive through their bind mounts). On failure nothing is left pinned.
pub fn pin_in_thread(request: &PinRequest) -> Result<()> {
    if request.user.is_some() {
        return Err(RuntimeError::Setup(
            "a user namespace cannot be made from a thread of a multi-threaded process; use the helper (pin)".into(),
        ));
    }
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
    // The user namespace last: it owns the others (though each pin keeps its owner alive anyway).
    for name in [PinnedKind::Net.name(), PinnedKind::Ipc.name(), PinnedKind::Uts.name(), USER_NAMESPACE_FILE] {
        let path = dir.join(name);
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

/// Entry point of `berth __pin`: reads a [`PinRequest`] as one line of JSON on stdin. Never returns.
pub fn main() -> ! {
    use std::io::BufRead;
    let mut input = String::new();
    let mut stdin = std::io::stdin().lock();
    let outcome = stdin
        .read_line(&mut input)
        .map_err(RuntimeError::io("read the request from", "stdin"))
        .and_then(|_| {
            serde_json::from_str::<PinRequest>(&input)
                .map_err(|err| RuntimeError::Setup(format!("the pin request is not valid JSON: {err}")))
        })
        .and_then(|request| match request.user {
            Some(_) => pin_here_in_user_namespace(&request, &mut stdin),
            None => pin_here(&request),
        });
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

/// The helper's turns when it makes a user namespace (see the module comment); the caller bind-mounts.
fn pin_here_in_user_namespace(request: &PinRequest, stdin: &mut impl std::io::BufRead) -> Result<()> {
    crate::init::ensure_single_threaded()?;
    let mut stdout = std::io::stdout().lock();
    let mut say = |word: &str| {
        stdout
            .write_all(format!("{word}\n").as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(RuntimeError::io("talk to the caller on", "stdout"))
    };
    unshare(CloneFlags::CLONE_NEWUSER).map_err(RuntimeError::sys("unshare(CLONE_NEWUSER)"))?;
    say("map")?;
    let mut line = String::new();
    stdin.read_line(&mut line).map_err(RuntimeError::io("read from", "stdin"))?;
    if line.trim_end() != "mapped" {
        return Err(RuntimeError::Setup("the caller did not map the user namespace's ids".into()));
    }
    // Root of the new namespace, so files /proc/sys shows as the namespaces' root's (the IPC sysctls)
    // are ours to write.
    nix::unistd::setresgid(0.into(), 0.into(), 0.into())
        .map_err(RuntimeError::sys("setresgid(0) in the new user namespace"))?;
    nix::unistd::setresuid(0.into(), 0.into(), 0.into())
        .map_err(RuntimeError::sys("setresuid(0) in the new user namespace"))?;
    make_namespaces(request)?;
    say("pin")?;
    // Alive until the caller has bind-mounted our namespaces and closes stdin.
    let mut rest = Vec::new();
    let _ = stdin.read_to_end(&mut rest);
    Ok(())
}

/// Unshares the namespaces for the calling thread, configures them and bind-mounts them; `ns_dir` names
/// this thread's namespace files (`/proc/self/ns` in a single-threaded helper, `/proc/thread-self/ns` on a
/// thread). sysctls are written through /proc/sys, which shows the writing thread's namespaces.
fn pin_current_thread(request: &PinRequest, ns_dir: &str) -> Result<()> {
    make_namespaces(request)?;
    for kind in &request.kinds {
        let target = request.path(*kind);
        create_pin_file(&target)?;
        let source = format!("{ns_dir}/{}", kind.name());
        mount(Some(source.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(RuntimeError::sys(format!("bind {source} onto {}", target.display())))?;
    }
    Ok(())
}

/// Unshares the requested namespaces and sets their hostname and sysctls (everything but pinning them).
fn make_namespaces(request: &PinRequest) -> Result<()> {
    let mut flags = CloneFlags::empty();
    for kind in &request.kinds {
        flags |= kind.flag();
    }
    unshare(flags).map_err(RuntimeError::sys(format!("unshare({flags:?})")))?;
    if request.kinds.contains(&PinnedKind::Net) {
        crate::namespaces::bring_up_loopback()
            .map_err(|err| RuntimeError::Setup(format!("bring up lo in the new network namespace: {err}")))?;
    }
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
    Ok(())
}
