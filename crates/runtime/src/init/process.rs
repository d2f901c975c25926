//! The container's process: what can fail is checked and built before the container reports Ready
//! (`prepare`); after the start gate only the final, irreversible steps remain (`exec`).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use caps::{CapSet, Capability as Cap};
use libseccomp::ScmpFilterContext;
use oci_spec::runtime::{PosixRlimitType, Spec};

use super::Never;
use crate::error::{Result, RuntimeError};
use crate::seccomp;

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub(super) struct Prepared {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    bounding: HashSet<Cap>,
    effective: HashSet<Cap>,
    permitted: HashSet<Cap>,
    inheritable: HashSet<Cap>,
    ambient: HashSet<Cap>,
    no_new_privileges: bool,
    seccomp: Option<ScmpFilterContext>,
}

fn invalid(reason: String) -> RuntimeError {
    RuntimeError::InvalidSpec { path: "config.json".into(), reason }
}

fn cstring(text: &[u8], what: &str) -> Result<CString> {
    CString::new(text).map_err(|_| invalid(format!("{what} contains a NUL byte")))
}

fn capability_set(names: &Option<oci_spec::runtime::Capabilities>, supported: &HashSet<Cap>) -> Result<HashSet<Cap>> {
    let mut set = HashSet::new();
    for capability in names.iter().flatten() {
        let name =
            serde_json::to_value(capability).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let parsed = Cap::from_str(&name).map_err(|_| invalid(format!("unknown capability {name}")))?;
        // Capabilities newer than this kernel cannot be granted; runc skips them the same way.
        if supported.contains(&parsed) {
            set.insert(parsed);
        }
    }
    Ok(set)
}

fn rlimit_resource(kind: PosixRlimitType) -> libc::__rlimit_resource_t {
    match kind {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }
}

/// Finds `name` on the container's PATH (execvp semantics), so a missing program fails `create`.
fn find_program(name: &str, env: &[String], cwd: &Path) -> Result<PathBuf> {
    let executable = |path: &Path| nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok() && path.is_file();
    if name.contains('/') {
        let path = if Path::new(name).is_absolute() { PathBuf::from(name) } else { cwd.join(name) };
        return if executable(&path) {
            Ok(path)
        } else {
            Err(RuntimeError::Io {
                step: "find the program",
                path,
                source: std::io::Error::from_raw_os_error(libc::ENOENT),
            })
        };
    }
    let path_variable = env.iter().rev().find_map(|v| v.strip_prefix("PATH=")).unwrap_or(DEFAULT_PATH);
    for dir in path_variable.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        if executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(RuntimeError::Io {
        step: "find the program on PATH",
        path: PathBuf::from(name),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("not found in {path_variable}")),
    })
}

/// Applies what is harmless to apply now and checks and builds everything else.
pub(super) fn prepare(spec: &Spec) -> Result<Prepared> {
    let process = spec.process().as_ref().ok_or_else(|| invalid("no process".into()))?;
    let cwd = process.cwd().clone();
    nix::unistd::chdir(&cwd).map_err(RuntimeError::sys(format!("chdir to the process cwd {}", cwd.display())))?;
    let args = process.args().clone().unwrap_or_default();
    let first = args.first().ok_or_else(|| invalid("process.args is empty".into()))?;
    let env = process.env().clone().unwrap_or_default();
    let program = find_program(first, &env, &cwd)?;

    for rlimit in process.rlimits().iter().flatten() {
        let limit = libc::rlimit { rlim_cur: rlimit.soft(), rlim_max: rlimit.hard() };
        // SAFETY: `limit` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(rlimit_resource(rlimit.typ()), &limit) } != 0 {
            return Err(RuntimeError::sys(format!("setrlimit {:?}", rlimit.typ()))(nix::errno::Errno::last()));
        }
    }
    if let Some(score) = process.oom_score_adj() {
        set_oom_score_adj(score)?;
    }
    if let Some(umask) = process.user().umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    } else {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    }
    if let Some(profile) = process.apparmor_profile().as_deref().filter(|p| !p.is_empty()) {
        apply_apparmor(profile)?;
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        apply_selinux(label)?;
    }
    let capabilities = process.capabilities().clone().unwrap_or_default();
    // Probing costs one prctl per capability: once, not per set.
    let supported = caps::runtime::thread_all_supported();
    let seccomp = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => Some(seccomp::build(profile)?),
        None => None,
    };
    Ok(Prepared {
        program: cstring(program.as_os_str().as_bytes(), "the program path")?,
        argv: args.iter().map(|a| cstring(a.as_bytes(), "an argument")).collect::<Result<_>>()?,
        envp: env.iter().map(|e| cstring(e.as_bytes(), "an environment variable")).collect::<Result<_>>()?,
        uid: process.user().uid(),
        gid: process.user().gid(),
        groups: process.user().additional_gids().clone().unwrap_or_default(),
        bounding: capability_set(capabilities.bounding(), &supported)?,
        effective: capability_set(capabilities.effective(), &supported)?,
        permitted: capability_set(capabilities.permitted(), &supported)?,
        inheritable: capability_set(capabilities.inheritable(), &supported)?,
        ambient: capability_set(capabilities.ambient(), &supported)?,
        no_new_privileges: process.no_new_privileges() == Some(true),
        seccomp,
    })
}

/// oom_score_adj: a value below our own needs CAP_SYS_RESOURCE, which some hosts deny even to root; then
/// the container keeps our value rather than failing (it can only be more likely to be OOM-killed).
fn set_oom_score_adj(score: i32) -> Result<()> {
    let path = "/proc/self/oom_score_adj";
    match std::fs::write(path, score.to_string()) {
        Ok(()) => Ok(()),
        Err(err) if matches!(err.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => {
            tracing::debug!(
                requested = score,
                "oom_score_adj below the runtime's own needs CAP_SYS_RESOURCE; keeping ours"
            );
            Ok(())
        }
        Err(source) => Err(RuntimeError::Io { step: "write", path: path.into(), source }),
    }
}

fn apply_apparmor(profile: &str) -> Result<()> {
    let enabled =
        std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").map(|v| v.trim() == "Y").unwrap_or(false);
    if !enabled {
        return Err(RuntimeError::Unsupported(format!("AppArmor profile {profile:?} was asked for, but AppArmor")));
    }
    let attr = if Path::new("/proc/self/attr/apparmor/exec").exists() {
        "/proc/self/attr/apparmor/exec"
    } else {
        "/proc/self/attr/exec"
    };
    std::fs::write(attr, format!("exec {profile}")).map_err(RuntimeError::io("set the AppArmor profile via", attr))
}

fn apply_selinux(label: &str) -> Result<()> {
    if !Path::new("/sys/fs/selinux/enforce").exists() {
        return Err(RuntimeError::Unsupported(format!("SELinux label {label:?} was asked for, but SELinux")));
    }
    std::fs::write("/proc/self/attr/exec", label)
        .map_err(RuntimeError::io("set the SELinux label via", "/proc/self/attr/exec"))
}

fn caps_error(step: &'static str) -> impl FnOnce(caps::errors::CapsError) -> RuntimeError {
    move |err| RuntimeError::Setup(format!("{step}: {err}"))
}

/// Identity, capabilities, no_new_privs, seccomp, then execve.
pub(super) fn exec(prepared: Prepared) -> Result<Never> {
    reset_signals()?;
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, so it goes before capabilities are
    // dropped; with it, as late as possible so berth's own remaining syscalls are not filtered.
    if !prepared.no_new_privileges
        && let Some(filter) = &prepared.seccomp
    {
        seccomp::load(filter)?;
    }
    let current_bounding = caps::read(None, CapSet::Bounding).map_err(caps_error("read the bounding set"))?;
    for capability in current_bounding {
        if !prepared.bounding.contains(&capability) {
            match caps::drop(None, CapSet::Bounding, capability) {
                Ok(()) => {}
                // A capability the kernel does not know is not in the bounding set anyway.
                Err(_) if !caps::has_cap(None, CapSet::Bounding, capability).unwrap_or(false) => {}
                Err(err) => return Err(caps_error("drop from the bounding set")(err)),
            }
        }
    }
    let groups: Vec<nix::unistd::Gid> = prepared.groups.iter().map(|g| (*g).into()).collect();
    if let Err(errno) = nix::unistd::setgroups(&groups) {
        // setgroups is denied in user namespaces whose setgroups file says "deny"; then only an empty list
        // is acceptable.
        if !(errno == nix::errno::Errno::EPERM && groups.is_empty()) {
            return Err(RuntimeError::sys("setgroups")(errno));
        }
    }
    nix::unistd::setresgid(prepared.gid.into(), prepared.gid.into(), prepared.gid.into())
        .map_err(RuntimeError::sys(format!("setresgid {}", prepared.gid)))?;
    // Keep the permitted set across the uid change; the sets are then made exactly what the spec says.
    nix::sys::prctl::set_keepcaps(true).map_err(RuntimeError::sys("prctl(PR_SET_KEEPCAPS)"))?;
    nix::unistd::setresuid(prepared.uid.into(), prepared.uid.into(), prepared.uid.into())
        .map_err(RuntimeError::sys(format!("setresuid {}", prepared.uid)))?;
    nix::sys::prctl::set_keepcaps(false).map_err(RuntimeError::sys("prctl(PR_SET_KEEPCAPS, 0)"))?;
    // Each capset must keep effective within permitted: shrink effective first, permitted last.
    caps::set(None, CapSet::Effective, &prepared.effective).map_err(caps_error("set the effective capabilities"))?;
    caps::set(None, CapSet::Inheritable, &prepared.inheritable)
        .map_err(caps_error("set the inheritable capabilities"))?;
    caps::set(None, CapSet::Permitted, &prepared.permitted).map_err(caps_error("set the permitted capabilities"))?;
    caps::clear(None, CapSet::Ambient).map_err(caps_error("clear the ambient capabilities"))?;
    for capability in &prepared.ambient {
        // The kernel only allows ambient capabilities that are also permitted and inheritable; like runc,
        // others are skipped rather than failing a container whose spec lists them anyway.
        if prepared.permitted.contains(capability) && prepared.inheritable.contains(capability) {
            caps::raise(None, CapSet::Ambient, *capability).map_err(caps_error("raise an ambient capability"))?;
        }
    }
    if prepared.no_new_privileges {
        nix::sys::prctl::set_no_new_privs().map_err(RuntimeError::sys("prctl(PR_SET_NO_NEW_PRIVS)"))?;
        if let Some(filter) = &prepared.seccomp {
            seccomp::load(filter)?;
        }
    }
    // Nothing but stdio crosses into the container's program.
    // SAFETY: close_range only changes flags of this process's descriptors.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    let errno = nix::unistd::execve(&prepared.program, &prepared.argv, &prepared.envp).unwrap_err();
    Err(RuntimeError::sys(format!("execve {:?}", prepared.program))(errno))
}

/// Every signal back to its default action and none blocked, as a program expects to start. Ignored signals
/// survive execve (signal(7)), and berth, like every Rust program, ignores SIGPIPE from its first
/// instruction: without this, `yes | head` in a container spins forever once head has exited. The kernel's
/// call is used, not the C library's, which refuses the two real-time signals it keeps for its threads (32
/// and 33) and would leave them as berth has them.
fn reset_signals() -> Result<()> {
    /// The kernel's `struct sigaction` on x86_64 and aarch64 (handler, flags, restorer, mask).
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::sighandler_t,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    const KERNEL_SIGNALS: libc::c_int = 64;
    let default = KernelSigaction { handler: libc::SIG_DFL, flags: 0, restorer: 0, mask: 0 };
    for signal in 1..=KERNEL_SIGNALS {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: `default` is a live kernel sigaction of the size passed (the mask is 8 bytes) and the old
        // action is not asked for; SIG_DFL installs no handler, so no code of ours runs on a signal.
        let result = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            )
        };
        if result != 0 {
            return Err(RuntimeError::sys(format!("rt_sigaction: reset signal {signal} to its default"))(
                nix::errno::Errno::last(),
            ));
        }
    }
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .map_err(RuntimeError::sys("sigprocmask: unblock every signal"))
}
