//! Image references as users and kubelet write them: `busybox`, `registry.k8s.io/pause:3.10`,
//! `127.0.0.1:5000/app@sha256:...`, `name:tag@digest`.
//!
//! Normalization follows docker's rules (distribution/reference), which every Kubernetes user relies on: a
//! first path component is a registry host only when it contains `.` or `:` or is `localhost`; otherwise
//! the registry is `docker.io`, and one-component names live under `library/`. No tag and no digest means
//! `:latest`. When both a tag and a digest are given, the digest decides what is pulled.

use std::fmt;
use std::str::FromStr;

use crate::digest::Digest;

pub const DOCKER_HUB: &str = "docker.io";

/// The longest name (`registry/repository`, normalized) distribution/reference accepts (`NameTotalLengthMax`).
/// With the tag's 128 and a digest's 71 characters, a reference's printed form stays far below
/// [`MAX_TEXT`], so whatever parses prints as something that parses back.
const MAX_NAME: usize = 255;
/// What is read at all: longer text is refused before it is looked at.
const MAX_TEXT: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {text:?}: {reason}")]
pub struct ReferenceError {
    pub text: String,
    pub reason: String,
}

impl Reference {
    /// `registry/repository`, the name tags and digests hang off.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, when the reference has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|tag| format!("{}:{tag}", self.name()))
    }

    /// `registry/repository@digest`.
    pub fn with_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }

    /// What the registry is asked for: the digest when there is one, else the tag.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(text: &str) -> Result<Reference, ReferenceError> {
        let fail = |reason: &str| ReferenceError { text: text.to_owned(), reason: reason.to_owned() };
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        if text.len() > MAX_TEXT {
            return Err(fail(&format!("it is longer than {MAX_TEXT} characters")));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                (rest, Some(digest.parse::<Digest>().map_err(|err| fail(&format!("bad digest: {}", err.reason)))?))
            }
            None => (text, None),
        };
        // A tag is the part after the last ':' that comes after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(colon) => (&rest[..last_slash + colon], Some(&rest[last_slash + colon + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
            if !ok {
                return Err(fail("a tag is up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        let registry = if registry == "index.docker.io" { DOCKER_HUB.to_owned() } else { registry };
        if !valid_host(&registry) {
            return Err(fail("the registry must be a host name or address with an optional port"));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if registry.len() + 1 + repository.len() > MAX_NAME {
            return Err(fail(&format!("the name {registry}/{repository} is longer than {MAX_NAME} characters")));
        }
        if !repository.split('/').all(valid_component) {
            return Err(fail(
                "repository path components are lowercase letters and digits separated by '.', '_', '__' or '-'",
            ));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Reference { registry, repository, tag, digest })
    }
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => (name, Some(port)),
        _ => (host, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = if name.starts_with('[') && name.ends_with(']') {
        name[1..name.len() - 1].parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    };
    port_ok && name_ok
}

fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if is_alnum(b) {
            i += 1;
            continue;
        }
        // Separators: '.', '_', '__', or one or more '-'; always between alphanumerics.
        let run = bytes[i..].iter().take_while(|c| !is_alnum(**c)).count();
        let sep = &component[i..i + run];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
        i += run;
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Reference {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn docker_hub_names_are_normalized() {
        assert_eq!(parse("busybox").to_string(), "docker.io/library/busybox:latest");
        assert_eq!(parse("library/busybox:1.36").to_string(), "docker.io/library/busybox:1.36");
        assert_eq!(parse("index.docker.io/user/app").to_string(), "docker.io/user/app:latest");
        assert_eq!(parse("user/app:v1").name(), "docker.io/user/app");
    }

    #[test]
    fn registries_ports_tags_and_digests() {
        let digest = Digest::of(b"x");
        let r = parse("127.0.0.1:5000/berth-test/busybox:latest");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "berth-test/busybox", Some("latest"))
        );
        let r = parse(&format!("localhost/app@{digest}"));
        assert_eq!((r.registry.as_str(), r.tag.clone(), r.digest.clone()), ("localhost", None, Some(digest.clone())));
        assert_eq!(r.target(), digest.to_string());
        let r = parse(&format!("registry.k8s.io/pause:3.10@{digest}"));
        assert_eq!(r.tag.as_deref(), Some("3.10"));
        assert_eq!(r.target(), digest.to_string(), "the digest decides what is pulled");
        assert_eq!(r.with_digest(&digest), format!("registry.k8s.io/pause@{digest}"));
        assert_eq!(parse("registry.k8s.io:443/a/b/c").repository, "a/b/c");
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in
            ["", "UPPER/case", "busybox:", "busybox:-x", "a//b", "a/../b", "busybox@sha256:123", "reg:port/x", "x/-y"]
        {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn names_are_limited_after_normalization() {
        // Normalizing adds `docker.io/library/` and `:latest`: a name near the text limit would print as
        // a reference that no longer parses. The limit is distribution's, on the normalized name.
        let longest = "a".repeat(MAX_NAME - "docker.io/library/".len());
        assert_eq!(parse(&longest).name().len(), MAX_NAME);
        let err = format!("{longest}a").parse::<Reference>().unwrap_err();
        assert!(err.reason.contains("longer than 255"), "{err}");
        assert!("a".repeat(4000).parse::<Reference>().is_err());
        let reference = parse(&format!("{longest}:{}@{}", "t".repeat(128), Digest::of(b"x")));
        assert_eq!(parse(&reference.to_string()), reference, "the longest reference prints as itself");
    }
}
