//! Applying CDI devices' edits ([`crate::cdi`]) to a built spec, in the order the devices were asked for:
//! environment variables (a key already set is replaced), device nodes with a device cgroup rule each,
//! mounts (kept in depth order with the others), OCI hooks and additional groups.

use std::path::Path;

use oci_spec::runtime::{
    Hook, HookBuilder, Hooks, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, MountBuilder, Spec,
};

use super::Problem;
use crate::cdi::{CdiHook, CdiMount, ContainerEdits, DeviceNode};

pub(crate) fn apply(spec: &mut Spec, edits: &[ContainerEdits], privileged: bool) -> Result<(), Problem> {
    for edit in edits {
        for variable in &edit.env {
            set_env(spec, variable)?;
        }
        for node in &edit.device_nodes {
            add_device(spec, node, privileged)?;
        }
        for mount in &edit.mounts {
            add_mount(spec, mount)?;
        }
        for hook in &edit.hooks {
            add_hook(spec, hook)?;
        }
        if !edit.additional_gids.is_empty()
            && let Some(process) = spec.process_mut()
        {
            let gids = process.user_mut().additional_gids_mut().get_or_insert_with(Vec::new);
            for gid in &edit.additional_gids {
                if !gids.contains(gid) {
                    gids.push(*gid);
                }
            }
        }
    }
    // A mount must come after the mounts above it: keep the list in depth order (stable, so equals keep
    // their order).
    if let Some(mounts) = spec.mounts_mut() {
        mounts.sort_by_key(|m| m.destination().components().count());
    }
    Ok(())
}

fn set_env(spec: &mut Spec, variable: &str) -> Result<(), Problem> {
    let Some((key, _)) = variable.split_once('=') else {
        return Err(Problem::Invalid(format!("CDI environment variable {variable:?} is not KEY=VALUE")));
    };
    if let Some(process) = spec.process_mut() {
        let env = process.env_mut().get_or_insert_with(Vec::new);
        env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key));
        env.push(variable.to_owned());
    }
    Ok(())
}

fn add_device(spec: &mut Spec, node: &DeviceNode, privileged: bool) -> Result<(), Problem> {
    if !node.path.starts_with('/') {
        return Err(Problem::Invalid(format!("CDI device node {:?} is not an absolute path", node.path)));
    }
    let host = node.host_path.as_deref().unwrap_or(&node.path);
    let permissions = node.permissions.as_deref().unwrap_or("rwm");
    if permissions.is_empty() || !permissions.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
        return Err(Problem::Invalid(format!("CDI device node {}: permissions {permissions:?}", node.path)));
    }
    // The host's node decides type and numbers; a spec may describe one the host does not have.
    let device = match std::fs::metadata(host) {
        Ok(metadata) => super::devices::device_node(Path::new(&node.path), &metadata)?
            .ok_or_else(|| Problem::Invalid(format!("CDI device node {host} is not a device")))?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let (Some(typ), Some(major), Some(minor)) = (node.typ.as_deref(), node.major, node.minor) else {
                return Err(Problem::Invalid(format!(
                    "CDI device node {host} does not exist on this node and its spec gives no type, major and minor"
                )));
            };
            let typ = match typ {
                "c" | "u" => LinuxDeviceType::C,
                "b" => LinuxDeviceType::B,
                "p" => LinuxDeviceType::P,
                other => return Err(Problem::Invalid(format!("CDI device node {}: type {other:?}", node.path))),
            };
            LinuxDeviceBuilder::default()
                .path(&node.path)
                .typ(typ)
                .major(major)
                .minor(minor)
                .file_mode(0o666u32)
                .build()?
        }
        Err(err) => return Err(Problem::Io { step: "stat the CDI device node", path: host.into(), source: err }),
    };
    let mut device = device;
    if let Some(mode) = node.file_mode {
        device.set_file_mode(Some(mode & 0o7777));
    }
    if let Some(uid) = node.uid {
        device.set_uid(Some(uid));
    }
    if let Some(gid) = node.gid {
        device.set_gid(Some(gid));
    }
    let rule = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(device.typ())
        .major(device.major())
        .minor(device.minor())
        .access(permissions)
        .build()?;
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    let devices = linux.devices_mut().get_or_insert_with(Vec::new);
    devices.retain(|d| d.path() != device.path());
    devices.push(device);
    // A privileged container may use every device already.
    if !privileged {
        let resources = linux.resources_mut().get_or_insert_with(Default::default);
        resources.devices_mut().get_or_insert_with(Vec::new).push(rule);
    }
    Ok(())
}

fn add_mount(spec: &mut Spec, mount: &CdiMount) -> Result<(), Problem> {
    if !mount.container_path.starts_with('/') {
        return Err(Problem::Invalid(format!("CDI mount {:?} is not an absolute path", mount.container_path)));
    }
    let typ = mount.typ.clone().unwrap_or_else(|| "bind".to_owned());
    let mut options = mount.options.clone();
    if typ == "bind" && !options.iter().any(|o| o == "bind" || o == "rbind") {
        options.insert(0, "bind".to_owned());
    }
    let built = MountBuilder::default()
        .destination(&mount.container_path)
        .source(&mount.host_path)
        .typ(typ)
        .options(options)
        .build()?;
    let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
    mounts.retain(|m| m.destination() != built.destination());
    mounts.push(built);
    Ok(())
}

fn add_hook(spec: &mut Spec, hook: &CdiHook) -> Result<(), Problem> {
    let mut built = HookBuilder::default().path(&hook.path);
    if !hook.args.is_empty() {
        built = built.args(hook.args.clone());
    }
    if !hook.env.is_empty() {
        built = built.env(hook.env.clone());
    }
    if let Some(timeout) = hook.timeout {
        built = built.timeout(timeout);
    }
    let built: Hook = built.build()?;
    let hooks = spec.hooks_mut().get_or_insert_with(Hooks::default);
    #[allow(deprecated)] // prestart: what CDI specs written for older runtimes still use
    let list = match hook.hook_name.as_str() {
        "prestart" => hooks.prestart_mut(),
        "createRuntime" => hooks.create_runtime_mut(),
        "createContainer" => hooks.create_container_mut(),
        "startContainer" => hooks.start_container_mut(),
        "poststart" => hooks.poststart_mut(),
        "poststop" => hooks.poststop_mut(),
        other => return Err(Problem::Invalid(format!("CDI hook {}: unknown hook name {other:?}", hook.path))),
    };
    list.get_or_insert_with(Vec::new).push(built);
    Ok(())
}
