//! Idmapped bind mounts: spec mounts with the `idmap` or `ridmap` option (runtime-spec config.md, "Mounts":
//! without `uidMappings`/`gidMappings` of its own the mount takes the container's user namespace's maps).
//!
//! An idmapped mount of a host filesystem can only be made with privilege over that filesystem's user
//! namespace (the host's), so it is made by the helper before it joins the container's user namespace,
//! and only for a user namespace joined by path (a pod's), whose maps exist already. The helper moves into
//! a private mount namespace first, attaches each idmapped copy under a tmpfs at `<state dir>/idmap/<n>`
//! there, and points the spec mount at it; the container's mount namespace, made later as a copy of that
//! one, binds it like any other source. Nothing is attached in the host's mount namespace, and everything
//! goes when the container's setup detaches its old root.

use std::os::fd::AsFd;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use oci_spec::runtime::LinuxNamespaceType;

use crate::error::{Result, RuntimeError};
use crate::mount_api::{attach, idmapped_clone};
use crate::namespaces;
use crate::sync::InitConfig;

/// Whether a mount asks to be idmapped: Some(recursive).
fn idmap_option(options: &[String]) -> Option<bool> {
    if options.iter().any(|o| o == "ridmap") {
        Some(true)
    } else if options.iter().any(|o| o == "idmap") {
        Some(false)
    } else {
        None
    }
}

/// Makes the idmapped copies of the spec's `idmap`/`ridmap` mounts and rewrites those mounts to bind them
/// (see the module comment). Does nothing, and changes no namespace, when no mount asks for it.
pub(super) fn stage(config: &mut InitConfig) -> Result<()> {
    let mut mounts = config.spec.mounts().clone().unwrap_or_default();
    if !mounts.iter().any(|m| idmap_option(m.options().as_deref().unwrap_or_default()).is_some()) {
        return Ok(());
    }
    let invalid = |reason: String| RuntimeError::InvalidSpec { path: "config.json".into(), reason };
    let userns = namespaces::of(&config.spec)
        .into_iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::User)
        .and_then(|ns| ns.path().clone())
        .ok_or_else(|| {
            invalid("idmapped mounts (idmap, ridmap) need a user namespace joined by path (linux.namespaces)".into())
        })?;
    if !namespaces::creates(&config.spec, LinuxNamespaceType::Mount) {
        return Err(invalid("idmapped mounts (idmap, ridmap) need a new mount namespace".into()));
    }
    let state_dir =
        config.exec_fifo.as_deref().and_then(Path::parent).ok_or_else(|| {
            invalid("idmapped mounts (idmap, ridmap) are only made when a container is created".into())
        })?;
    let userns_file = std::fs::File::open(&userns).map_err(RuntimeError::io("open the user namespace", &userns))?;

    // A private mount namespace, receiving from the host's but never propagating back to it.
    unshare(CloneFlags::CLONE_NEWNS).map_err(RuntimeError::sys("unshare(CLONE_NEWNS) for idmapped mounts"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_SLAVE | MsFlags::MS_REC, None::<&str>)
        .map_err(RuntimeError::sys("make / rslave in the idmap staging namespace"))?;
    let staging = state_dir.join("idmap");
    std::fs::create_dir_all(&staging).map_err(RuntimeError::io("create the idmap staging directory", &staging))?;
    mount(Some("tmpfs"), &staging, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0711,size=64k"))
        .map_err(RuntimeError::sys(format!("mount a tmpfs on {}", staging.display())))?;

    for (index, spec_mount) in mounts.iter_mut().enumerate() {
        let options = spec_mount.options().clone().unwrap_or_default();
        let Some(recursive) = idmap_option(&options) else { continue };
        let bind = super::is_bind_mount(spec_mount);
        let destination = spec_mount.destination().display().to_string();
        if !bind {
            return Err(invalid(format!("mount {destination}: idmap and ridmap are only supported on bind mounts")));
        }
        let source = spec_mount.source().clone().ok_or_else(|| invalid(format!("mount {destination}: no source")))?;
        let at = staging.join(index.to_string());
        let is_dir = std::fs::metadata(&source).map_err(RuntimeError::io("stat the mount source", &source))?.is_dir();
        if is_dir {
            std::fs::create_dir(&at).map_err(RuntimeError::io("create", &at))?;
        } else {
            std::fs::write(&at, b"").map_err(RuntimeError::io("create", &at))?;
        }
        let tree = idmapped_clone(&source, userns_file.as_fd(), recursive).map_err(|err| {
            RuntimeError::sys(format!(
                "make an idmapped mount of {} for {destination} through the user namespace {}",
                source.display(),
                userns.display()
            ))(errno(err))
        })?;
        attach(tree.as_fd(), &at)
            .map_err(|err| RuntimeError::sys(format!("attach the idmapped mount at {}", at.display()))(errno(err)))?;
        spec_mount.set_source(Some(at));
        spec_mount.set_options(Some(options.into_iter().filter(|o| o != "idmap" && o != "ridmap").collect()));
    }
    config.spec.set_mounts(Some(mounts));
    Ok(())
}

/// The errno of a failed syscall, for `RuntimeError::sys`.
fn errno(err: std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

#[cfg(test)]
mod tests {
    use super::idmap_option;

    #[test]
    fn idmap_options_are_recognised() {
        let options = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(idmap_option(&options(&["rbind", "ridmap"])), Some(true));
        assert_eq!(idmap_option(&options(&["bind", "idmap", "ro"])), Some(false));
        assert_eq!(idmap_option(&options(&["rbind", "rprivate"])), None);
    }
}
