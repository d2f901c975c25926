//! Log output of the daemon: text or JSON lines on stderr, level from the config or `BERTH_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// The environment variable that overrides `log.level` with a full tracing filter.
pub const FILTER_ENV: &str = "BERTH_LOG";

pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| {
        // Dependencies log at warn unless asked for: their info lines (every HTTP/2 connection) drown ours.
        EnvFilter::new(format!("warn,berth={level},berth_store={level},berth_cni={level}", level = config.level))
    });
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}

/// The shim's log: text lines on its stderr (the pod's `shim.log`), level from `BERTH_LOG` or info.
pub fn init_shim() {
    let filter = EnvFilter::try_from_env(FILTER_ENV).unwrap_or_else(|_| EnvFilter::new("warn,berth=info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();
}
