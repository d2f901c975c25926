//! A container's device nodes and device cgroup rules: the CRI's devices, or every host device for a
//! privileged container.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use nix::sys::stat::{major, minor};
use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
};

use super::Problem;
use crate::cri::v1 as cri;

pub(crate) struct Devices {
    /// Nodes to create in the container's /dev.
    pub nodes: Vec<LinuxDevice>,
    /// Device cgroup rules, in order.
    pub rules: Vec<LinuxDeviceCgroup>,
}

/// The devices every container may use (runc's defaults, which the runtime crate also always allows): mknod
/// of anything, null, zero, full, random, urandom, tty, console, ptmx and the pseudo-terminals.
const DEFAULT_ALLOWED: [(LinuxDeviceType, Option<i64>, Option<i64>, &str); 11] = [
    (LinuxDeviceType::C, None, None, "m"),
    (LinuxDeviceType::B, None, None, "m"),
    (LinuxDeviceType::C, Some(1), Some(3), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(5), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(7), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(8), "rwm"),
    (LinuxDeviceType::C, Some(1), Some(9), "rwm"),
    (LinuxDeviceType::C, Some(5), Some(0), "rwm"),
    (LinuxDeviceType::C, Some(5), Some(1), "rwm"),
    (LinuxDeviceType::C, Some(5), Some(2), "rwm"),
    (LinuxDeviceType::C, Some(136), None, "rwm"),
];

fn rule(
    allow: bool,
    typ: Option<LinuxDeviceType>,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> Result<LinuxDeviceCgroup, Problem> {
    let mut builder = LinuxDeviceCgroupBuilder::default().allow(allow).access(access);
    if let Some(typ) = typ {
        builder = builder.typ(typ);
    }
    if let Some(major) = major {
        builder = builder.major(major);
    }
    if let Some(minor) = minor {
        builder = builder.minor(minor);
    }
    Ok(builder.build()?)
}

/// The node of a host device file, or None when the file is not a character or block device.
pub(crate) fn device_node(container: &Path, metadata: &std::fs::Metadata) -> Result<Option<LinuxDevice>, Problem> {
    let file_type = metadata.file_type();
    let typ = if file_type.is_char_device() {
        LinuxDeviceType::C
    } else if file_type.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Ok(None);
    };
    Ok(Some(
        LinuxDeviceBuilder::default()
            .path(container)
            .typ(typ)
            .major(major(metadata.rdev()) as i64)
            .minor(minor(metadata.rdev()) as i64)
            .file_mode(metadata.mode() & 0o777)
            .uid(metadata.uid())
            .gid(metadata.gid())
            .build()?,
    ))
}

/// Every device under a host directory, at the same relative place under `container`. Like containerd (and
/// runc's `HostDevices`), the pseudo-terminal, shm, fd and mqueue directories and /dev/console are skipped,
/// symlinks are not followed, and what cannot be read is left out.
fn devices_under(host: &Path, container: &Path, nodes: &mut Vec<LinuxDevice>) -> Result<(), Problem> {
    let Ok(entries) = std::fs::read_dir(host) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Ok(metadata) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if metadata.is_dir() {
            if matches!(name.to_str(), Some("pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev")) {
                continue;
            }
            devices_under(&entry.path(), &container.join(&name), nodes)?;
        } else if name != "console" {
            nodes.extend(device_node(&container.join(&name), &metadata)?);
        }
    }
    Ok(())
}

fn valid_permissions(permissions: &str) -> bool {
    !permissions.is_empty() && permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm'))
}

/// The CRI's devices (a host directory adds every device under it) with an allow rule each; for a
/// privileged container every host device as well, and every device allowed.
pub(crate) fn devices(requested: &[cri::Device], privileged: bool) -> Result<Devices, Problem> {
    let mut nodes: Vec<LinuxDevice> = Vec::new();
    if privileged {
        devices_under(Path::new("/dev"), Path::new("/dev"), &mut nodes)?;
    }
    let mut rules = vec![rule(false, None, None, None, "rwm")?];
    if privileged {
        rules.push(rule(true, None, None, None, "rwm")?);
    } else {
        for (typ, major, minor, access) in DEFAULT_ALLOWED {
            rules.push(rule(true, Some(typ), major, minor, access)?);
        }
    }
    for device in requested {
        let permissions = if device.permissions.is_empty() { "rwm" } else { device.permissions.as_str() };
        if !valid_permissions(permissions) {
            return Err(Problem::Invalid(format!(
                "device {}: permissions {:?} are not a combination of r, w and m",
                device.host_path, device.permissions
            )));
        }
        let container_path = if device.container_path.is_empty() { &device.host_path } else { &device.container_path };
        if !container_path.starts_with('/') {
            return Err(Problem::Invalid(format!("device path {container_path:?} is not absolute")));
        }
        let host = Path::new(&device.host_path);
        let metadata = std::fs::metadata(host).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                Problem::Invalid(format!("device {} does not exist on this node", device.host_path))
            } else {
                Problem::Io { step: "stat the device", path: host.into(), source: err }
            }
        })?;
        let mut added = Vec::new();
        if metadata.is_dir() {
            devices_under(host, Path::new(container_path), &mut added)?;
        } else {
            match device_node(Path::new(container_path), &metadata)? {
                Some(node) => added.push(node),
                None => {
                    return Err(Problem::Invalid(format!("{} is not a device", device.host_path)));
                }
            }
        }
        for node in added {
            if !privileged {
                rules.push(rule(true, Some(node.typ()), Some(node.major()), Some(node.minor()), permissions)?);
            }
            nodes.retain(|n| n.path() != node.path());
            nodes.push(node);
        }
    }
    Ok(Devices { nodes, rules })
}
