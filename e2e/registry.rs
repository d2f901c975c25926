//! The test rig's registry: Debian's docker-registry on 127.0.0.1 serving images built from busybox-static,
//! with the same digests every time they are built.

use crate::support::http;
use crate::support::registry::{TestRegistry, push_images, read_images, start_registry};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

#[test]
fn the_test_images_are_served_by_a_real_registry() {
    let registry = TestRegistry::get();
    for name in ["busybox", "web", "big"] {
        let image = registry.image(name);
        let path = format!("/v2/{}/manifests/{}", image.repository, image.tag);
        let response = http::get(&registry.address, &path, &[("Accept", MANIFEST_TYPES)]);
        assert_eq!(response.status, 200, "{name}: {}", String::from_utf8_lossy(&response.body));
        assert_eq!(response.header("Docker-Content-Digest"), Some(image.manifest_digest.as_str()), "{name}");
        let manifest: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
        let layers = manifest["layers"].as_array().unwrap();
        match name {
            "busybox" => assert_eq!(layers.len(), 1),
            "web" => assert_eq!(layers.len(), 2),
            _ => {
                assert!(layers.len() >= 5, "big image has {} layers", layers.len());
                assert!(image.size > 100_000_000, "big image is {} bytes", image.size);
            }
        }
        let config =
            http::get(&registry.address, &format!("/v2/{}/blobs/{}", image.repository, image.config_digest), &[]);
        assert_eq!(config.status, 200);
        let config: serde_json::Value = serde_json::from_slice(&config.body).unwrap();
        assert_eq!(config["os"], "linux");
        if name == "web" {
            assert_eq!(config["config"]["ExposedPorts"]["80/tcp"], serde_json::json!({}));
        }
    }
}

#[test]
fn test_images_have_the_same_digests_in_every_registry() {
    let shared = TestRegistry::get();
    let dir = tempfile::Builder::new().prefix("berth-registry.").tempdir().unwrap();
    let address = start_registry(dir.path());
    let out = dir.path().join("images.json");
    push_images(&address, &out);
    let again = read_images(&out);
    let _ = std::process::Command::new("bash")
        .arg(crate::support::repo_root().join("hack/registry.sh"))
        .arg("stop")
        .arg(dir.path())
        .status();
    for (name, image) in &shared.images {
        assert_eq!(again[name].manifest_digest, image.manifest_digest, "{name}");
        assert_eq!(again[name].config_digest, image.config_digest, "{name}");
    }
}
