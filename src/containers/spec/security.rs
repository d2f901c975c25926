//! Capabilities, masked and read-only paths and AppArmor of a container, from its CRI security context.
//! Seccomp is in `seccomp.rs`, users and groups in `user.rs`.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities, LinuxCapabilitiesBuilder};

use super::Problem;
use crate::cri::v1 as cri;

/// containerd's default set for unprivileged containers (Docker's since 1.x).
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// kubelet's defaults (`securitycontext.DefaultProcMount`), used when the CRI gives no list.
const DEFAULT_MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const DEFAULT_READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The AppArmor profile berth asks for as RuntimeDefault, when an administrator loaded one by that name.
pub(crate) const APPARMOR_DEFAULT_PROFILE: &str = "berth-default";

/// The process's capability sets: bounding = effective = permitted; inheritable = ambient (what
/// `add_ambient_capabilities` asks for, as containerd sets them).
#[derive(Debug, Clone, Default)]
pub(crate) struct CapabilitySets {
    pub bounding: Capabilities,
    pub ambient: Capabilities,
}

impl CapabilitySets {
    pub(crate) fn to_oci(&self) -> Result<LinuxCapabilities, Problem> {
        Ok(LinuxCapabilitiesBuilder::default()
            .bounding(self.bounding.clone())
            .effective(self.bounding.clone())
            .permitted(self.bounding.clone())
            .inheritable(self.ambient.clone())
            .ambient(self.ambient.clone())
            .build()?)
    }
}

/// A capability by its CRI or OCI name, with or without `CAP_`, in any case.
pub(crate) fn parse_capability(name: &str) -> Result<Capability, Problem> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| Problem::Invalid(format!("unknown capability {name:?}")))
}

/// What "all capabilities" means for a container: every capability berth itself holds in its effective set,
/// read once. A container cannot be given a capability its runtime lacks (capset would fail with EPERM in
/// the container's init), so privileged containers and `add: [ALL]` get this set, as containerd gives them
/// its own effective set (`cap.Current()`). On a host where root lacks a capability (a container or VM
/// without CAP_SYS_RESOURCE, say) privileged pods still start.
pub(crate) fn all_capabilities() -> Capabilities {
    static HELD: std::sync::OnceLock<Capabilities> = std::sync::OnceLock::new();
    HELD.get_or_init(|| {
        let held = match caps::read(None, caps::CapSet::Effective) {
            Ok(held) => held,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read berth's own capabilities; assuming every known one");
                caps::all()
            }
        };
        let missing: Vec<String> = caps::all().difference(&held).map(|c| c.to_string()).collect();
        if !missing.is_empty() {
            tracing::debug!(
                missing = %missing.join(","),
                "berth lacks these capabilities, so no container can get them (privileged ones included)"
            );
        }
        held.iter().filter_map(|c| parse_capability(&c.to_string()).ok()).collect()
    })
    .clone()
}

/// A capability a container asks for by name, which berth must hold to hand it on.
fn held_capability(name: &str, held: &Capabilities) -> Result<Capability, Problem> {
    let capability = parse_capability(name)?;
    if !held.contains(&capability) {
        return Err(Problem::Invalid(format!(
            "capability {name:?} was asked for, but berth itself does not hold it (not in its effective set), \
             so no container on this node can have it"
        )));
    }
    Ok(capability)
}

fn is_all(name: &str) -> bool {
    name.eq_ignore_ascii_case("ALL")
}

/// containerd's order: privileged gets everything; otherwise the default set, then "ALL" in add (all) and
/// in drop (none), then the named additions, then the named drops. So add ALL + drop CHOWN is everything but
/// CHOWN, and drop ALL + add NET_ADMIN is NET_ADMIN alone.
pub(crate) fn capabilities(context: Option<&cri::LinuxContainerSecurityContext>) -> Result<CapabilitySets, Problem> {
    capabilities_from(context, &all_capabilities())
}

/// [`capabilities`] for a runtime that holds `held`.
pub(crate) fn capabilities_from(
    context: Option<&cri::LinuxContainerSecurityContext>,
    held: &Capabilities,
) -> Result<CapabilitySets, Problem> {
    if context.is_some_and(|c| c.privileged) {
        return Ok(CapabilitySets { bounding: held.clone(), ambient: Capabilities::new() });
    }
    let mut set: Capabilities =
        DEFAULT_CAPABILITIES.iter().map(|name| parse_capability(name)).collect::<Result<_, _>>()?;
    let mut ambient = Capabilities::new();
    if let Some(requested) = context.and_then(|c| c.capabilities.as_ref()) {
        if requested.add_capabilities.iter().any(|n| is_all(n)) {
            set = held.clone();
        }
        if requested.drop_capabilities.iter().any(|n| is_all(n)) {
            set.clear();
        }
        for name in requested.add_capabilities.iter().filter(|n| !is_all(n)) {
            set.insert(held_capability(name, held)?);
        }
        for name in requested.drop_capabilities.iter().filter(|n| !is_all(n)) {
            set.remove(&parse_capability(name)?);
        }
        for name in &requested.add_ambient_capabilities {
            ambient.insert(held_capability(name, held)?);
        }
    }
    // The default set is containerd's; one of its members berth lacks is left out rather than failing
    // every pod (the capability was not asked for by name).
    set.retain(|c| held.contains(c));
    Ok(CapabilitySets { bounding: set, ambient })
}

/// The CRI's lists when it gives them (kubelet always does, unless `procMount: Unmasked`, which arrives as an
/// empty list and so also gets the defaults, as with containerd), else kubelet's defaults.
pub(crate) fn masked_and_readonly_paths(
    context: Option<&cri::LinuxContainerSecurityContext>,
) -> (Vec<String>, Vec<String>) {
    let pick = |given: Option<&Vec<String>>, default: &[&str]| match given {
        Some(given) if !given.is_empty() => given.clone(),
        _ => default.iter().map(|p| (*p).to_owned()).collect(),
    };
    (
        pick(context.map(|c| &c.masked_paths), &DEFAULT_MASKED_PATHS),
        pick(context.map(|c| &c.readonly_paths), &DEFAULT_READONLY_PATHS),
    )
}

#[derive(Debug, PartialEq)]
enum Profile {
    RuntimeDefault,
    Unconfined,
    Localhost(String),
}

/// The profile a security context asks for: the `SecurityProfile` field, else the deprecated string
/// (`runtime/default`, `docker/default`, `unconfined`, `localhost/<x>`), else `default`.
fn requested_profile(
    profile: Option<&cri::SecurityProfile>,
    deprecated: &str,
    default: Profile,
    what: &str,
) -> Result<Profile, Problem> {
    use cri::security_profile::ProfileType;
    if let Some(profile) = profile {
        return match ProfileType::try_from(profile.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Profile::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(Profile::Unconfined),
            Ok(ProfileType::Localhost) if !profile.localhost_ref.is_empty() => {
                Ok(Profile::Localhost(profile.localhost_ref.clone()))
            }
            Ok(ProfileType::Localhost) => {
                Err(Problem::Invalid(format!("{what} profile Localhost without localhost_ref")))
            }
            Err(_) => Err(Problem::Invalid(format!("unknown {what} profile type {}", profile.profile_type))),
        };
    }
    match deprecated {
        "" => Ok(default),
        "runtime/default" | "docker/default" => Ok(Profile::RuntimeDefault),
        "unconfined" => Ok(Profile::Unconfined),
        other => match other.strip_prefix("localhost/") {
            Some(reference) if !reference.is_empty() => Ok(Profile::Localhost(reference.to_owned())),
            _ => Err(Problem::Invalid(format!("unknown {what} profile {other:?}"))),
        },
    }
}

/// The seccomp profile asked for: Unconfined by default (Kubernetes' default without SeccompDefault).
pub(crate) enum SeccompChoice {
    RuntimeDefault,
    Unconfined,
    Localhost(String),
}

// The deprecated string fields are what kubelets before 1.19 (seccomp) and 1.30 (AppArmor) send.
#[allow(deprecated)]
pub(crate) fn seccomp_choice(context: Option<&cri::LinuxContainerSecurityContext>) -> Result<SeccompChoice, Problem> {
    let requested = requested_profile(
        context.and_then(|c| c.seccomp.as_ref()),
        context.map_or("", |c| c.seccomp_profile_path.as_str()),
        Profile::Unconfined,
        "seccomp",
    )?;
    Ok(match requested {
        Profile::RuntimeDefault => SeccompChoice::RuntimeDefault,
        Profile::Unconfined => SeccompChoice::Unconfined,
        Profile::Localhost(path) => SeccompChoice::Localhost(path),
    })
}

/// The AppArmor profile of the process, if any. Without AppArmor on the host, RuntimeDefault and Unconfined
/// mean nothing and Localhost cannot be honoured. With it: Localhost names a loaded profile; RuntimeDefault
/// (also what an unset field means, as with containerd) is `berth-default` when an administrator loaded it,
/// else unconfined with a warning (berth loads no profile itself); privileged containers get no default.
#[allow(deprecated)]
pub(crate) fn apparmor_profile(
    context: Option<&cri::LinuxContainerSecurityContext>,
    privileged: bool,
    enabled: bool,
) -> Result<Option<String>, Problem> {
    let requested = requested_profile(
        context.and_then(|c| c.apparmor.as_ref()),
        context.map_or("", |c| c.apparmor_profile.as_str()),
        Profile::RuntimeDefault,
        "AppArmor",
    )?;
    match requested {
        Profile::Localhost(_) if !enabled => Err(Problem::Invalid("AppArmor is not enabled on this node".into())),
        Profile::Localhost(name) => Ok(Some(name)),
        _ if !enabled => Ok(None),
        Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault if privileged => Ok(None),
        Profile::RuntimeDefault => {
            let loaded = std::fs::read_to_string("/sys/kernel/security/apparmor/profiles")
                .map(|list| list.lines().any(|l| l.split(' ').next() == Some(APPARMOR_DEFAULT_PROFILE)))
                .unwrap_or(false);
            if loaded {
                Ok(Some(APPARMOR_DEFAULT_PROFILE.to_owned()))
            } else {
                tracing::warn!(
                    profile = APPARMOR_DEFAULT_PROFILE,
                    "AppArmor RuntimeDefault asked for but the profile is not loaded; running unconfined"
                );
                Ok(None)
            }
        }
    }
}
