//! `berth config default` and `berth config check`.

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::{self, Config};
use crate::error::chain;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the complete default configuration file, every key commented.
    Default,
    /// Check a configuration file and print the effective configuration (credentials redacted).
    Check {
        /// The file to check.
        #[arg(default_value = config::DEFAULT_PATH)]
        path: PathBuf,
    },
}

pub fn run(command: ConfigCommand) -> Result<(), String> {
    match command {
        ConfigCommand::Default => {
            print!("{}", config::DEFAULT_TOML);
            Ok(())
        }
        ConfigCommand::Check { path } => {
            let config = Config::load(&path, true).map_err(|err| chain(&err))?;
            let text = toml::to_string(&config.redacted()).map_err(|err| format!("cannot print the config: {err}"))?;
            print!("{text}");
            Ok(())
        }
    }
}
