//! `berth runtime`: an OCI runtime command line compatible with runc's verbs, flags and exit codes, on top
//! of the `berth-runtime` crate, so standard OCI tooling (and people used to runc) can drive berth's runtime.

use std::io::Write;
use std::path::{Path, PathBuf};

use berth_runtime::{ConsoleSocket, CreateOptions, ExecOptions, Runtime, RuntimeError, Stdio};
use clap::{Args, Subcommand};
use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxResources, Process};

use crate::error::chain;

#[derive(Debug, Args)]
pub struct RuntimeArgs {
    /// Directory for container state.
    #[arg(long, default_value = "/run/berth/runtime")]
    root: PathBuf,
    /// Also write errors to this file (as containerd expects of runc).
    #[arg(long)]
    log: Option<PathBuf>,
    /// Format of --log: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
    /// Cgroups are systemd scopes (linux.cgroupsPath is `slice:prefix:name`), made over D-Bus, as runc's flag.
    #[arg(long)]
    systemd_cgroup: bool,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Args)]
struct CreateArgs {
    id: String,
    /// The bundle directory (holding config.json).
    #[arg(long, short = 'b', default_value = ".")]
    bundle: PathBuf,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Unix socket that receives the terminal's master fd when process.terminal is true.
    #[arg(long)]
    console_socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Verb {
    /// Create a container; its process waits until `start`.
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's init, or with --all to every process.
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
        #[arg(long, short = 'a')]
        all: bool,
    },
    /// Delete a container (--force also kills a running one).
    Delete {
        id: String,
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Create, start, wait for exit and delete; exits with the container's status.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Return after starting instead of waiting.
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// Run an extra process in a running container; exits with its status.
    Exec {
        id: String,
        /// A process.json (runtime-spec `process`) instead of COMMAND.
        #[arg(long, short = 'p')]
        process: Option<PathBuf>,
        #[arg(long, short = 't')]
        tty: bool,
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// uid[:gid]
        #[arg(long, short = 'u')]
        user: Option<String>,
        #[arg(long, short = 'd')]
        detach: bool,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// List the processes of a container.
    Ps {
        id: String,
        #[arg(long, short = 'f', default_value = "table")]
        format: String,
    },
    /// Change a container's resources.
    Update {
        id: String,
        /// runtime-spec linux.resources JSON ("-" for stdin).
        #[arg(long)]
        resources: Option<PathBuf>,
        #[arg(long)]
        memory: Option<i64>,
        #[arg(long)]
        memory_swap: Option<i64>,
        #[arg(long)]
        cpu_shares: Option<u64>,
        #[arg(long)]
        cpu_quota: Option<i64>,
        #[arg(long)]
        cpu_period: Option<u64>,
        #[arg(long)]
        cpuset_cpus: Option<String>,
        #[arg(long)]
        pids_limit: Option<i64>,
    },
    /// Print what this runtime supports, as JSON (runtime-spec features.md).
    Features,
    /// List containers.
    List,
    /// Print a container's resource usage as JSON.
    Stats { id: String },
}

/// Runs a verb; returns the process exit code (runc's: 0, 1 on error, the container's status for run/exec).
pub fn run(args: RuntimeArgs) -> u8 {
    let runtime = Runtime { systemd_cgroup: args.systemd_cgroup, ..Runtime::new(&args.root) };
    match dispatch(&runtime, args.verb) {
        Ok(code) => code,
        Err(err) => {
            let message = chain(&err);
            eprintln!("berth runtime: {message}");
            if let Some(log) = &args.log {
                log_error(log, &args.log_format, &message);
            }
            1
        }
    }
}

fn log_error(path: &Path, format: &str, message: &str) {
    let time = berth_runtime::state::now_rfc3339();
    let line = if format == "json" {
        serde_json::json!({"level": "error", "msg": message, "time": time}).to_string()
    } else {
        format!("time=\"{time}\" level=error msg={message:?}")
    };
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(file, "{line}");
    }
}

fn dispatch(runtime: &Runtime, verb: Verb) -> Result<u8, RuntimeError> {
    match verb {
        Verb::Create(create) => {
            runtime.create(&create.id, &create.bundle, create_options(&create))?;
            Ok(0)
        }
        Verb::Start { id } => runtime.start(&id).map(|()| 0),
        Verb::State { id } => {
            let (state, status) = runtime.state(&id)?;
            let mut document = state.oci_state(status);
            document["rootfs"] = serde_json::json!(state.rootfs);
            document["created"] = serde_json::json!(state.created);
            println!("{}", serde_json::to_string_pretty(&document).unwrap_or_default());
            Ok(0)
        }
        Verb::Kill { id, signal, all } => {
            let signal = parse_signal(&signal)?;
            runtime.kill(&id, signal, all).map(|()| 0)
        }
        Verb::Delete { id, force } => runtime.delete(&id, force).map(|()| 0),
        Verb::Run { create, detach } => {
            let state = runtime.create(&create.id, &create.bundle, create_options(&create))?;
            if let Err(err) = runtime.start(&create.id) {
                let _ = runtime.delete(&create.id, true);
                return Err(err);
            }
            if detach {
                return Ok(0);
            }
            let code = wait_for(state.pid);
            runtime.delete(&create.id, true)?;
            Ok(code)
        }
        Verb::Exec { id, process, tty, cwd, env, user, detach, pid_file, console_socket, command } => {
            let process = exec_process(runtime, &id, process.as_deref(), tty, cwd, env, user, command)?;
            let pid = runtime.exec(
                &id,
                process,
                ExecOptions { stdio: Stdio::Inherit, console_socket: console_socket.map(ConsoleSocket), pid_file },
            )?;
            Ok(if detach { 0 } else { wait_for(pid) })
        }
        Verb::Ps { id, format } => {
            let pids = runtime.ps(&id)?;
            if format == "json" {
                println!("{}", serde_json::to_string(&pids).unwrap_or_default());
            } else {
                println!("PID    CMD");
                for pid in pids {
                    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let command: Vec<String> = cmdline
                        .split(|b| *b == 0)
                        .filter(|a| !a.is_empty())
                        .map(|a| String::from_utf8_lossy(a).into_owned())
                        .collect();
                    println!("{pid:<6} {}", command.join(" "));
                }
            }
            Ok(0)
        }
        Verb::Update {
            id,
            resources,
            memory,
            memory_swap,
            cpu_shares,
            cpu_quota,
            cpu_period,
            cpuset_cpus,
            pids_limit,
        } => {
            let mut value = match resources {
                Some(path) => read_json_value(&path)?,
                None => serde_json::json!({}),
            };
            let mut set = |section: &str, key: &str, v: serde_json::Value| {
                if value.get(section).is_none() {
                    value[section] = serde_json::json!({});
                }
                value[section][key] = v;
            };
            if let Some(v) = memory {
                set("memory", "limit", v.into());
            }
            if let Some(v) = memory_swap {
                set("memory", "swap", v.into());
            }
            if let Some(v) = cpu_shares {
                set("cpu", "shares", v.into());
            }
            if let Some(v) = cpu_quota {
                set("cpu", "quota", v.into());
            }
            if let Some(v) = cpu_period {
                set("cpu", "period", v.into());
            }
            if let Some(v) = cpuset_cpus {
                set("cpu", "cpus", v.into());
            }
            if let Some(v) = pids_limit {
                set("pids", "limit", v.into());
            }
            let resources: LinuxResources = serde_json::from_value(value)
                .map_err(|err| RuntimeError::InvalidSpec { path: "resources".into(), reason: err.to_string() })?;
            runtime.update(&id, &resources).map(|()| 0)
        }
        Verb::Features => {
            println!("{}", serde_json::to_string_pretty(&features()).unwrap_or_default());
            Ok(0)
        }
        Verb::List => {
            println!("{:<30} {:<8} {:<10} BUNDLE", "ID", "PID", "STATUS");
            for id in runtime.list()? {
                if let Ok((state, status)) = runtime.state(&id) {
                    println!("{:<30} {:<8} {:<10} {}", id, state.pid, status.to_string(), state.bundle.display());
                }
            }
            Ok(0)
        }
        Verb::Stats { id } => {
            println!("{}", serde_json::to_string_pretty(&runtime.stats(&id)?).unwrap_or_default());
            Ok(0)
        }
    }
}

fn create_options(create: &CreateArgs) -> CreateOptions {
    CreateOptions {
        stdio: Stdio::Inherit,
        console_socket: create.console_socket.clone().map(ConsoleSocket),
        pid_file: create.pid_file.clone(),
    }
}

fn read_json_value(path: &Path) -> Result<serde_json::Value, RuntimeError> {
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| RuntimeError::Io {
            step: "read",
            path: path.to_owned(),
            source,
        })?;
        text
    } else {
        std::fs::read_to_string(path).map_err(|source| RuntimeError::Io {
            step: "read",
            path: path.to_owned(),
            source,
        })?
    };
    serde_json::from_str(&text)
        .map_err(|err| RuntimeError::InvalidSpec { path: path.to_owned(), reason: err.to_string() })
}

#[allow(clippy::too_many_arguments)]
fn exec_process(
    runtime: &Runtime,
    id: &str,
    process_file: Option<&Path>,
    tty: bool,
    cwd: Option<PathBuf>,
    env: Vec<String>,
    user: Option<String>,
    command: Vec<String>,
) -> Result<Process, RuntimeError> {
    if let Some(path) = process_file {
        let value = read_json_value(path)?;
        return serde_json::from_value(value)
            .map_err(|err| RuntimeError::InvalidSpec { path: path.to_owned(), reason: err.to_string() });
    }
    if command.is_empty() {
        return Err(RuntimeError::InvalidSpec {
            path: "exec".into(),
            reason: "no command given (or use --process)".into(),
        });
    }
    // Start from the container's own process: same capabilities, user, environment and limits.
    let (state, _) = runtime.state(id)?;
    let spec_path = runtime.root.join(&state.id).join("config.json");
    let spec = oci_spec::runtime::Spec::load(&spec_path)
        .map_err(|source| RuntimeError::LoadSpec { path: spec_path, source })?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(command));
    process.set_terminal(Some(tty));
    if let Some(cwd) = cwd {
        process.set_cwd(cwd);
    }
    if !env.is_empty() {
        let mut all = process.env().clone().unwrap_or_default();
        all.extend(env);
        process.set_env(Some(all));
    }
    if let Some(user) = user {
        let (uid, gid) = user.split_once(':').unwrap_or((&user, "0"));
        let parse = |n: &str| {
            n.parse::<u32>()
                .map_err(|_| RuntimeError::InvalidSpec { path: "exec".into(), reason: format!("bad --user {user:?}") })
        };
        let mut spec_user = process.user().clone();
        spec_user.set_uid(parse(uid)?);
        spec_user.set_gid(parse(gid)?);
        process.set_user(spec_user);
    }
    Ok(process)
}

/// Waits for a child process; its exit code, or 128 + the signal that killed it (shell convention).
fn wait_for(pid: i32) -> u8 {
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return code as u8,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as u8,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

fn parse_signal(text: &str) -> Result<Signal, RuntimeError> {
    let invalid = || RuntimeError::InvalidSpec { path: "signal".into(), reason: format!("unknown signal {text:?}") };
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).map_err(|_| invalid());
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    name.parse::<Signal>().map_err(|_| invalid())
}

/// runtime-spec features.md: what this runtime can do on this host.
fn features() -> serde_json::Value {
    let cgroup_v2 = berth_runtime::cgroups::Layout::detect().map(|l| l.is_v2()).unwrap_or(false);
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": berth_runtime::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "idmap", "mand",
            "noatime", "nodev", "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid", "private",
            "rbind", "relatime", "remount", "ridmap", "ro", "rprivate", "rshared", "rslave", "runbindable", "rw",
            "shared", "slave", "strictatime", "suid", "sync", "unbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": {"v1": !cgroup_v2, "v2": cgroup_v2, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRAP", "SCMP_ACT_TRACE"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
            },
            // idmap/ridmap take the maps of a user namespace joined by path; maps of a mount's own are not read.
            "mountExtensions": {"idmap": {"enabled": true}},
            "apparmor": {"enabled": Path::new("/sys/module/apparmor/parameters/enabled").exists()},
            "selinux": {"enabled": Path::new("/sys/fs/selinux/enforce").exists()},
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn signals_parse_like_runc() {
        use nix::sys::signal::Signal;
        assert_eq!(super::parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(super::parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(super::parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(super::parse_signal("NOPE").is_err());
    }
}
