//! Building images in the tests themselves and pushing them to the test registry over the distribution
//! API: multi-platform indexes, zstd and plain layers, and the malicious or broken layers that no real
//! builder produces (they are made with `berth_image::test_tar`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use berth_image::Digest;
use serde_json::json;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Compression {
    Gzip,
    Zstd,
    Plain,
}

/// One layer: its tar and how it is compressed; `size_override`/`diff_id_override` lie in the
/// descriptor or config, to test verification.
#[derive(Clone)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub compression: Compression,
    pub size_override: Option<u64>,
    pub diff_id_override: Option<Digest>,
}

impl Layer {
    pub fn gzip(tar: Vec<u8>) -> Layer {
        Layer { tar, compression: Compression::Gzip, size_override: None, diff_id_override: None }
    }
}

/// What was pushed.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub reference: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
}

pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A raw HTTP/1.1 exchange with the loopback registry.
pub fn request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    assert!(address.starts_with("127.0.0.1:"), "tests only talk to loopback, not {address}");
    let mut stream = TcpStream::connect(address).expect("connect to registry");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP header end");
    let text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    (status, headers, raw[split + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// Uploads a blob (POST, then a monolithic PUT) unless the registry has it.
pub fn push_blob(address: &str, repository: &str, data: &[u8]) -> Digest {
    let digest = Digest::of(data);
    let (status, _, _) = request(address, "HEAD", &format!("/v2/{repository}/blobs/{digest}"), &[], b"");
    if status == 200 {
        return digest;
    }
    let (status, headers, body) = request(address, "POST", &format!("/v2/{repository}/blobs/uploads/"), &[], b"");
    assert_eq!(status, 202, "start upload: {}", String::from_utf8_lossy(&body));
    let location = header(&headers, "Location").expect("upload location");
    let path = location.split_once("://").map(|(_, rest)| &rest[rest.find('/').unwrap()..]).unwrap_or(location);
    let separator = if path.contains('?') { '&' } else { '?' };
    let (status, _, body) = request(
        address,
        "PUT",
        &format!("{path}{separator}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    assert_eq!(status, 201, "upload blob: {}", String::from_utf8_lossy(&body));
    digest
}

pub fn push_manifest(address: &str, repository: &str, tag: &str, media_type: &str, manifest: &[u8]) -> Digest {
    let (status, _, body) = request(
        address,
        "PUT",
        &format!("/v2/{repository}/manifests/{tag}"),
        &[("Content-Type", media_type)],
        manifest,
    );
    assert_eq!(status, 201, "push manifest {repository}:{tag}: {}", String::from_utf8_lossy(&body));
    Digest::of(manifest)
}

fn compress(tar: &[u8], compression: Compression) -> (Vec<u8>, &'static str) {
    match compression {
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(tar).unwrap();
            (encoder.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        Compression::Zstd => (
            ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        Compression::Plain => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
    }
}

/// Pushes a single-platform image built from `layers` (for `architecture`), tagged `tag`.
pub fn push_image(
    address: &str,
    repository: &str,
    tag: &str,
    layers: &[Layer],
    architecture: &str,
    user: &str,
) -> Pushed {
    let mut descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for layer in layers {
        let (blob, media_type) = compress(&layer.tar, layer.compression);
        let digest = push_blob(address, repository, &blob);
        descriptors.push(json!({
            "mediaType": media_type,
            "digest": digest.to_string(),
            "size": layer.size_override.unwrap_or(blob.len() as u64),
        }));
        diff_ids.push(layer.diff_id_override.clone().unwrap_or_else(|| Digest::of(&layer.tar)).to_string());
    }
    let config = serde_json::to_vec(&json!({
        "architecture": architecture,
        "os": "linux",
        "config": {"User": user, "Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = push_blob(address, repository, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": descriptors,
    }))
    .unwrap();
    let manifest_digest = push_manifest(address, repository, tag, OCI_MANIFEST, &manifest);
    Pushed { reference: format!("{address}/{repository}:{tag}"), manifest_digest, config_digest }
}

/// Pushes an index over already pushed manifests, each with its platform.
pub fn push_index(address: &str, repository: &str, tag: &str, entries: &[(&Pushed, &str, Option<&str>)]) -> Digest {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(pushed, architecture, variant)| {
            let (_, _, body) = request(
                address,
                "GET",
                &format!("/v2/{repository}/manifests/{}", pushed.manifest_digest),
                &[("Accept", OCI_MANIFEST)],
                b"",
            );
            let mut platform = json!({"architecture": architecture, "os": "linux"});
            if let Some(variant) = variant {
                platform["variant"] = json!(variant);
            }
            json!({"mediaType": OCI_MANIFEST, "digest": pushed.manifest_digest.to_string(), "size": body.len(), "platform": platform})
        })
        .collect();
    let index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests})).unwrap();
    push_manifest(address, repository, tag, OCI_INDEX, &index)
}
