//! A layer blob as a registry sends it, through the whole pipeline of a pull: blob digest and size, the
//! decompressor picked by magic bytes (gzip, zstd or none), the diff ID and the tar unpacker, on a scratch
//! tmpfs. Whatever the bytes, a layer that fails leaves neither its ingest file nor its unpack directory,
//! and never a snapshot.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use berth_fuzz::{empty, scratch};
use berth_image::Digest;
use berth_image::layer::{self, LayerJob};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fn top() -> &'static PathBuf {
    static TOP: OnceLock<PathBuf> = OnceLock::new();
    TOP.get_or_init(|| scratch("layer-blob"))
}

fuzz_target!(|data: &[u8]| {
    let top = top();
    // The registry's chunks: the first byte says where the body is cut, so reads straddle chunk edges.
    let Some((&cut, blob)) = data.split_first() else { return };
    let cut = (usize::from(cut) * 37).min(blob.len());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for chunk in [&blob[..cut], &blob[cut..]] {
        if !chunk.is_empty() {
            tx.try_send(Ok(Bytes::copy_from_slice(chunk))).unwrap();
        }
    }
    drop(tx);
    let job = LayerJob {
        digest: Digest::of(blob),
        size: blob.len() as u64,
        // All zeros is no content's digest: every run ends in the failure path, the one a fuzzer can reach.
        diff_id: Digest::from_hex(&"0".repeat(64)).unwrap(),
        ingest: top.join("ingest"),
        blob: top.join("blob"),
        unpack_dir: top.join("unpack"),
        snapshot: top.join("snapshot"),
        lower: Vec::new(),
        cancelled: std::sync::Arc::new(AtomicBool::new(false)),
    };
    match layer::run(rx, &job) {
        Ok(_) => panic!("a layer whose diff ID cannot match was accepted"),
        Err(err) => {
            let _ = err.to_string();
            for leftover in [&job.ingest, &job.blob, &job.unpack_dir, &job.snapshot] {
                assert!(!leftover.exists(), "a failed layer ({err}) left {}", leftover.display());
            }
        }
    }
    empty(top);
});
