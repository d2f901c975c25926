//! Linux namespaces as the spec names them: which to create, which to join by path, and in what order.

use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};

/// The clone flag of a namespace type.
pub fn flag(kind: LinuxNamespaceType) -> CloneFlags {
    match kind {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        // CLONE_NEWTIME (kernel 5.6) is not in every libc/nix release; the value is fixed by the kernel ABI.
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(0x0000_0080),
    }
}

/// The file name under /proc/<pid>/ns/ of a namespace type.
pub fn proc_name(kind: LinuxNamespaceType) -> &'static str {
    match kind {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

/// All namespace types, user first: joining or creating the user namespace decides what the rest may do.
pub const ALL: [LinuxNamespaceType; 8] = [
    LinuxNamespaceType::User,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Cgroup,
    LinuxNamespaceType::Time,
];

/// The spec's namespace list (empty when absent).
pub fn of(spec: &Spec) -> Vec<LinuxNamespace> {
    spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default()
}

/// Whether the spec lists a namespace of this type (new or joined).
pub fn has(spec: &Spec, kind: LinuxNamespaceType) -> bool {
    of(spec).iter().any(|ns| ns.typ() == kind)
}

/// Whether the spec creates a new namespace of this type (listed without a path).
pub fn creates(spec: &Spec, kind: LinuxNamespaceType) -> bool {
    of(spec).iter().any(|ns| ns.typ() == kind && ns.path().is_none())
}

/// The /proc/sys file of a sysctl (`net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`), or `None` for a
/// name that could leave /proc/sys. Written from inside the namespaces it belongs to.
pub fn sysctl_file(key: &str) -> Option<std::path::PathBuf> {
    if key.split(['.', '/']).any(|part| part.is_empty() || part == "..") {
        return None;
    }
    Some(std::path::Path::new("/proc/sys").join(key.replace('.', "/")))
}

/// Sets `lo` up in the calling thread's network namespace. A new network namespace has it down, and
/// Kubernetes pods expect 127.0.0.1 to work whatever their CNI configuration says, so whoever makes a pod's
/// network namespace brings it up there, while it is inside (no setns needed). SIOCGIFFLAGS/SIOCSIFFLAGS on
/// any socket of the namespace (netdevice(7)).
pub fn bring_up_loopback() -> std::io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use std::os::fd::AsRawFd;

    let socket = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // SAFETY: `ifreq` is plain old data (arrays and a union of integers/pointers); all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `request` names the interface with a NUL-terminated name (the rest is zero); SIOCGIFFLAGS
    // writes only `ifr_ifru.ifru_flags` inside it, and the socket is open for the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS just filled the `ifru_flags` member of the union.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: as above; SIOCSIFFLAGS only reads the request.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
