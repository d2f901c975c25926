//! Manifests, indexes and image configs as a registry sends them, with the content types registries send.
//! The selected entry of an index is one of its manifests; an image config that parses gives chain IDs for
//! every diff ID.
#![no_main]

use berth_image::manifest::{self, ImageConfig, Parsed, Platform};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json"),
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json; charset=utf-8"),
    Some("application/json"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let content_type = CONTENT_TYPES[usize::from(selector) % CONTENT_TYPES.len()];
    match manifest::parse("fuzz", body, content_type) {
        Ok(Parsed::Index(index)) => {
            if let Some(chosen) = manifest::select(&index, &Platform::host()) {
                assert!(index.manifests.iter().any(|d| std::ptr::eq(d, chosen)));
            }
        }
        Ok(Parsed::Manifest(manifest)) => {
            let _ = serde_json::to_vec(&manifest).expect("a parsed manifest serializes");
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
    if let Ok(config) = serde_json::from_slice::<ImageConfig>(body) {
        let chain = berth_image::digest::chain_ids(&config.rootfs.diff_ids);
        assert_eq!(chain.len(), config.rootfs.diff_ids.len());
        assert_eq!(chain.first(), config.rootfs.diff_ids.first());
    }
});
