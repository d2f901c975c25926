//! The test registry: Debian's docker-registry on 127.0.0.1 holding the images `hack/test-images.py` builds.
//!
//! `make test` starts one registry for the whole run (hack/e2e.sh) and points `BERTH_TEST_IMAGES` at the
//! JSON the image script wrote; a test run without it (plain `cargo nextest run`) starts a private registry
//! for the test, stopped when the [`TestRegistry`] is dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct TestImage {
    #[serde(rename = "ref")]
    pub reference: String,
    pub manifest_digest: String,
    pub config_digest: String,
    pub size: u64,
    pub repository: String,
    pub tag: String,
}

pub struct TestRegistry {
    pub address: String,
    pub images: BTreeMap<String, TestImage>,
    /// Set when this test started the registry itself and must stop it.
    private_dir: Option<tempfile::TempDir>,
}

impl TestRegistry {
    /// The run's shared registry, or a private one with the images pushed.
    pub fn get() -> TestRegistry {
        if let Some(path) = std::env::var_os("BERTH_TEST_IMAGES") {
            let images = read_images(&PathBuf::from(path));
            let address = registry_address(&images);
            return TestRegistry { address, images, private_dir: None };
        }
        let dir = tempfile::Builder::new().prefix("berth-registry.").tempdir().unwrap();
        let address = start_registry(dir.path());
        let out = dir.path().join("images.json");
        push_images(&address, &out);
        TestRegistry { address, images: read_images(&out), private_dir: Some(dir) }
    }

    pub fn image(&self, name: &str) -> &TestImage {
        self.images.get(name).unwrap_or_else(|| panic!("test image {name} was not pushed"))
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(dir) = &self.private_dir {
            let _ = Command::new("bash")
                .arg(super::repo_root().join("hack/registry.sh"))
                .arg("stop")
                .arg(dir.path())
                .status();
        }
    }
}

/// Starts a registry in `dir` and returns its `127.0.0.1:PORT`.
pub fn start_registry(dir: &std::path::Path) -> String {
    super::require_tool("docker-registry");
    let output = Command::new("bash")
        .arg(super::repo_root().join("hack/registry.sh"))
        .arg("start")
        .arg(dir)
        .output()
        .expect("run hack/registry.sh");
    assert!(output.status.success(), "hack/registry.sh start failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Builds and pushes the test images to `address`, writing their description to `out`.
pub fn push_images(address: &str, out: &std::path::Path) {
    super::require_tool("python3");
    assert!(
        std::path::Path::new("/bin/busybox").exists(),
        "missing prerequisite busybox-static: run hack/install-deps.sh"
    );
    let output = Command::new("python3")
        .arg(super::repo_root().join("hack/test-images.py"))
        .args(["--registry", address, "--out"])
        .arg(out)
        .output()
        .expect("run hack/test-images.py");
    assert!(output.status.success(), "hack/test-images.py failed: {}", String::from_utf8_lossy(&output.stderr));
}

pub fn read_images(path: &std::path::Path) -> BTreeMap<String, TestImage> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn registry_address(images: &BTreeMap<String, TestImage>) -> String {
    let any = images.values().next().expect("at least one test image");
    any.reference.split('/').next().unwrap().to_owned()
}

/// Kills a child process (a registry a test started itself) when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts docker-registry with storage in `dir/storage` on a free loopback port, with `extra` YAML appended
/// to its config (`http:` keys such as tls, and `auth:`), and waits until it accepts connections.
/// `http_extra` goes under `http:` (indented by the caller), `extra` at the top level.
pub fn start_custom_registry(dir: &std::path::Path, http_extra: &str, extra: &str) -> (String, KillOnDrop) {
    super::require_tool("docker-registry");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("127.0.0.1:{port}");
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}/storage\n\
         http:\n  addr: {address}\n{http_extra}{extra}",
        dir.display()
    );
    std::fs::write(dir.join("config.yml"), config).unwrap();
    let log = std::fs::File::create(dir.join("registry.log")).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start docker-registry");
    let guard = KillOnDrop(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "registry did not listen: {}",
            std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (address, guard)
}
