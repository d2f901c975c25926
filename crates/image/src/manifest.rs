//! Manifests, indexes and image configs: the OCI image spec's and Docker's schema2 JSON, and choosing the
//! manifest for this host from a multi-platform index.
//!
//! Docker schema2 and OCI use the same field names, so one set of types reads both; the media type tells
//! a manifest from an index. Docker schema1 (deprecated since 2017, unsigned digests) is refused with an
//! error that says so rather than misread.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header for manifest requests: everything we can read, so registries do not convert.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// The platform of this build of berth, in OCI (Go) names.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform { architecture: architecture.into(), os: "linux".into(), variant: variant.map(Into::into) }
    }

    /// How well an index entry's platform fits this one: `None` when it cannot run here, else a rank (lower
    /// is better) so an exact variant beats an entry without one.
    pub fn rank(&self, candidate: &Platform) -> Option<u8> {
        if candidate.os != self.os || candidate.architecture != self.architecture {
            return None;
        }
        match (&self.variant, &candidate.variant) {
            (Some(want), Some(have)) if want == have => Some(0),
            (_, None) => Some(1),
            // arm64 images are often labelled v8 or not at all; any other variant must match exactly.
            (None, Some(_)) => Some(2),
            (Some(_), Some(_)) => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// What a manifest request returned.
#[derive(Debug, Clone)]
pub enum Parsed {
    Manifest(Manifest),
    Index(Index),
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "{what} is a Docker schema1 manifest, which berth does not support (deprecated since 2017): rebuild or \
         re-push the image with a current tool"
    )]
    Schema1 { what: String },
    #[error("{what} has unsupported media type {media_type:?}")]
    MediaType { what: String, media_type: String },
    #[error("{what} is not valid manifest JSON")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Just enough of any manifest to tell what it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

/// Reads a manifest or index. `content_type` is the registry's header; the body's own `mediaType` wins
/// when present (registries are known to send generic content types).
pub fn parse(what: &str, bytes: &[u8], content_type: Option<&str>) -> Result<Parsed, ManifestError> {
    let json = |source| ManifestError::Json { what: what.to_owned(), source };
    let probe: Probe = serde_json::from_slice(bytes).map_err(json)?;
    let media_type = probe
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_owned()))
        .unwrap_or_default();
    if probe.schema_version == Some(1) || media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED {
        return Err(ManifestError::Schema1 { what: what.to_owned() });
    }
    let is_index = match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => true,
        OCI_MANIFEST | DOCKER_MANIFEST => false,
        // An OCI manifest may omit mediaType; fall back to its shape.
        "" | "application/json" | "application/octet-stream" => probe.manifests.is_some(),
        other => return Err(ManifestError::MediaType { what: what.to_owned(), media_type: other.to_owned() }),
    };
    if is_index {
        Ok(Parsed::Index(serde_json::from_slice(bytes).map_err(json)?))
    } else {
        Ok(Parsed::Manifest(serde_json::from_slice(bytes).map_err(json)?))
    }
}

/// The entry of `index` to run on `host`, or `None` when nothing fits.
pub fn select<'a>(index: &'a Index, host: &Platform) -> Option<&'a Descriptor> {
    index
        .manifests
        .iter()
        .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""))
        .filter_map(|d| Some((host.rank(d.platform.as_ref()?)?, d)))
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
}

/// The parts of an image config berth uses; the full JSON is kept as the blob and shown verbatim.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: ContainerDefaults,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(default, rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// The image's defaults for containers (`config` in the image config), as the pods work needs them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerDefaults {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub volumes: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub stop_signal: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(arch: &str, variant: Option<&str>) -> Platform {
        Platform { architecture: arch.into(), os: "linux".into(), variant: variant.map(Into::into) }
    }

    fn entry(n: u8, p: Platform) -> Descriptor {
        Descriptor { media_type: OCI_MANIFEST.into(), digest: Digest::of(&[n]), size: 1, platform: Some(p) }
    }

    #[test]
    fn the_host_platform_is_chosen_from_an_index() {
        let index = Index {
            schema_version: 2,
            media_type: OCI_INDEX.into(),
            manifests: vec![
                entry(1, platform("arm", Some("v6"))),
                entry(2, platform("arm64", None)),
                entry(3, platform("arm64", Some("v8"))),
                entry(4, platform("amd64", None)),
                entry(5, Platform { os: "windows".into(), ..platform("amd64", None) }),
            ],
        };
        assert_eq!(select(&index, &platform("amd64", None)).unwrap().digest, Digest::of(&[4]));
        assert_eq!(select(&index, &platform("arm64", Some("v8"))).unwrap().digest, Digest::of(&[3]));
        assert!(select(&index, &platform("arm", Some("v7"))).is_none());
        assert!(select(&index, &platform("s390x", None)).is_none());
    }

    #[test]
    fn schema1_is_refused_by_name() {
        let err = parse("busybox:old", br#"{"schemaVersion":1,"name":"busybox","fsLayers":[]}"#, None).unwrap_err();
        assert!(err.to_string().contains("Docker schema1"), "{err}");
        let err = parse("x", br#"{"schemaVersion":2}"#, Some(DOCKER_SCHEMA1_SIGNED)).unwrap_err();
        assert!(matches!(err, ManifestError::Schema1 { .. }));
    }

    #[test]
    fn docker_and_oci_manifests_and_indexes_parse() {
        let d = Digest::of(b"c");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"x","digest":"{d}","size":3}},"layers":[{{"mediaType":"y","digest":"{d}","size":4}}]}}"#
        );
        assert!(matches!(parse("m", manifest.as_bytes(), None).unwrap(), Parsed::Manifest(m) if m.layers.len() == 1));
        let index = format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{d}","size":3}}]}}"#);
        assert!(matches!(parse("i", index.as_bytes(), Some(OCI_INDEX)).unwrap(), Parsed::Index(_)));
        assert!(matches!(parse("i", index.as_bytes(), None).unwrap(), Parsed::Index(_)));
    }
}
