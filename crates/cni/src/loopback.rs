//! Bringing `lo` up inside a pod's network namespace, in-process.
//!
//! A fresh network namespace has `lo` down; Kubernetes pods expect 127.0.0.1 to work whatever the CNI
//! configuration says, so berth does it itself instead of relying on a `loopback` plugin in the chain.
//! Network namespaces are per thread: a dedicated, short-lived thread joins the pod's namespace with setns(2)
//! and sets `IFF_UP` with the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls (netdevice(7)). No other thread ever changes
//! namespace, and the thread ends right after, so nothing else in the daemon can run in the wrong namespace.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::thread::LinkNameSpaceType;

/// Sets `lo` up in the network namespace bound at `netns` (a bind mount or `/proc/<pid>/ns/net`).
pub fn bring_up_loopback(netns: &Path) -> std::io::Result<()> {
    let namespace = std::fs::File::open(netns)?;
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new().name("cni-loopback".into()).spawn_scoped(scope, || {
            rustix::thread::move_into_link_name_space(namespace.as_fd(), Some(LinkNameSpaceType::Network))?;
            set_up("lo")
        })?;
        worker.join().map_err(|_| std::io::Error::other("the loopback thread panicked"))?
    })
}

fn set_up(name: &str) -> std::io::Result<()> {
    let socket = rustix::net::socket_with(AddressFamily::INET, SocketType::DGRAM, SocketFlags::CLOEXEC, None)?;
    let mut request = interface_request(name)?;
    // SAFETY: `request` is a fully initialised `ifreq` naming the interface with a NUL-terminated name;
    // SIOCGIFFLAGS writes only `ifr_ifru.ifru_flags` inside it, and the socket fd is open for the call.
    let got = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just filled the `ifru_flags` member of the union, so reading it is reading
    // initialised data of the right type.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads the request.
    let set = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) };
    if set < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn interface_request(name: &str) -> std::io::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ || name.as_bytes().contains(&0) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad interface name"));
    }
    // SAFETY: `ifreq` is plain old data (arrays and a union of integers/pointers); all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    Ok(request)
}
