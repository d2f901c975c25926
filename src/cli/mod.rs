//! The `berth` command line: the daemon (`berth serve`) and the operator's client verbs, which talk CRI to
//! a daemon over its socket exactly as crictl does.

mod attach;
pub mod client;
mod config_cmd;
mod containers;
pub(crate) mod cri_config;
mod exec;
mod image_fs_info;
mod images;
mod info;
mod listing;
mod logs;
mod output;
mod pods;
mod port_forward;
mod progress;
mod runtime;
mod stats;
mod stream;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::error::chain;
pub use client::{DEFAULT_ENDPOINT, Endpoint};
pub use output::OutputFormat;

#[derive(Debug, Parser)]
#[command(name = "berth", version = crate::version::RUNTIME_VERSION, about = "A Kubernetes container runtime (CRI v1)")]
pub struct Cli {
    /// The daemon's CRI endpoint (unix:///path or a plain path).
    #[arg(long, short = 'r', global = true, env = "CONTAINER_RUNTIME_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    runtime_endpoint: String,
    /// Seconds to wait for the daemon to connect and answer (before the verb, as crictl takes it: `stop` and
    /// `exec` have a `--timeout` of their own). Verbs that change things wait at least 4 minutes.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Configuration file (default /etc/berth/config.toml; all defaults when that file does not exist).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Show the runtime's name and version.
    Version {
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show the runtime's conditions, handlers and configuration.
    Info {
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show how much disk the image store uses.
    Imagefsinfo {
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// The OCI runtime (runc-compatible verbs: create, start, state, kill, delete, run, exec, ps, update, ...).
    Runtime(Box<runtime::RuntimeArgs>),
    /// Pull an image (like `crictl pull`).
    Pull {
        image: String,
        /// Registry credentials as USER:PASSWORD (default: those configured for the registry).
        #[arg(long)]
        creds: Option<String>,
    },
    /// List images, or those matching IMAGE.
    Images {
        image: Option<String>,
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Remove images (by ID, tag or digest), with all their tags.
    Rmi {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Show an image's status and config.
    Inspecti {
        image: String,
        #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Json)]
        output: OutputFormat,
    },
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Run a pod from a PodSandboxConfig file (like `crictl runp`); prints its ID.
    Runp(pods::RunPodArgs),
    /// List pods.
    Pods(pods::ListPodsArgs),
    /// Show pods' status and the runtime's information about them.
    Inspectp(pods::InspectPodArgs),
    /// Stop pods: their containers are stopped and their network released.
    Stopp {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove pods.
    Rmp(pods::RemovePodArgs),
    /// Create a container in a pod from a ContainerConfig file; prints its ID.
    Create(containers::CreateArgs),
    /// Start created containers.
    Start {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Run a pod and a container in it from their config files; prints the container's ID.
    Run(containers::RunArgs),
    /// List containers (running ones unless -a).
    Ps(containers::ListContainersArgs),
    /// Show containers' status and the runtime's information about them.
    Inspect(containers::InspectArgs),
    /// Print a container's logs.
    Logs(logs::LogsArgs),
    /// Run a command in a running container (-i stdin, -t terminal, -s synchronously) and exit with its code.
    Exec(exec::ExecArgs),
    /// Attach to a running container's stdio (-i stdin; -t terminal, default from its status).
    Attach(attach::AttachArgs),
    /// Forward local ports to ports inside a pod until Ctrl-C.
    PortForward(port_forward::PortForwardArgs),
    /// Stop running containers.
    Stop(containers::StopArgs),
    /// Remove containers.
    Rm(containers::RemoveArgs),
    /// Show containers' CPU, memory and writable-layer usage (running ones unless -a).
    Stats(stats::ContainerStatsArgs),
    /// Show pods' CPU, memory and network usage.
    Statsp(stats::PodStatsArgs),
}

/// The least a verb that changes pods or containers waits for the daemon: kubelet's RunPodSandbox
/// timeout, so the CLI does not give up on work the daemon finishes anyway.
const MUTATION_TIMEOUT: Duration = Duration::from_secs(240);
/// The least `create --with-pull` and `run` wait: a pull takes as long as the image takes.
const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// Parses the command line, runs the command, and turns any error into one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let timeout = Duration::from_secs(cli.timeout.max(1));
    if let Command::Runtime(args) = cli.command {
        return ExitCode::from(runtime::run(*args));
    }
    if let Command::Exec(args) = cli.command {
        // The command's own time limit, and a margin for the runtime to kill it and answer; none without.
        let timeout = match u64::try_from(args.timeout) {
            Ok(seconds) if seconds > 0 => timeout.max(Duration::from_secs(seconds.saturating_add(30))),
            _ => Duration::from_secs(24 * 3600),
        };
        let outcome = interactive_command(&cli.runtime_endpoint, timeout, |client| exec::run(client, args));
        return match outcome {
            Ok(code) => ExitCode::from(code),
            Err(message) => {
                eprintln!("berth: {message}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Attach(args) = cli.command {
        let outcome = interactive_command(&cli.runtime_endpoint, timeout, |client| attach::run(client, args));
        return match outcome {
            Ok(code) => ExitCode::from(code),
            Err(message) => {
                eprintln!("berth: {message}");
                ExitCode::FAILURE
            }
        };
    }
    let mutation_timeout = timeout.max(MUTATION_TIMEOUT);
    let endpoint = cli.runtime_endpoint.as_str();
    let outcome: Result<(), String> = match cli.command {
        Command::Runtime(_) | Command::Exec(_) | Command::Attach(_) => unreachable!("handled above"),
        Command::Serve { config } => serve(config),
        Command::Config(command) => config_cmd::run(command),
        Command::Version { output } => {
            client_command(
                &cli.runtime_endpoint,
                timeout,
                |endpoint| async move { version::run(endpoint, output).await },
            )
        }
        Command::Imagefsinfo { output } => client_command(&cli.runtime_endpoint, timeout, |endpoint| async move {
            image_fs_info::run(endpoint, output).await
        }),
        // A pull takes as long as the image takes: at least ten minutes before the client gives up.
        Command::Pull { image, creds } => {
            client_command(&cli.runtime_endpoint, timeout.max(Duration::from_secs(600)), |client| async move {
                images::pull(client, image, creds).await
            })
        }
        Command::Images { image, output } => {
            client_command(
                &cli.runtime_endpoint,
                timeout,
                |client| async move { images::list(client, image, output).await },
            )
        }
        Command::Rmi { images: names } => {
            client_command(&cli.runtime_endpoint, timeout, |client| async move { images::remove(client, names).await })
        }
        Command::Inspecti { image, output } => client_command(&cli.runtime_endpoint, timeout, |client| async move {
            images::inspect(client, image, output).await
        }),
        Command::Info { output } => {
            client_command(&cli.runtime_endpoint, timeout, |endpoint| async move { info::run(endpoint, output).await })
        }
        Command::Runp(args) => client_command(endpoint, mutation_timeout, |client| pods::run(client, args)),
        Command::Pods(args) => client_command(endpoint, timeout, |client| pods::list(client, args)),
        Command::Inspectp(args) => client_command(endpoint, timeout, |client| pods::inspect(client, args)),
        Command::Stopp { ids } => client_command(endpoint, mutation_timeout, |client| pods::stop(client, ids)),
        Command::Rmp(args) => client_command(endpoint, mutation_timeout, |client| pods::remove(client, args)),
        Command::Create(args) => {
            let timeout = if args.pull.with_pull { mutation_timeout.max(PULL_TIMEOUT) } else { mutation_timeout };
            client_command(endpoint, timeout, |client| containers::create(client, args))
        }
        Command::Start { ids } => client_command(endpoint, mutation_timeout, |client| containers::start(client, ids)),
        Command::Run(args) => {
            client_command(endpoint, mutation_timeout.max(PULL_TIMEOUT), |client| containers::run(client, args))
        }
        Command::Ps(args) => client_command(endpoint, timeout, |client| containers::list(client, args)),
        Command::Inspect(args) => client_command(endpoint, timeout, |client| containers::inspect(client, args)),
        Command::Logs(args) => client_command(endpoint, timeout, |client| logs::run(client, args)),
        Command::Stop(args) => {
            // Each StopContainer lasts up to its grace period, then the kill.
            let grace = Duration::from_secs(u64::try_from(args.timeout).unwrap_or(0));
            client_command(endpoint, mutation_timeout + grace, |client| containers::stop(client, args))
        }
        Command::Rm(args) => client_command(endpoint, mutation_timeout, |client| containers::remove(client, args)),
        Command::Stats(args) => client_command(endpoint, timeout, |client| stats::containers(client, args)),
        Command::Statsp(args) => client_command(endpoint, timeout, |client| stats::pods(client, args)),
        Command::PortForward(args) => client_command(endpoint, timeout, |client| port_forward::run(client, args)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("berth: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config_path: Option<PathBuf>) -> Result<(), String> {
    let required = config_path.is_some();
    let path = config_path.unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    let config = Config::load(&path, required).map_err(|err| chain(&err))?;
    crate::logging::init(&config.log);
    crate::daemon::heap::limit_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berth-worker")
        .thread_keep_alive(crate::daemon::heap::BLOCKING_THREAD_KEEP_ALIVE)
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?;
    runtime.block_on(crate::daemon::serve(config)).map_err(|err| chain(&err))
}

/// Runs a client verb on a single-threaded runtime: the CLI does one thing at a time.
fn client_command<F, Fut, T>(endpoint: &str, timeout: Duration, run: F) -> Result<T, String>
where
    F: FnOnce(client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let (endpoint, runtime) = endpoint_and_runtime(endpoint)?;
    runtime.block_on(async move {
        let client = client::Client::connect(endpoint, timeout).await.map_err(|err| chain(&err))?;
        run(client).await
    })
}

/// [`client_command`] for verbs that read this process's stdin (exec, attach). tokio reads stdin on a
/// blocking thread that cannot be interrupted, and dropping a runtime waits for its blocking threads, so the
/// runtime is left to die with the process instead: otherwise `berth exec -it` would hang at exit until
/// the user pressed a key.
fn interactive_command<F, Fut, T>(endpoint: &str, timeout: Duration, run: F) -> Result<T, String>
where
    F: FnOnce(client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let (endpoint, runtime) = endpoint_and_runtime(endpoint)?;
    let outcome = runtime.block_on(async move {
        let client = client::Client::connect(endpoint, timeout).await.map_err(|err| chain(&err))?;
        run(client).await
    });
    runtime.shutdown_background();
    outcome
}

/// The parsed endpoint and the single-threaded runtime a client verb runs on.
fn endpoint_and_runtime(endpoint: &str) -> Result<(Endpoint, tokio::runtime::Runtime), String> {
    let endpoint = Endpoint::parse(endpoint).map_err(|err| chain(&err))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?;
    Ok((endpoint, runtime))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_daemon_timeout_comes_before_the_verb_and_verbs_keep_their_own() {
        let cli = Cli::parse_from(["berth", "--timeout", "3", "stop", "-t", "30", "abc"]);
        assert_eq!(cli.timeout, 3);
        let Command::Stop(stop) = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!((stop.timeout, stop.ids), (30, vec!["abc".to_owned()]));
        let cli = Cli::parse_from(["berth", "exec", "-s", "--timeout", "2", "abc", "sh", "-c", "exit 3"]);
        let Command::Exec(exec) = cli.command else { panic!("{:?}", cli.command) };
        assert_eq!((exec.timeout, exec.command.len()), (2, 3));
        let cli = Cli::parse_from(["berth", "ps", "-aq", "--label", "a=b", "--label", "c=d", "-r", "/x.sock"]);
        assert_eq!(cli.runtime_endpoint, "/x.sock", "the endpoint flag stays global");
        let Command::Ps(ps) = cli.command else { panic!("{:?}", cli.command) };
        assert!(ps.all && ps.quiet);
        assert_eq!(ps.labels, ["a=b", "c=d"]);
    }
}
