//! Compiles the CRI v1 API (proto/api.proto) into tonic services and stamps the git commit into the binary.

use std::path::Path;
use std::process::Command;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Debian's protoc is not on every build machine; the vendored one is the same release on all of them,
    // so the generated code does not depend on what the host happens to have installed.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded at this point; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    println!("cargo:rerun-if-changed=proto/api.proto");
    println!("cargo:rerun-if-changed=proto/berth.proto");
    println!("cargo:rerun-if-changed=proto/shim.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // serde for the CLI's crictl-style config files (snake_case field names, enums as numbers, missing
        // fields default) and its JSON/YAML output (camelCase, as crictl prints).
        .message_attribute(
            ".runtime.v1",
            "#[derive(serde::Deserialize, serde::Serialize)] #[serde(default, rename_all(serialize = \"camelCase\"))]",
        )
        // An env value is bytes since CRI 1.34 but a string in JSON, as cri-api's own KeyValue.MarshalJSON keeps it.
        .field_attribute(".runtime.v1.KeyValue.value", "#[serde(with = \"crate::cli::cri_config::string_bytes\")]")
        .compile_protos(&["proto/api.proto", "proto/berth.proto", "proto/shim.proto"], &["proto"])?;

    // A position-dependent executable: the linker resolves the pointers in vtables and other relocated
    // read-only data at link time, so those pages stay clean and shared between processes. As a PIE, every
    // process (each per-pod shim above all) relocates them at start and keeps a private dirty copy: about
    // 1 MiB per shim (measured with hack/bench/pods.sh). Shared libraries, heap and stacks stay randomized.
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rustc-env=BERTH_GIT_COMMIT={}", git_commit().unwrap_or_else(|| "unknown".to_owned()));
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Ok(())
}

/// The short commit hash of the checkout, with `-dirty` when tracked files differ from it.
fn git_commit() -> Option<String> {
    let output = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let commit = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    let dirty = Command::new("git")
        .args(["diff-index", "--quiet", "HEAD", "--"])
        .status()
        .map(|status| !status.success())
        .unwrap_or(false);
    Some(if dirty { format!("{commit}-dirty") } else { commit })
}
