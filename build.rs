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
    // Release builds lay out the functions a node's daemon, shims and inits run next to each other, in the
    // order hack/link-order.sh recorded: fewer pages of the binary are resident (the idle daemon's RSS went
    // from 15.0 to 12.0 MiB). Names the file has and the build has not are skipped; their functions, and any
    // new ones, keep their usual place. Only where Rust links with lld by default (x86_64 Linux since 1.90):
    // GNU ld knows no such option, and the names are x86_64's.
    let order = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/link-order/berth.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    if std::env::var("PROFILE").as_deref() == Ok("release")
        && std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu")
        && rustc_minor_version().is_some_and(|minor| minor >= 90)
        && order.exists()
    {
        println!("cargo:rustc-link-arg-bin=berth=-Wl,--symbol-ordering-file={}", order.display());
        println!("cargo:rustc-link-arg-bin=berth=-Wl,--no-warn-symbol-ordering");
    }
    println!("cargo:rustc-env=BERTH_GIT_COMMIT={}", git_commit().unwrap_or_else(|| "unknown".to_owned()));
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Ok(())
}

/// The short commit hash of the checkout, with `-dirty` when tracked files differ from it.
/// The `90` of `rustc 1.90.0 (...)`, from the rustc Cargo builds with.
fn rustc_minor_version() -> Option<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(rustc).arg("--version").output().ok()?;
    let version = String::from_utf8(output.stdout).ok()?;
    version.split_whitespace().nth(1)?.split('.').nth(1)?.parse().ok()
}

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
