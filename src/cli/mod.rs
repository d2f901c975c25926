//! The `berth` command line: the daemon (`berth serve`) and the operator's client verbs, which talk CRI to
//! a daemon over its socket exactly as crictl does.

pub mod client;
mod config_cmd;
mod image_fs_info;
mod images;
mod info;
mod output;
mod progress;
mod runtime;
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
    /// Seconds to wait for the daemon to connect and answer.
    #[arg(long, global = true, default_value_t = 10)]
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
}

/// Parses the command line, runs the command, and turns any error into one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let timeout = Duration::from_secs(cli.timeout.max(1));
    if let Command::Runtime(args) = cli.command {
        return ExitCode::from(runtime::run(*args));
    }
    let outcome: Result<(), String> = match cli.command {
        Command::Runtime(_) => unreachable!("handled above"),
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berth-worker")
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?;
    runtime.block_on(crate::daemon::serve(config)).map_err(|err| chain(&err))
}

/// Runs a client verb on a single-threaded runtime: the CLI does one thing at a time.
fn client_command<F, Fut>(endpoint: &str, timeout: Duration, run: F) -> Result<(), String>
where
    F: FnOnce(client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let endpoint = Endpoint::parse(endpoint).map_err(|err| chain(&err))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?;
    runtime.block_on(async move {
        let client = client::Client::connect(endpoint, timeout).await.map_err(|err| chain(&err))?;
        run(client).await
    })
}
