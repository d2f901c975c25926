//! Downloading one layer while verifying and unpacking it, on a blocking thread fed by the network.
//!
//! The async side receives the blob's bytes and passes each chunk through a bounded channel; this side
//! hashes it (the blob digest and size), appends it to the blob's ingest file, and reads it through the
//! decompressor (gzip, zstd or none, sniffed from the magic bytes because registries mislabel media types)
//! and a second hash (the diff ID) into the tar unpacker. Nothing is renamed into place until the blob
//! digest, the size and the diff ID are all verified; on any failure both temporary paths are removed,
//! so a failed or cancelled layer leaves nothing behind.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use berth_error_kind::{ErrorKind, Kinded};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::digest::{Digest, Hasher, HashingReader};
use crate::unpack::{UnpackError, UnpackStats, ZeroPadded, unpack};

/// One item from the network: a chunk, or the reason the download ended early.
pub type Chunk = Result<Bytes, io::Error>;

/// Where a layer goes and what it must hash to.
pub struct LayerJob {
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub ingest: PathBuf,
    pub blob: PathBuf,
    pub unpack_dir: PathBuf,
    pub snapshot: PathBuf,
    /// The snapshot directories of the layers below, nearest first: hard links to their files are
    /// completed from them once they exist.
    pub lower: Vec<PathBuf>,
    /// Set when the pull this layer belongs to has failed or was dropped: stop waiting for lower layers.
    pub cancelled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer {digest}: {step} {path}")]
    Io {
        digest: Digest,
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("layer {digest}: cannot decompress")]
    Decompress {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("layer {digest}")]
    Unpack {
        digest: Digest,
        #[source]
        source: UnpackError,
    },
    #[error("layer {digest}: the registry sent {actual} bytes, the manifest says {expected} (truncated or wrong blob)")]
    Size { digest: Digest, expected: u64, actual: u64 },
    #[error("layer {digest}: the pull ended before the lower layers its hard links need were complete")]
    Cancelled { digest: Digest },
    #[error("layer {expected}: the registry sent content with digest {actual} (corrupt or wrong blob)")]
    Digest { expected: Digest, actual: Digest },
    #[error("layer {digest}: uncompressed content has digest {actual}, the image config says {expected}")]
    DiffId { digest: Digest, expected: Digest, actual: Digest },
}

impl Kinded for LayerError {
    fn kind(&self) -> ErrorKind {
        match self {
            LayerError::Io { source, .. } => ErrorKind::of_io(source),
            LayerError::Unpack { source, .. } => match source {
                UnpackError::Escape { .. } | UnpackError::Unsupported { .. } => ErrorKind::InvalidArgument,
                other => other.io().map(ErrorKind::of_io).unwrap_or(ErrorKind::Internal),
            },
            // A blob that does not match its digest may be a transfer fault: retrying can help.
            LayerError::Cancelled { .. } => ErrorKind::Unavailable,
            // The blob is written to disk while it is read: a full disk shows up here too.
            LayerError::Decompress { source, .. } if ErrorKind::of_io(source) == ErrorKind::ResourceExhausted => {
                ErrorKind::ResourceExhausted
            }
            LayerError::Size { .. } | LayerError::Digest { .. } | LayerError::Decompress { .. } => {
                ErrorKind::Unavailable
            }
            LayerError::DiffId { .. } => ErrorKind::InvalidArgument,
        }
    }
}

/// The blob's bytes as a reader: each chunk is hashed and written to the ingest file as it arrives,
/// whether or not the decompressor ends up reading it.
struct BlobSource {
    rx: mpsc::Receiver<Chunk>,
    current: Bytes,
    hasher: Hasher,
    file: File,
    limit: u64,
    ended: bool,
}

impl BlobSource {
    fn pull(&mut self) -> io::Result<bool> {
        if self.ended {
            return Ok(false);
        }
        match self.rx.blocking_recv() {
            None => {
                self.ended = true;
                Ok(false)
            }
            Some(Err(err)) => Err(err),
            Some(Ok(chunk)) => {
                self.hasher.update(&chunk);
                if self.hasher.bytes > self.limit {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the blob is larger than its descriptor says",
                    ));
                }
                // Its errors reach the caller through the decompressor's read: say which side failed.
                self.file
                    .write_all(&chunk)
                    .map_err(|err| io::Error::new(err.kind(), format!("cannot write the blob to disk: {err}")))?;
                self.current = chunk;
                Ok(true)
            }
        }
    }

    /// Reads the rest of the blob (whatever the decompressor left), so the digest covers all of it.
    fn drain(&mut self) -> io::Result<()> {
        while self.pull()? {}
        Ok(())
    }
}

impl Read for BlobSource {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if !self.pull()? {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// A reader over the blob that can be taken back after decoding (to drain it).
struct Shared<'a>(&'a mut BufReader<BlobSource>);

impl Read for Shared<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl BufRead for Shared<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.0.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.0.consume(amt)
    }
}

/// Waits until every lower snapshot exists (they appear by rename, complete): layers of one image are
/// unpacked in parallel, lower ones started first, so this only waits for work already under way.
fn wait_for_lower(job: &LayerJob) -> Result<(), LayerError> {
    while !job.lower.iter().all(|dir| dir.exists()) {
        if job.cancelled.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(LayerError::Cancelled { digest: job.digest.clone() });
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

/// Runs the layer to completion (see the module docs). Removes its temporary paths on failure.
pub fn run(rx: mpsc::Receiver<Chunk>, job: &LayerJob) -> Result<UnpackStats, LayerError> {
    let result = run_inner(rx, job);
    if result.is_err() {
        let _ = std::fs::remove_file(&job.ingest);
        let _ = std::fs::remove_dir_all(&job.unpack_dir);
    }
    result
}

fn run_inner(rx: mpsc::Receiver<Chunk>, job: &LayerJob) -> Result<UnpackStats, LayerError> {
    let io_err = |step, path: &Path| {
        let path = path.to_owned();
        let digest = job.digest.clone();
        move |source| LayerError::Io { digest, step, path, source }
    };
    let file = File::create(&job.ingest).map_err(io_err("cannot create the ingest file", &job.ingest))?;
    std::fs::create_dir(&job.unpack_dir).map_err(io_err("cannot create the unpack directory", &job.unpack_dir))?;
    let source =
        BlobSource { rx, current: Bytes::new(), hasher: Hasher::default(), file, limit: job.size, ended: false };
    let mut buffered = BufReader::with_capacity(256 * 1024, source);

    let (stats, diff_id) = {
        let magic = buffered
            .fill_buf()
            .map_err(|source| LayerError::Decompress { digest: job.digest.clone(), source })?
            .to_vec();
        let decoder: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(Shared(&mut buffered)))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            let decoder =
                ruzstd::decoding::StreamingDecoder::new(Shared(&mut buffered)).map_err(|e| LayerError::Decompress {
                    digest: job.digest.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
                })?;
            Box::new(decoder)
        } else {
            Box::new(Shared(&mut buffered))
        };
        let hashed = HashingReader { inner: decoder, hasher: Hasher::default() };
        let (stats, padded) = unpack(ZeroPadded::new(hashed), &job.unpack_dir)
            .map_err(|source| LayerError::Unpack { digest: job.digest.clone(), source })?;
        // What follows the end-of-archive blocks is part of the diff ID too.
        let mut hashed = padded.inner;
        io::copy(&mut hashed, &mut io::sink())
            .map_err(|source| LayerError::Decompress { digest: job.digest.clone(), source })?;
        (stats, hashed.hasher.finish())
    };
    let mut source = buffered.into_inner();
    source.drain().map_err(|source| LayerError::Decompress { digest: job.digest.clone(), source })?;
    let BlobSource { hasher, file, .. } = source;
    if hasher.bytes != job.size {
        return Err(LayerError::Size { digest: job.digest.clone(), expected: job.size, actual: hasher.bytes });
    }
    let actual = hasher.finish();
    if actual != job.digest {
        return Err(LayerError::Digest { expected: job.digest.clone(), actual });
    }
    if diff_id != job.diff_id {
        return Err(LayerError::DiffId { digest: job.digest.clone(), expected: job.diff_id.clone(), actual: diff_id });
    }
    drop(file);
    if !stats.deferred_links.is_empty() {
        wait_for_lower(job)?;
        crate::unpack::resolve_deferred_links(&job.unpack_dir, &job.lower, &stats.deferred_links)
            .map_err(|source| LayerError::Unpack { digest: job.digest.clone(), source })?;
    }
    std::fs::rename(&job.ingest, &job.blob).map_err(io_err("cannot move the verified blob to", &job.blob))?;
    std::fs::rename(&job.unpack_dir, &job.snapshot)
        .map_err(io_err("cannot move the unpacked layer to", &job.snapshot))?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_met_while_reading_the_blob_is_resource_exhausted_and_corrupt_data_is_unavailable() {
        let digest: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let full = io::Error::from_raw_os_error(libc::ENOSPC);
        let full = io::Error::new(full.kind(), format!("cannot write the blob to disk: {full}"));
        let err = LayerError::Decompress { digest: digest.clone(), source: full };
        assert_eq!(err.kind(), ErrorKind::ResourceExhausted);
        let corrupt = io::Error::new(io::ErrorKind::InvalidData, "invalid gzip header");
        assert_eq!(LayerError::Decompress { digest, source: corrupt }.kind(), ErrorKind::Unavailable);
    }
}
