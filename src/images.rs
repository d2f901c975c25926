//! The daemon's image store: `berth_image::ImageStore` configured from `[images]` and `[registries]`,
//! and the CRI view of its records (`cri::v1::Image`), shared by the ImageService RPC files.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use berth_image::{Credentials, HostConfig, ImageRecord, ImageStore, RegistryOptions, StoreOptions};

use crate::config::{Config, RegistryConfig};
use crate::cri::v1::{Image, ImageSpec, Int64Value};
use crate::layout::Layout;

/// The store's options from the configuration.
pub fn store_options(config: &Config) -> StoreOptions {
    let hosts: HashMap<String, HostConfig> =
        config.registries.iter().map(|(host, registry)| (host.clone(), host_config(registry))).collect();
    StoreOptions {
        registry: RegistryOptions {
            hosts,
            stall_timeout: Duration::from_secs(config.images.stall_timeout_seconds),
            ..RegistryOptions::default()
        },
        max_concurrent_layers: config.images.max_concurrent_downloads as usize,
        sync: true,
    }
}

fn host_config(registry: &RegistryConfig) -> HostConfig {
    let credentials = match (&registry.username, &registry.password, &registry.auth, &registry.identity_token) {
        (Some(username), Some(password), _, _) => {
            Some(Credentials::Basic { username: username.clone(), password: password.clone() })
        }
        (_, _, Some(auth), _) => Credentials::from_auth(auth),
        (_, _, _, Some(token)) if !token.is_empty() => Some(Credentials::IdentityToken(token.clone())),
        _ => None,
    };
    HostConfig {
        mirrors: registry.mirrors.iter().map(|m| m.as_str().to_owned()).collect(),
        insecure: registry.insecure,
        ca_file: registry.ca_file.as_ref().map(|p| p.to_path_buf()),
        client_cert: match (&registry.client_cert, &registry.client_key) {
            (Some(cert), Some(key)) => Some((cert.to_path_buf(), key.to_path_buf())),
            _ => None,
        },
        credentials,
    }
}

/// Opens the image store under the layout's images directory.
pub fn open(
    config: &Config,
    layout: &Layout,
    db: Arc<berth_store::Store>,
) -> Result<ImageStore, berth_image::ImageError> {
    ImageStore::open(&layout.images(), db, store_options(config))
}

/// The CRI `Image` for a record. The ID is the config digest, as everywhere else.
pub fn to_cri(record: &ImageRecord) -> Image {
    let (uid, username) = user_of(&record.user);
    let id = record.id.to_string();
    Image {
        id: id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid: uid.map(|value| Int64Value { value }),
        username,
        spec: Some(ImageSpec { image: id, ..Default::default() }),
        pinned: false,
    }
}

/// The image config's `User` (`uid`, `uid:gid`, `name` or `name:group`) as CRI reports it: a numeric user
/// as `uid`, a name as `username`, nothing when the image sets no user.
pub fn user_of(user: &str) -> (Option<i64>, String) {
    let name = user.split(':').next().unwrap_or("");
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, name.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_reported_as_uid_or_name() {
        assert_eq!(user_of(""), (None, String::new()));
        assert_eq!(user_of("1000:1000"), (Some(1000), String::new()));
        assert_eq!(user_of("nobody"), (None, "nobody".to_owned()));
        assert_eq!(user_of("www:www"), (None, "www".to_owned()));
    }

    #[test]
    fn registry_credentials_come_from_the_config() {
        let config = Config::parse(
            std::path::Path::new("c.toml"),
            "[registries.\"r.io\"]\nauth = \"dTpw\"\n[registries.\"m.io\"]\ninsecure = true\nmirrors = [\"http://127.0.0.1:1\"]\n",
        )
        .unwrap();
        let options = store_options(&config);
        assert_eq!(
            options.registry.hosts["r.io"].credentials,
            Some(Credentials::Basic { username: "u".into(), password: "p".into() })
        );
        assert!(options.registry.hosts["m.io"].insecure);
        assert_eq!(options.registry.hosts["m.io"].mirrors, vec!["http://127.0.0.1:1".to_owned()]);
    }
}
