//! Discovery of the network configuration in the CNI configuration directory.
//!
//! Like containerd and CRI-O, berth uses the first valid file in lexical order among `*.conflist`,
//! `*.conf` and `*.json` (CNI spec, "Network configuration lists"; a `.conf`/`.json` file is a single
//! plugin configuration that stands for a list of one). Invalid files are skipped with a warning naming the
//! file and the reason, so one broken file cannot take a node's networking down when a good one exists.

use std::path::{Path, PathBuf};

use berth_error_kind::{ErrorKind, Kinded};
use serde_json::Value;

/// The network berth will wire pods into.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// The network's `name`.
    pub name: String,
    /// The `cniVersion` it declares.
    pub cni_version: String,
    /// The plugin types, in chain order.
    pub plugin_types: Vec<String>,
    /// The configuration as a network configuration list (single-plugin files are wrapped).
    pub list: Value,
}

/// Why no network configuration is usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the CNI configuration directory {dir}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no valid CNI network configuration in {dir}{}", describe_skipped(.skipped))]
    NoValidConfig { dir: PathBuf, skipped: Vec<(PathBuf, String)> },
}

fn describe_skipped(skipped: &[(PathBuf, String)]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let reasons: Vec<String> = skipped.iter().map(|(path, why)| format!("{}: {why}", path.display())).collect();
    format!(" (skipped {})", reasons.join("; "))
}

impl Kinded for ConfigError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::FailedPrecondition
    }
}

/// Finds the first valid network configuration in `dir`.
pub fn find_network_config(dir: &Path) -> Result<NetworkConfig, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(ConfigError::NoValidConfig { dir: dir.to_owned(), skipped: Vec::new() });
        }
        Err(source) => return Err(ConfigError::ReadDir { dir: dir.to_owned(), source }),
    };
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| matches!(path.extension().and_then(|e| e.to_str()), Some("conflist" | "conf" | "json")))
        .collect();
    candidates.sort();
    let mut skipped: Vec<(PathBuf, String)> = Vec::new();
    for path in candidates {
        match load(&path) {
            Ok(config) => {
                for (path, reason) in &skipped {
                    tracing::warn!(path = %path.display(), %reason, "skipping invalid CNI configuration");
                }
                return Ok(config);
            }
            Err(reason) => skipped.push((path, reason)),
        }
    }
    Err(ConfigError::NoValidConfig { dir: dir.to_owned(), skipped })
}

fn load(path: &Path) -> Result<NetworkConfig, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(object) = &value else {
        return Err("not a JSON object".into());
    };
    let is_list = path.extension().is_some_and(|e| e == "conflist") || object.contains_key("plugins");
    let list = if is_list {
        value.clone()
    } else {
        // A single plugin configuration: the list keys (name, cniVersion) live beside the plugin's own.
        serde_json::json!({
            "cniVersion": object.get("cniVersion").cloned().unwrap_or(Value::Null),
            "name": object.get("name").cloned().unwrap_or(Value::Null),
            "plugins": [value.clone()],
        })
    };
    let name = string_field(&list, "name")?;
    let cni_version = string_field(&list, "cniVersion")?;
    let plugins = list.get("plugins").and_then(Value::as_array).ok_or("\"plugins\" is missing or not a list")?;
    if plugins.is_empty() {
        return Err("\"plugins\" is empty".into());
    }
    let plugin_types = plugins
        .iter()
        .enumerate()
        .map(|(index, plugin)| {
            plugin
                .get("type")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| format!("plugin {index} has no \"type\""))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if list.get("disabled").and_then(Value::as_bool) == Some(true) {
        return Err("the network is disabled".into());
    }
    Ok(NetworkConfig { path: path.to_owned(), name, cni_version, plugin_types, list })
}

fn string_field(list: &Value, key: &str) -> Result<String, String> {
    list.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("\"{key}\" is missing or empty"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    #[test]
    fn a_missing_directory_means_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let err = find_network_config(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(err, ConfigError::NoValidConfig { ref skipped, .. } if skipped.is_empty()), "{err:?}");
    }

    #[test]
    fn the_lowest_valid_file_wins_and_invalid_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "05-broken.conflist", "{not json");
        write(dir.path(), "07-empty.conflist", r#"{"cniVersion":"1.0.0","name":"e","plugins":[]}"#);
        write(
            dir.path(),
            "10-bridge.conflist",
            r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        );
        write(dir.path(), "20-other.conf", r#"{"cniVersion":"1.0.0","name":"other","type":"ptp"}"#);
        write(dir.path(), "README.md", "ignored");
        let config = find_network_config(dir.path()).unwrap();
        assert_eq!(config.name, "pods");
        assert_eq!(config.plugin_types, vec!["bridge", "portmap"]);

        std::fs::remove_file(dir.path().join("10-bridge.conflist")).unwrap();
        let config = find_network_config(dir.path()).unwrap();
        assert_eq!((config.name.as_str(), config.plugin_types.as_slice()), ("other", ["ptp".to_owned()].as_slice()));

        std::fs::remove_file(dir.path().join("20-other.conf")).unwrap();
        let message = find_network_config(dir.path()).unwrap_err().to_string();
        assert!(message.contains("05-broken.conflist: not valid JSON"), "{message}");
        assert!(message.contains("07-empty.conflist: \"plugins\" is empty"), "{message}");
    }
}
