//! Seccomp: the profile a container asks for, and berth's RuntimeDefault profile.
//!
//! RuntimeDefault is an allow-list with the same effect as containerd's and Docker's default: every syscall
//! an ordinary program uses, minus those that reach outside the container (mount, kernel modules, clock,
//! reboot, keyrings, namespaces, BPF, ...) unless the container holds the capability that guards them
//! anyway. Everything else fails with EPERM. The lists are grouped by purpose below; names the host's
//! libseccomp does not know are skipped by the runtime crate, so one list serves old and new kernels.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use super::Problem;
use super::security::{SeccompChoice, seccomp_choice};
use crate::cri::v1 as cri;

/// Files, directories, links, attributes and descriptors.
#[rustfmt::skip]
const FILES: &[&str] = &[
    "access",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futimesat",
    "getcwd",
    "getdents",
    "getdents64",
    "getxattr",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "name_to_handle_at",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "sendfile64",
    "setxattr",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "truncate64",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vmsplice",
    "write",
    "writev",
];

/// Polling, events, notifications, pipes and asynchronous I/O.
#[rustfmt::skip]
const EVENTS: &[&str] = &[
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "fanotify_mark",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "ppoll_time64",
    "pselect6",
    "pselect6_time64",
    "select",
    "_newselect",
    "signalfd",
    "signalfd4",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
];

/// Memory.
#[rustfmt::skip]
const MEMORY: &[&str] = &[
    "brk",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mremap",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
];

/// Processes, threads, identity, signals, scheduling, limits and the unprivileged sandboxing tools
/// (seccomp itself, landlock).
#[rustfmt::skip]
const PROCESSES: &[&str] = &[
    "capget",
    "capset",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "getuid",
    "getuid32",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "prlimit64",
    "process_mrelease",
    "restart_syscall",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setuid",
    "setuid32",
    "sigaltstack",
    "sigprocmask",
    "sigreturn",
    "tgkill",
    "tkill",
    "ugetrlimit",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
    // Tracing one's own children: safe since Linux 4.8 (seccomp is re-checked after a tracer's changes),
    // which is why containerd allows it without CAP_SYS_PTRACE.
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
];

/// Time and system information.
#[rustfmt::skip]
const TIME: &[&str] = &[
    "adjtimex",
    "alarm",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "gettimeofday",
    "nanosleep",
    "sysinfo",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "times",
    "uname",
];

/// Sockets (`socket` itself has a rule of its own) and System V / POSIX IPC.
#[rustfmt::skip]
const IPC: &[&str] = &[
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "send",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "socketcall",
    "socketpair",
    "ipc",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
];

/// Architecture-specific calls, by the `std::env::consts::ARCH` they belong to.
const X86: &[&str] = &["arch_prctl", "modify_ldt"];
const ARM: &[&str] =
    &["arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls", "sync_file_range2"];

/// Calls allowed only to containers holding the capability the kernel checks for them anyway.
#[rustfmt::skip]
const BY_CAPABILITY: &[(Capability, &[&str])] = &[
    (Capability::DacReadSearch, &["open_by_handle_at"]),
    (
        Capability::SysAdmin,
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    (Capability::SysBoot, &["reboot"]),
    (Capability::SysChroot, &["chroot"]),
    (Capability::SysModule, &["delete_module", "finit_module", "init_module"]),
    (Capability::SysPacct, &["acct"]),
    (Capability::SysPtrace, &["kcmp", "pidfd_getfd", "process_madvise"]),
    (Capability::SysRawio, &["ioperm", "iopl"]),
    (Capability::SysTime, &["clock_settime", "clock_settime64", "settimeofday", "stime"]),
    (Capability::SysTtyConfig, &["vhangup"]),
    (Capability::SysNice, &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
    (Capability::Syslog, &["syslog"]),
    (Capability::Bpf, &["bpf"]),
    (Capability::Perfmon, &["perf_event_open"]),
];

/// personality(2) personas a program may switch to: Linux, Linux32, UNAME26 (alone and with Linux32), and
/// the query 0xffffffff.
const PERSONAS: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The clone flags that create namespaces (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
const AF_VSOCK: u64 = 40;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn architectures() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "x86" => vec![Arch::ScmpArchX86],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "arm" => vec![Arch::ScmpArchArm],
        _ => vec![Arch::ScmpArchNative],
    }
}

fn allow(names: Vec<String>) -> Result<LinuxSyscall, Problem> {
    Ok(LinuxSyscallBuilder::default().names(names).action(LinuxSeccompAction::ScmpActAllow).build()?)
}

fn allow_if(
    name: &str,
    index: usize,
    op: LinuxSeccompOperator,
    value: u64,
    value_two: Option<u64>,
) -> Result<LinuxSyscall, Problem> {
    let mut arg = LinuxSeccompArgBuilder::default().index(index).op(op).value(value);
    if let Some(value_two) = value_two {
        arg = arg.value_two(value_two);
    }
    Ok(LinuxSyscallBuilder::default()
        .names(vec![name.to_owned()])
        .action(LinuxSeccompAction::ScmpActAllow)
        .args(vec![arg.build()?])
        .build()?)
}

/// The RuntimeDefault profile for a container whose bounding set is `capabilities`.
pub(crate) fn runtime_default(capabilities: &Capabilities) -> Result<LinuxSeccomp, Problem> {
    let mut names: std::collections::BTreeSet<&str> =
        [FILES, EVENTS, MEMORY, PROCESSES, TIME, IPC].into_iter().flatten().copied().collect();
    match std::env::consts::ARCH {
        "x86_64" | "x86" => names.extend(X86),
        "aarch64" | "arm" => names.extend(ARM),
        _ => {}
    }
    for (capability, calls) in BY_CAPABILITY {
        if capabilities.contains(capability) {
            names.extend(calls.iter().copied());
        }
    }
    let mut syscalls = vec![allow(names.iter().map(|n| (*n).to_owned()).collect())?];
    for persona in PERSONAS {
        syscalls.push(allow_if("personality", 0, LinuxSeccompOperator::ScmpCmpEq, persona, None)?);
    }
    // Any socket but vsock, which reaches the host (or hypervisor) outside the network namespace.
    syscalls.push(allow_if("socket", 0, LinuxSeccompOperator::ScmpCmpNe, AF_VSOCK, None)?);
    if !capabilities.contains(&Capability::SysAdmin) {
        // Threads and processes, but no new namespaces (the flags are the first argument on x86 and arm).
        syscalls.push(allow_if("clone", 0, LinuxSeccompOperator::ScmpCmpMaskedEq, CLONE_NAMESPACE_FLAGS, Some(0))?);
        // clone3 passes its flags in memory seccomp cannot read: ENOSYS makes libc fall back to clone.
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_owned()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()?,
        );
    }
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(architectures())
        .syscalls(syscalls)
        .build()?)
}

/// A Localhost profile: OCI `LinuxSeccomp` JSON. Docker's format extensions are handled as far as they can
/// be safely: `archMap` gives the architectures when `architectures` is absent; rules with `includes` or
/// `excludes` conditions are refused, because ignoring the conditions would allow more than the profile
/// means to.
fn localhost(reference: &str, seccomp_root: &Path) -> Result<LinuxSeccomp, Problem> {
    let path = if Path::new(reference).is_absolute() { PathBuf::from(reference) } else { seccomp_root.join(reference) };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(Problem::NotFound(format!("seccomp profile {} does not exist", path.display())));
        }
        Err(err) => return Err(Problem::Io { step: "read the seccomp profile", path, source: err }),
    };
    let invalid = |reason: String| Problem::Invalid(format!("seccomp profile {}: {reason}", path.display()));
    let mut value: serde_json::Value = serde_json::from_str(&text).map_err(|err| invalid(err.to_string()))?;
    if let Some(object) = value.as_object_mut() {
        let arch_map =
            object.get("archMap").and_then(|m| m.as_array()).filter(|_| !object.contains_key("architectures"));
        if let Some(arch_map) = arch_map {
            let mut arches = Vec::new();
            for entry in arch_map {
                arches.extend(entry.get("architecture").cloned());
                arches.extend(entry.get("subArchitectures").and_then(|s| s.as_array()).cloned().unwrap_or_default());
            }
            object.insert("architectures".into(), serde_json::Value::Array(arches));
        }
        for rule in object.get("syscalls").and_then(|s| s.as_array()).into_iter().flatten() {
            for condition in ["includes", "excludes"] {
                if rule.get(condition).and_then(|c| c.as_object()).is_some_and(|c| !c.is_empty()) {
                    return Err(invalid(format!("rules with {condition:?} conditions are not supported")));
                }
            }
        }
    }
    serde_json::from_value(value).map_err(|err| invalid(err.to_string()))
}

/// The `linux.seccomp` of an unprivileged container, None for Unconfined.
pub(crate) fn profile(
    context: Option<&cri::LinuxContainerSecurityContext>,
    bounding: &Capabilities,
    seccomp_root: &Path,
) -> Result<Option<LinuxSeccomp>, Problem> {
    match seccomp_choice(context)? {
        SeccompChoice::Unconfined => Ok(None),
        SeccompChoice::RuntimeDefault => runtime_default(bounding).map(Some),
        SeccompChoice::Localhost(reference) => localhost(&reference, seccomp_root).map(Some),
    }
}
