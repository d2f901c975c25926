//! Value types of the configuration that check themselves while the file is parsed, so a bad value is
//! reported with the line it is on.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

/// A path that must be absolute: relative paths would depend on the directory the daemon was started in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct AbsolutePath(PathBuf);

impl AbsolutePath {
    /// For defaults written in code, which are absolute by construction.
    pub(crate) fn fixed(path: &str) -> AbsolutePath {
        debug_assert!(path.starts_with('/'));
        AbsolutePath(PathBuf::from(path))
    }

    pub fn new(path: PathBuf) -> Result<AbsolutePath, String> {
        if path.is_absolute() {
            Ok(AbsolutePath(path))
        } else {
            Err(format!("must be an absolute path, got {:?}", path.display().to_string()))
        }
    }

    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl std::ops::Deref for AbsolutePath {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        AbsolutePath::new(PathBuf::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A mirror or registry endpoint: an http:// or https:// URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RegistryUrl(String);

impl RegistryUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for RegistryUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let url = String::deserialize(deserializer)?;
        let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
        match rest {
            Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(RegistryUrl(url)),
            _ => Err(serde::de::Error::custom(format!("mirror must be an http:// or https:// URL, got {url:?}"))),
        }
    }
}

/// The CRI socket's permission bits, written in octal ("0660"). Whoever can connect to the socket can run
/// privileged containers, so bits that let every user of the node connect (others' write) are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl Serialize for SocketMode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{:04o}", self.0))
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let mode =
            u32::from_str_radix(&text, 8).ok().filter(|&mode| mode <= 0o777 && !text.is_empty()).ok_or_else(|| {
                serde::de::Error::custom(format!("must be permission bits in octal such as \"0660\", got {text:?}"))
            })?;
        if mode & 0o002 != 0 {
            return Err(serde::de::Error::custom(format!(
                "{text:?} lets every user of the node connect, and so run privileged containers; give a group access with socket_group instead"
            )));
        }
        Ok(SocketMode(mode))
    }
}

/// Seconds to wait for in-flight RPCs at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct GraceSeconds(pub u64);

impl<'de> Deserialize<'de> for GraceSeconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let seconds = i64::deserialize(deserializer)?;
        if (1..=600).contains(&seconds) {
            Ok(GraceSeconds(seconds as u64))
        } else {
            Err(serde::de::Error::custom(format!("must be between 1 and 600 seconds, got {seconds}")))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[cni] native`: whether a chain whose every plugin berth implements in process runs in process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CniNative {
    #[default]
    Auto,
    Off,
}

impl From<CniNative> for berth_cni::NativeMode {
    fn from(value: CniNative) -> Self {
        match value {
            CniNative::Auto => berth_cni::NativeMode::Auto,
            CniNative::Off => berth_cni::NativeMode::Off,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}
