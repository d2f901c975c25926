//! The channel between the runtime (the caller) and its init helper: a SOCK_SEQPACKET socket pair carrying
//! one JSON message per packet, with file descriptors (container stdio, console socket) passed alongside.
//!
//! The helper receives its end as standard input, because passing it any other way would mean running code
//! between fork and exec in a possibly multi-threaded caller (`std::process::Command` can map stdin, and
//! nothing more is needed).

use std::io::IoSlice;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use serde::{Deserialize, Serialize};

use crate::error::{Result, RuntimeError};

/// Largest message: a spec with a full seccomp profile is tens of KiB.
const MAX_MESSAGE: usize = 4 << 20;

/// What init needs to know to build the container (or the exec'd process).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitConfig {
    pub id: String,
    /// The spec to apply; for an exec, the container's spec with `process` replaced by the new process.
    pub spec: oci_spec::runtime::Spec,
    /// The container's root filesystem, absolute.
    pub rootfs: std::path::PathBuf,
    /// The start gate a created container waits on (create only).
    pub exec_fifo: Option<std::path::PathBuf>,
    /// The container's cgroup, relative to each hierarchy's root (for cgroup mounts).
    pub cgroup_path: std::path::PathBuf,
    /// Where the host's hierarchies are mounted (for cgroup mounts), as the runtime found them: the init
    /// need not read /proc/self/mountinfo again.
    pub cgroup_layout: crate::cgroups::Layout,
    /// Joining a running container (exec): its init's pid, whose namespaces are entered.
    pub join_pid: Option<i32>,
    /// Whether a console socket follows the three stdio fds.
    pub console_fd: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Runtime → helper: what to build. Followed by fds: stdin, stdout, stderr, then the console socket if any.
    Bootstrap(Box<InitConfig>),
    /// Helper → runtime: write my uid_map and gid_map (a new user namespace cannot map itself).
    MapIds,
    /// Runtime → helper: maps written.
    IdsMapped,
    /// Helper → runtime: the container process's pid, in the runtime's PID namespace.
    Pid { pid: i32 },
    /// Container → runtime: namespaces and mounts exist, run createRuntime and prestart hooks now.
    RunHooks,
    /// Runtime → container: hooks done, continue.
    HooksDone,
    /// Container → runtime: set up; waiting on the start gate (create) or about to execve (exec).
    Ready,
    /// Helper or container → runtime: this step failed; the process exits after sending it.
    Error { message: String },
}

/// One end of the channel.
#[derive(Debug)]
pub struct Channel {
    socket: OwnedFd,
}

impl Channel {
    /// A connected pair, close-on-exec on both ends (the helper's end is made its stdin by Command).
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(RuntimeError::sys("socketpair for the init channel"))?;
        Ok((Channel { socket: a }, Channel { socket: b }))
    }

    pub fn from_fd(socket: OwnedFd) -> Channel {
        Channel { socket }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.socket
    }

    pub fn send(&self, message: &Message) -> Result<()> {
        self.send_with_fds(message, &[])
    }

    pub fn send_with_fds(&self, message: &Message, fds: &[RawFd]) -> Result<()> {
        let bytes = serde_json::to_vec(message).expect("messages serialize");
        let iov = [IoSlice::new(&bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let control: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        loop {
            match sendmsg::<()>(self.socket.as_raw_fd(), &iov, control, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => return Err(RuntimeError::sys("send on the init channel")(errno)),
            }
        }
    }

    /// The next message and the fds that came with it; `None` when the other side closed.
    pub fn receive(&self) -> Result<Option<(Message, Vec<OwnedFd>)>> {
        let mut buffer = vec![0u8; MAX_MESSAGE];
        let mut control = nix::cmsg_space!([RawFd; 8]);
        let (length, fds) = loop {
            let mut iov = [std::io::IoSliceMut::new(&mut buffer)];
            match recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(&mut control), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(received) => {
                    let mut fds = Vec::new();
                    for message in received.cmsgs().map_err(RuntimeError::sys("read fds from the init channel"))? {
                        if let ControlMessageOwned::ScmRights(raw) = message {
                            // SAFETY: the kernel just installed these descriptors in this process for us; nothing
                            // else owns them.
                            fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
                        }
                    }
                    break (received.bytes, fds);
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => return Err(RuntimeError::sys("receive on the init channel")(errno)),
            }
        };
        if length == 0 {
            return Ok(None);
        }
        let message = serde_json::from_slice(&buffer[..length]).map_err(|err| RuntimeError::Init {
            id: String::new(),
            message: format!("garbled message on the init channel: {err}"),
        })?;
        Ok(Some((message, fds)))
    }
}
