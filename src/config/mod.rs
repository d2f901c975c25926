//! The daemon's configuration: one TOML file, every key optional.
//!
//! The defaults are the file `default.toml` beside this module (printed by `berth config default`), and
//! `Config::default()` must equal what that file parses to; a unit test holds the two together, and another
//! checks that every key has a comment. Values are checked while the file is parsed, so every error names
//! the file, the line, the key and what is allowed.

mod values;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_error_kind::{ErrorKind, Kinded};
use serde::{Deserialize, Serialize};

pub use values::{AbsolutePath, CgroupDriver, CniNative, LogFormat, LogLevel, RegistryUrl};

/// The file `berth serve` reads when `--config` is not given; a missing default file means "all defaults".
pub const DEFAULT_PATH: &str = "/etc/berth/config.toml";

/// The complete default configuration, with a comment on every key.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub log: LogConfig,
    pub cgroup: CgroupConfig,
    pub cni: CniConfig,
    pub cdi: CdiConfig,
    pub checkpoint: CheckpointConfig,
    pub streaming: StreamingConfig,
    pub stats: StatsConfig,
    pub metrics: MetricsConfig,
    pub images: ImagesConfig,
    pub registries: BTreeMap<String, RegistryConfig>,
    pub runtime_handlers: BTreeMap<String, RuntimeHandlerConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    pub root: AbsolutePath,
    pub state: AbsolutePath,
    pub socket: AbsolutePath,
    /// The socket's owner and group (a name or a numeric id; empty: the daemon's own) and mode.
    pub socket_owner: String,
    pub socket_group: String,
    pub socket_mode: values::SocketMode,
    pub shutdown_grace_seconds: values::GraceSeconds,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            root: AbsolutePath::fixed("/var/lib/berth"),
            state: AbsolutePath::fixed("/run/berth"),
            socket: AbsolutePath::fixed("/run/berth/berth.sock"),
            socket_owner: String::new(),
            socket_group: String::new(),
            socket_mode: values::SocketMode(0o660),
            shutdown_grace_seconds: values::GraceSeconds(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupConfig {
    pub driver: CgroupDriver,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CniConfig {
    pub conf_dir: AbsolutePath,
    pub bin_dirs: Vec<AbsolutePath>,
    pub native: CniNative,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: AbsolutePath::fixed("/etc/cni/net.d"),
            bin_dirs: vec![AbsolutePath::fixed("/opt/cni/bin"), AbsolutePath::fixed("/usr/lib/cni")],
            native: CniNative::Auto,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CdiConfig {
    pub spec_dirs: Vec<AbsolutePath>,
}

impl Default for CdiConfig {
    fn default() -> Self {
        CdiConfig { spec_dirs: vec![AbsolutePath::fixed("/etc/cdi"), AbsolutePath::fixed("/var/run/cdi")] }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointConfig {
    /// The CRIU binary: a path, or a name looked up in PATH and then /usr/local/sbin, /usr/sbin, /sbin.
    pub criu: String,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig { criu: "criu".to_owned() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, try_from = "StreamingConfigFields")]
pub struct StreamingConfig {
    pub address: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<AbsolutePath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<AbsolutePath>,
    /// Require a client certificate signed by a CA in this file (kubelet's streaming proxy presents one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<AbsolutePath>,
    /// An exec, attach or port-forward session in which nothing moved for this long is closed (kubelet's
    /// streaming idle timeout is 4 hours too).
    pub idle_timeout_seconds: u64,
    /// Exec and attach sessions at once per container (port-forward sessions per pod sandbox).
    pub max_sessions_per_container: usize,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            idle_timeout_seconds: 4 * 60 * 60,
            max_sessions_per_container: 16,
        }
    }
}

/// The keys of `[streaming]` as written, before the checks that involve more than one key.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct StreamingConfigFields {
    address: SocketAddr,
    tls_cert: Option<AbsolutePath>,
    tls_key: Option<AbsolutePath>,
    tls_client_ca: Option<AbsolutePath>,
    idle_timeout_seconds: u64,
    max_sessions_per_container: usize,
}

impl Default for StreamingConfigFields {
    fn default() -> Self {
        let StreamingConfig {
            address,
            tls_cert,
            tls_key,
            tls_client_ca,
            idle_timeout_seconds,
            max_sessions_per_container,
        } = StreamingConfig::default();
        StreamingConfigFields {
            address,
            tls_cert,
            tls_key,
            tls_client_ca,
            idle_timeout_seconds,
            max_sessions_per_container,
        }
    }
}

impl TryFrom<StreamingConfigFields> for StreamingConfig {
    type Error = String;
    fn try_from(fields: StreamingConfigFields) -> Result<Self, String> {
        if fields.tls_cert.is_some() != fields.tls_key.is_some() {
            return Err("tls_cert and tls_key must be set together".into());
        }
        if fields.tls_client_ca.is_some() && fields.tls_cert.is_none() {
            return Err("tls_client_ca needs tls_cert and tls_key: client certificates are asked for over TLS".into());
        }
        if fields.idle_timeout_seconds == 0 {
            return Err("idle_timeout_seconds must be at least 1".into());
        }
        if fields.max_sessions_per_container == 0 {
            return Err("max_sessions_per_container must be at least 1".into());
        }
        Ok(StreamingConfig {
            address: fields.address,
            tls_cert: fields.tls_cert,
            tls_key: fields.tls_key,
            tls_client_ca: fields.tls_client_ca,
            idle_timeout_seconds: fields.idle_timeout_seconds,
            max_sessions_per_container: fields.max_sessions_per_container,
        })
    }
}

/// Container and pod statistics (`[stats]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, try_from = "StatsConfigFields")]
pub struct StatsConfig {
    pub writable_layer_refresh_seconds: u64,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig { writable_layer_refresh_seconds: 10 }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct StatsConfigFields {
    writable_layer_refresh_seconds: u64,
}

impl Default for StatsConfigFields {
    fn default() -> Self {
        StatsConfigFields { writable_layer_refresh_seconds: StatsConfig::default().writable_layer_refresh_seconds }
    }
}

impl TryFrom<StatsConfigFields> for StatsConfig {
    type Error = String;
    fn try_from(f: StatsConfigFields) -> Result<Self, String> {
        if !(1..=3600).contains(&f.writable_layer_refresh_seconds) {
            return Err(format!(
                "writable_layer_refresh_seconds must be between 1 and 3600, got {}",
                f.writable_layer_refresh_seconds
            ));
        }
        Ok(StatsConfig { writable_layer_refresh_seconds: f.writable_layer_refresh_seconds })
    }
}

/// berth's own Prometheus endpoint (`[metrics]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub address: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: false, address: SocketAddr::from(([127, 0, 0, 1], 9539)) }
    }
}

/// How images are pulled and collected (`[images]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, try_from = "ImagesConfigFields")]
pub struct ImagesConfig {
    pub stall_timeout_seconds: u64,
    pub max_concurrent_downloads: u64,
    pub gc_interval_seconds: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig { stall_timeout_seconds: 30, max_concurrent_downloads: 4, gc_interval_seconds: 300 }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ImagesConfigFields {
    stall_timeout_seconds: u64,
    max_concurrent_downloads: u64,
    gc_interval_seconds: u64,
}

impl Default for ImagesConfigFields {
    fn default() -> Self {
        let ImagesConfig { stall_timeout_seconds, max_concurrent_downloads, gc_interval_seconds } =
            ImagesConfig::default();
        ImagesConfigFields { stall_timeout_seconds, max_concurrent_downloads, gc_interval_seconds }
    }
}

impl TryFrom<ImagesConfigFields> for ImagesConfig {
    type Error = String;
    fn try_from(f: ImagesConfigFields) -> Result<Self, String> {
        if !(1..=3600).contains(&f.stall_timeout_seconds) {
            return Err(format!("stall_timeout_seconds must be between 1 and 3600, got {}", f.stall_timeout_seconds));
        }
        if !(1..=64).contains(&f.max_concurrent_downloads) {
            return Err(format!(
                "max_concurrent_downloads must be between 1 and 64, got {}",
                f.max_concurrent_downloads
            ));
        }
        Ok(ImagesConfig {
            stall_timeout_seconds: f.stall_timeout_seconds,
            max_concurrent_downloads: f.max_concurrent_downloads,
            gc_interval_seconds: f.gc_interval_seconds,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields, try_from = "RegistryConfigFields")]
pub struct RegistryConfig {
    pub mirrors: Vec<RegistryUrl>,
    pub insecure: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<AbsolutePath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<AbsolutePath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<AbsolutePath>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<String>,
}

impl RegistryConfig {
    /// A copy safe to show (in `Status` verbose info, logs): credentials are replaced by a marker.
    pub fn redacted(&self) -> RegistryConfig {
        let hide = |value: &Option<String>| value.as_ref().map(|_| "<redacted>".to_owned());
        RegistryConfig {
            password: hide(&self.password),
            auth: hide(&self.auth),
            identity_token: hide(&self.identity_token),
            ..self.clone()
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RegistryConfigFields {
    mirrors: Vec<RegistryUrl>,
    insecure: bool,
    ca_file: Option<AbsolutePath>,
    client_cert: Option<AbsolutePath>,
    client_key: Option<AbsolutePath>,
    username: Option<String>,
    password: Option<String>,
    auth: Option<String>,
    identity_token: Option<String>,
}

impl TryFrom<RegistryConfigFields> for RegistryConfig {
    type Error = String;
    fn try_from(f: RegistryConfigFields) -> Result<Self, String> {
        if f.client_cert.is_some() != f.client_key.is_some() {
            return Err("client_cert and client_key must be set together".into());
        }
        if f.username.is_some() != f.password.is_some() {
            return Err("username and password must be set together".into());
        }
        let kinds = [f.username.is_some(), f.auth.is_some(), f.identity_token.is_some()];
        if kinds.iter().filter(|set| **set).count() > 1 {
            return Err("use one of username/password, auth or identity_token".into());
        }
        Ok(RegistryConfig {
            mirrors: f.mirrors,
            insecure: f.insecure,
            ca_file: f.ca_file,
            client_cert: f.client_cert,
            client_key: f.client_key,
            username: f.username,
            password: f.password,
            auth: f.auth,
            identity_token: f.identity_token,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeHandlerConfig {
    pub privileged_without_host_devices: bool,
    pub allowed_annotations: Vec<String>,
}

/// Why the configuration could not be loaded. The message is one line naming file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}:{line}: {key}{message}")]
    Invalid { path: PathBuf, line: usize, key: String, message: String },
}

impl Kinded for ConfigError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

impl Config {
    /// Loads `path`. When `required` is false a missing file means "all defaults" (the daemon runs with no
    /// file at all); an explicitly named file must exist.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read { path: path.to_owned(), source }),
        }
    }

    /// Parses configuration text; `path` only names the source in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|err| {
            let offset = err.span().map(|span| span.start).unwrap_or(0).min(text.len());
            let line = text[..offset].matches('\n').count() + 1;
            let key = key_at(text, line).map(|key| format!("{key}: ")).unwrap_or_default();
            ConfigError::Invalid { path: path.to_owned(), line, key, message: err.message().replace('\n', " ") }
        })
    }

    /// The configuration as `Status` verbose info shows it: complete, with credentials redacted.
    pub fn redacted(&self) -> Config {
        let mut shown = self.clone();
        for registry in shown.registries.values_mut() {
            *registry = registry.redacted();
        }
        shown
    }
}

/// The dotted key (`daemon.root`) assigned on 1-based `line`, found from the line's `key =` and the nearest
/// table header above it, so an error about a value can say which key holds it.
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?.trim();
    let header = lines[..line - 1]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    if here.starts_with('[') {
        return Some(here.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    }
    let (key, _) = here.split_once('=')?;
    let key = key.trim();
    Some(match header {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("/etc/berth/config.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_default_file_is_the_default_config() {
        assert_eq!(parse(DEFAULT_TOML).unwrap(), Config::default());
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn every_default_key_is_in_the_default_file_with_a_comment() {
        let value = toml::Value::try_from(Config::default()).unwrap();
        let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
        for (table, entries) in value.as_table().unwrap() {
            let header = format!("[{table}]");
            let Some(toml::Value::Table(entries)) = Some(entries) else { continue };
            if entries.is_empty() {
                // Maps such as registries are documented by a commented example.
                assert!(DEFAULT_TOML.contains(&format!("# [{table}.")), "no example for [{table}]");
                continue;
            }
            let start = lines.iter().position(|l| *l == header).unwrap_or_else(|| panic!("{header} missing"));
            for key in entries.keys() {
                let at = lines[start..]
                    .iter()
                    .position(|l| l.starts_with(&format!("{key} =")))
                    .unwrap_or_else(|| panic!("{table}.{key} missing from default.toml"))
                    + start;
                assert!(lines[at - 1].starts_with('#'), "{table}.{key} has no comment above it");
            }
        }
    }

    #[test]
    fn unknown_keys_name_the_line_and_the_allowed_keys() {
        let err = parse("[daemon]\nroot = \"/r\"\nsokcet = \"/x\"\n").unwrap_err();
        assert!(
            err.starts_with("config file /etc/berth/config.toml:3: daemon.sokcet: unknown field `sokcet`"),
            "{err}"
        );
        assert!(err.contains("`socket`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = parse("[deamon]\n").unwrap_err();
        assert!(err.contains(":1: deamon: unknown field `deamon`"), "{err}");
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        let cases = [
            ("[daemon]\nroot = \"var/lib\"\n", ":2: daemon.root: must be an absolute path"),
            ("[log]\nlevel = \"loud\"\n", ":2: log.level: unknown variant `loud`, expected one of `trace`"),
            (
                "[cgroup]\ndriver = \"cgroupv3\"\n",
                "cgroup.driver: unknown variant `cgroupv3`, expected `cgroupfs` or `systemd`",
            ),
            ("[streaming]\naddress = \"localhost\"\n", "streaming.address: invalid socket address"),
            ("[daemon]\nshutdown_grace_seconds = 0\n", "daemon.shutdown_grace_seconds: must be between 1 and 600"),
            (
                "[daemon]\nsocket_mode = \"0666\"\n",
                ":2: daemon.socket_mode: \"0666\" lets every user of the node connect",
            ),
            ("[daemon]\nsocket_mode = \"rw-rw----\"\n", "daemon.socket_mode: must be permission bits in octal"),
            ("[daemon]\nsocket_mode = \"01660\"\n", "daemon.socket_mode: must be permission bits in octal"),
            ("[streaming]\ntls_cert = \"/a\"\n", "tls_cert and tls_key must be set together"),
            ("[streaming]\ntls_client_ca = \"/ca.crt\"\n", "tls_client_ca needs tls_cert and tls_key"),
            ("[streaming]\nidle_timeout_seconds = 0\n", "idle_timeout_seconds must be at least 1"),
            ("[streaming]\nmax_sessions_per_container = 0\n", "max_sessions_per_container must be at least 1"),
            (
                "[registries.\"r.io\"]\nmirrors = [\"ftp://m\"]\n",
                "registries.\"r.io\".mirrors: mirror must be an http:// or https:// URL",
            ),
            ("[registries.\"r.io\"]\nusername = \"u\"\n", "username and password must be set together"),
            ("[images]\nstall_timeout_seconds = 0\n", "stall_timeout_seconds must be between 1 and 3600"),
            ("[images]\nmax_concurrent_downloads = 100\n", "max_concurrent_downloads must be between 1 and 64"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: got {err}");
        }
    }

    #[test]
    fn registries_and_handlers_parse_and_credentials_are_redacted() {
        let config = parse(
            "[registries.\"registry.k8s.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\nusername = \"u\"\npassword = \"hunter2\"\n\
             [runtime_handlers.restricted]\nprivileged_without_host_devices = true\n",
        )
        .unwrap();
        let registry = &config.registries["registry.k8s.io"];
        assert_eq!(registry.mirrors[0].as_str(), "http://127.0.0.1:5000");
        assert!(config.runtime_handlers["restricted"].privileged_without_host_devices);
        let shown = serde_json::to_string(&config.redacted()).unwrap();
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"), "{shown}");
    }
}
