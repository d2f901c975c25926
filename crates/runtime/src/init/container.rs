//! The container process, from its clone to execve: root filesystem, stdio, process attributes, the start
//! gate, and the exec itself.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::LinuxNamespaceType;

use super::{Never, console, fail, process, rootfs};
use crate::error::{Result, RuntimeError};
use crate::sync::{Channel, InitConfig, Message};
use crate::{hooks, namespaces};

pub(super) fn run(channel: &Channel, config: InitConfig, fds: Vec<OwnedFd>) -> ! {
    match setup(channel, &config, fds) {
        Ok(never) => match never {},
        Err(err) => fail(channel, &err),
    }
}

fn setup(channel: &Channel, config: &InitConfig, fds: Vec<OwnedFd>) -> Result<Never> {
    let spec = &config.spec;
    let process_spec = spec
        .process()
        .as_ref()
        .ok_or_else(|| RuntimeError::InvalidSpec { path: "config.json".into(), reason: "no process".into() })?;
    let mut fds = fds.into_iter();
    let stdio: Vec<OwnedFd> = fds.by_ref().take(3).collect();
    let console_socket = if config.console_fd { fds.next() } else { None };
    nix::unistd::setsid().map_err(RuntimeError::sys("setsid"))?;

    if config.join_pid.is_none() {
        // Devices and directories get exactly the modes the spec asks for; process.user.umask applies later.
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        // The caller opened the gate (O_PATH) and sent it after stdio and the console socket.
        let gate = match &config.exec_fifo {
            Some(path) => Some(fds.next().ok_or_else(|| RuntimeError::Init {
                id: config.id.clone(),
                message: format!("the runtime sent no descriptor of the start gate {}", path.display()),
            })?),
            None => None,
        };
        let has_mount_namespace = namespaces::has(spec, LinuxNamespaceType::Mount);
        rootfs::prepare(spec, &config.rootfs, has_mount_namespace, &config.cgroup_path, &config.cgroup_layout)?;
        let spec_hooks = spec.hooks().clone().unwrap_or_default();
        if spec_hooks.create_runtime().as_ref().is_some_and(|h| !h.is_empty())
            || spec_hooks.prestart().as_ref().is_some_and(|h| !h.is_empty())
        {
            channel.send(&Message::RunHooks)?;
            match channel.receive()? {
                Some((Message::HooksDone, _)) => {}
                _ => {
                    return Err(RuntimeError::Init {
                        id: config.id.clone(),
                        message: "the runtime did not run the hooks".into(),
                    });
                }
            }
        }
        if let Some(create_container) = spec_hooks.create_container() {
            hooks::run("createContainer", create_container, &hook_state(config, "created"))?;
        }
        rootfs::enter(&config.rootfs, has_mount_namespace)?;
        rootfs::finish(spec)?;
        connect_stdio(stdio, console_socket, process_spec)?;
        let prepared = process::prepare(spec)?;
        channel.send(&Message::Ready)?;
        if let Some(gate) = gate {
            if namespaces::has(spec, LinuxNamespaceType::User) {
                // A non-dumpable process's /proc/self/fd belongs to the host's root, which a user namespace
                // cannot reach; the gate is reopened through it. In a fresh user namespace nothing else runs
                // yet; in a joined one (a pod's) the other containers run as ids of that namespace, which
                // own nothing of the host's: the berth binary /proc/self/exe leads to stays out of reach.
                nix::sys::prctl::set_dumpable(true).map_err(RuntimeError::sys("prctl(PR_SET_DUMPABLE, 1)"))?;
            }
            wait_for_start(&gate)?;
        }
        if let Some(start_container) = spec_hooks.start_container() {
            hooks::run("startContainer", start_container, &hook_state(config, "running"))?;
        }
        process::exec(prepared)
    } else {
        // exec into a running container: its namespaces were entered by the helper; the channel closes on
        // a successful execve (close-on-exec), which is how the runtime learns it worked.
        connect_stdio(stdio, console_socket, process_spec)?;
        let prepared = process::prepare(spec)?;
        process::exec(prepared)
    }
}

fn connect_stdio(
    stdio: Vec<OwnedFd>,
    console_socket: Option<OwnedFd>,
    process_spec: &oci_spec::runtime::Process,
) -> Result<()> {
    if process_spec.terminal() == Some(true) {
        let socket = console_socket.ok_or_else(|| RuntimeError::InvalidSpec {
            path: "config.json".into(),
            reason: "process.terminal is true but no console socket was given".into(),
        })?;
        return console::setup(&socket, process_spec.console_size().as_ref());
    }
    for (target, fd) in stdio.iter().enumerate() {
        let mut target_fd = super::unsafe_target(target as i32);
        let result = nix::unistd::dup2(fd, &mut target_fd);
        std::mem::forget(target_fd);
        result.map_err(RuntimeError::sys(format!("dup2 the container's stdio onto fd {target}")))?;
    }
    reopen_dev_null()
}

/// A stdio descriptor on the host's /dev/null (a stream the container was not given) is opened again on the
/// container's own /dev/null, as runc does: one on a mount outside the container's mount namespace is a
/// file CRIU cannot find when it checkpoints the container.
fn reopen_dev_null() -> Result<()> {
    let Ok(container_null) = nix::sys::stat::stat("/dev/null") else { return Ok(()) };
    for target in 0..3 {
        let target_fd = super::unsafe_target(target);
        let current = nix::sys::stat::fstat(&target_fd);
        let flags = nix::fcntl::fcntl(&target_fd, nix::fcntl::FcntlArg::F_GETFL);
        std::mem::forget(target_fd);
        let (Ok(current), Ok(flags)) = (current, flags) else { continue };
        let is_null = current.st_mode & libc::S_IFMT == libc::S_IFCHR && current.st_rdev == container_null.st_rdev;
        if !is_null || (current.st_dev, current.st_ino) == (container_null.st_dev, container_null.st_ino) {
            continue;
        }
        let access = nix::fcntl::OFlag::from_bits_truncate(flags) & nix::fcntl::OFlag::O_ACCMODE;
        let reopened =
            nix::fcntl::open("/dev/null", access | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
                .map_err(RuntimeError::sys("open the container's /dev/null"))?;
        let mut target_fd = super::unsafe_target(target);
        let result = nix::unistd::dup2(&reopened, &mut target_fd);
        std::mem::forget(target_fd);
        result.map_err(RuntimeError::sys(format!("dup2 the container's /dev/null onto fd {target}")))?;
    }
    Ok(())
}

/// The OCI state hooks run from inside the container receive (runtime.md "State"; this process is its init).
fn hook_state(config: &InitConfig, status: &str) -> serde_json::Value {
    serde_json::json!({"ociVersion": config.spec.version(), "id": config.id, "status": status,
        "pid": std::process::id(), "bundle": config.rootfs.parent()})
}

/// Blocks until `start` opens the gate for reading, then tells it we are through.
fn wait_for_start(gate: &OwnedFd) -> Result<()> {
    let path = format!("/proc/self/fd/{}", gate.as_raw_fd());
    let opened = nix::fcntl::open(
        Path::new(&path),
        nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(RuntimeError::sys("wait at the start gate"))?;
    nix::unistd::write(&opened, b"0").map_err(RuntimeError::sys("pass the start gate"))?;
    Ok(())
}
