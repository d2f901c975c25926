//! The image store: pulled images (metadata records), their blobs and layer snapshots on disk, and the
//! rules that keep the three consistent across concurrent pulls, removals, crashes and restarts.
//!
//! On disk, under the images directory:
//! ```text
//! blobs/sha256/<hex>        verified content (index, manifest, config, compressed layers), by digest
//! snapshots/<chain-id hex>  one unpacked layer (overlayfs lower dir), shared by every image that has it
//! containers/<id>/          a container's writable layer (upper/, work/) and the chain IDs it uses
//! ingest/, tmp/             downloads and unpacks in progress; emptied at start
//! trash/                    what garbage collection is deleting
//! ```
//! The image's record (table `images`, keyed by the config digest, the image ID) is written last, after
//! every blob and snapshot it names is in place and synced, so a crash mid-pull leaves nothing listed and
//! only unreferenced files, which the start-up collection removes. Leases (in memory) protect what a pull
//! in flight is using from garbage collection; per-key locks make concurrent pulls of the same layer wait
//! for one download instead of starting two.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_error_kind::{ErrorKind, Kinded};
use berth_store::{Record, Store, StoreError, Table};
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::digest::{Digest, chain_ids};
use crate::layer::{self, LayerError, LayerJob};
use crate::manifest::{self, ImageConfig, ManifestError, Parsed, Platform};
use crate::reference::{Reference, ReferenceError};
use crate::registry::{self, Credentials, Registry, RegistryError, RegistryOptions};

/// An image as the store keeps it. `id` (the config digest) is the one image identifier everywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Bytes a pull fetched: manifest, config and compressed layers.
    pub size: u64,
    pub manifest: Digest,
    /// Every blob the image holds (index, manifest, config, layers).
    pub blobs: Vec<Digest>,
    /// The layer snapshots, bottom first.
    pub chain_ids: Vec<Digest>,
    /// The image config's `User`.
    pub user: String,
    pub pulled_at_unix_nanos: u64,
}

impl Record for ImageRecord {
    const TABLE: Table = Table::Images;
    fn key(&self) -> String {
        self.id.hex().to_owned()
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub registry: RegistryOptions,
    /// Layers downloaded and unpacked at once in one pull.
    pub max_concurrent_layers: usize,
    /// Sync the filesystem before an image is recorded, so a power loss cannot leave a listed image
    /// with missing content.
    pub sync: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { registry: RegistryOptions::default(), max_concurrent_layers: 4, sync: true }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{reference}: no manifest for {platform} in the index (it has {available})")]
    Platform { reference: String, platform: Platform, available: String },
    #[error("{what} {expected}: the registry sent content with digest {actual}")]
    Digest { what: &'static str, expected: Digest, actual: Digest },
    #[error("image config {digest} is not valid JSON")]
    Config {
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("image {reference}: the manifest has {layers} layers but the config lists {diff_ids} diff IDs")]
    LayerCount { reference: String, layers: usize, diff_ids: usize },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metadata(#[from] StoreError),
    #[error("a worker thread of the pull failed")]
    Worker(#[source] tokio::task::JoinError),
}

impl Kinded for PullError {
    fn kind(&self) -> ErrorKind {
        match self {
            PullError::Reference(_) => ErrorKind::InvalidArgument,
            PullError::Registry(err) => err.kind(),
            PullError::Manifest(_) | PullError::LayerCount { .. } | PullError::Config { .. } => {
                ErrorKind::InvalidArgument
            }
            PullError::Platform { .. } => ErrorKind::NotFound,
            PullError::Digest { .. } => ErrorKind::Unavailable,
            PullError::Layer(err) => err.kind(),
            PullError::Io { source, .. } => ErrorKind::of_io(source),
            PullError::Metadata(err) => err.kind(),
            PullError::Worker(_) => ErrorKind::Internal,
        }
    }
}

impl PullError {
    /// The reason word kubelet reads at the start of a pull failure (cri-api `pkg/errors`, kubelet's
    /// `images` package): `RegistryUnavailable` when the registry could not be reached or served us,
    /// `InvalidImageName` for a malformed reference, `ErrImagePull` for the rest.
    pub fn reason(&self) -> &'static str {
        match self {
            PullError::Reference(_) => "InvalidImageName",
            PullError::Registry(err) if err.unavailable() => "RegistryUnavailable",
            _ => "ErrImagePull",
        }
    }
}

/// Errors of image lookups, removal and garbage collection.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Metadata(#[from] StoreError),
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {image} not found")]
    NotFound { image: String },
    #[error("a worker thread failed")]
    Worker(#[source] tokio::task::JoinError),
}

impl Kinded for ImageError {
    fn kind(&self) -> ErrorKind {
        match self {
            ImageError::Metadata(err) => err.kind(),
            ImageError::Io { source, .. } => ErrorKind::of_io(source),
            ImageError::NotFound { .. } => ErrorKind::NotFound,
            ImageError::Worker(_) => ErrorKind::Internal,
        }
    }
}

/// What a garbage-collection pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub blobs: usize,
    pub snapshots: usize,
}

/// One layer of a pull: what to fetch and where it sits in the stack.
struct LayerSpec {
    digest: Digest,
    size: u64,
    diff_id: Digest,
    chain_id: Digest,
    lower: Vec<PathBuf>,
    cancelled: Arc<std::sync::atomic::AtomicBool>,
    workers: Arc<Workers>,
}

/// Counts a pull's layer workers still running, so a failed pull can wait for them to clean up.
#[derive(Default)]
struct Workers {
    active: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Held by a running worker; its drop marks the worker finished.
struct ActiveWorker(Arc<Workers>);

impl Workers {
    fn enter(self: &Arc<Self>) -> ActiveWorker {
        self.active.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ActiveWorker(Arc::clone(self))
    }

    async fn wait_idle(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.idle.notified();
            if self.active.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!("layer workers of a failed pull are still running; their files are collected later");
                return;
            }
        }
    }
}

impl Drop for ActiveWorker {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Sets its flag when dropped unless disarmed (the pull succeeded).
#[derive(Default)]
struct CancelOnDrop {
    flag: Arc<std::sync::atomic::AtomicBool>,
    disarmed: bool,
}

impl CancelOnDrop {
    fn disarm(mut self) {
        self.disarmed = true;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.disarmed {
            self.flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Progress of a pull, for whoever wants to show it.
#[derive(Debug, Clone)]
pub enum PullEvent {
    LayerStarted { digest: Digest, size: u64 },
    LayerProgress { digest: Digest, bytes: u64 },
    LayerDone { digest: Digest, cached: bool },
}

pub struct ImageStore {
    root: PathBuf,
    db: Arc<Store>,
    registry: Registry,
    options: StoreOptions,
    host: Platform,
    /// Blob and snapshot names a pull in flight relies on, with a count per holder.
    leases: Arc<Mutex<HashMap<String, usize>>>,
    /// One lock per layer snapshot being made, so concurrent pulls of it wait for one download.
    key_locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
    /// Serializes changes to image records (a tag moves between records atomically).
    records: tokio::sync::Mutex<()>,
    gc: tokio::sync::Mutex<()>,
    unique: AtomicU64,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore").field("root", &self.root).field("options", &self.options).finish_non_exhaustive()
    }
}

/// Releases its names when dropped (pull finished, failed or was cancelled).
struct Lease<'a> {
    store: &'a ImageStore,
    names: Vec<String>,
}

impl Lease<'_> {
    fn add(&mut self, name: String) {
        *self.store.leases.lock().unwrap().entry(name.clone()).or_default() += 1;
        self.names.push(name);
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut leases = self.store.leases.lock().unwrap();
        for name in self.names.drain(..) {
            if let Some(count) = leases.get_mut(&name) {
                *count -= 1;
                if *count == 0 {
                    leases.remove(&name);
                }
            }
        }
    }
}

fn blob_name(digest: &Digest) -> String {
    format!("blob:{}", digest.hex())
}

fn snapshot_name(chain_id: &Digest) -> String {
    format!("snapshot:{}", chain_id.hex())
}

fn now_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl ImageStore {
    /// Opens the store under `root` (created if missing) and removes what an interrupted run left in
    /// `ingest/` and `tmp/`: nothing is running yet, so none of it is in use.
    pub fn open(root: &Path, db: Arc<Store>, options: StoreOptions) -> Result<ImageStore, ImageError> {
        for dir in ["blobs/sha256", "snapshots", "containers", "ingest", "tmp", "trash"] {
            let path = root.join(dir);
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&path).map_err(|source| ImageError::Io {
                step: "cannot create",
                path: path.clone(),
                source,
            })?;
        }
        // Snapshots are overlayfs lower directories that containers running as any user traverse.
        let _ = std::fs::set_permissions(root.join("snapshots"), std::os::unix::fs::PermissionsExt::from_mode(0o711));
        let _ = std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o711));
        for dir in ["ingest", "tmp", "trash"] {
            empty_dir(&root.join(dir))?;
        }
        Ok(ImageStore {
            root: root.to_owned(),
            db,
            registry: Registry::new(options.registry.clone()),
            options,
            host: Platform::host(),
            leases: Arc::new(Mutex::new(HashMap::new())),
            key_locks: Mutex::new(HashMap::new()),
            records: tokio::sync::Mutex::new(()),
            gc: tokio::sync::Mutex::new(()),
            unique: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn snapshot_path(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("snapshots").join(chain_id.hex())
    }

    fn temp_name(&self, prefix: &str) -> String {
        format!("{prefix}-{}-{}", std::process::id(), self.unique.fetch_add(1, Ordering::Relaxed))
    }

    fn key_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.key_locks.lock().unwrap();
        locks.retain(|_, weak| weak.strong_count() > 0);
        if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.to_owned(), Arc::downgrade(&lock));
        lock
    }

    async fn blocking<T: Send + 'static, E: Send + 'static>(
        work: impl FnOnce() -> Result<T, E> + Send + 'static,
        worker: impl FnOnce(tokio::task::JoinError) -> E,
    ) -> Result<T, E> {
        tokio::task::spawn_blocking(work).await.map_err(worker)?
    }

    /// All images.
    pub async fn list(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let db = self.db.clone();
        Self::blocking(move || Ok(db.list::<ImageRecord>()?), ImageError::Worker).await
    }

    /// The image `name` refers to: its ID (`sha256:...` or the bare hex), a tag (`busybox`,
    /// `registry/repo:tag`, normalized) or a digest reference (`repo@sha256:...`). `None` when no image
    /// matches.
    pub async fn find(&self, name: &str) -> Result<Option<ImageRecord>, ImageError> {
        let images = self.list().await?;
        Ok(find_in(&images, name).cloned())
    }

    /// Pulls `reference` (if its content is not all here already) and records it. Returns the record.
    /// A failed pull collects the layers it completed, so nothing of a half image stays on disk.
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<Credentials>,
        progress: Option<tokio::sync::mpsc::UnboundedSender<PullEvent>>,
    ) -> Result<ImageRecord, PullError> {
        let result = self.pull_inner(reference, credentials, progress).await;
        if result.is_err()
            && let Err(err) = self.collect_garbage().await
        {
            tracing::warn!(error = %crate::chain(&err), "collecting a failed pull's content failed");
        }
        result
    }

    async fn pull_inner(
        &self,
        reference: &str,
        credentials: Option<Credentials>,
        progress: Option<tokio::sync::mpsc::UnboundedSender<PullEvent>>,
    ) -> Result<ImageRecord, PullError> {
        let reference: Reference = reference.parse()?;
        let mut lease = Lease { store: self, names: Vec::new() };
        let credentials = credentials.as_ref();
        let stall = self.registry.options().stall_timeout;

        // By digest and already here: nothing to ask the registry (air-gapped nodes depend on this).
        if let Some(digest) = &reference.digest {
            let wanted = reference.with_digest(digest);
            if let Some(found) =
                self.list().await.ok().and_then(|all| all.into_iter().find(|i| i.repo_digests.contains(&wanted)))
            {
                if let Some(tagged) = reference.tagged() {
                    return self.record(found.clone_with_tag(&tagged)).await;
                }
                return Ok(found);
            }
        }

        let what = reference.to_string();
        let fetched = self
            .registry
            .get(&reference, credentials, "manifests", &reference.target(), Some(manifest::ACCEPT), 0)
            .await?;
        let content_type = header(&fetched.response, "content-type");
        let mut top_bytes = registry::read_limited(fetched.response, &fetched.url, 4 << 20, stall).await?;
        let top_digest = Digest::of(&top_bytes);
        if let Some(expected) = &reference.digest
            && *expected != top_digest
        {
            return Err(PullError::Digest { what: "manifest", expected: expected.clone(), actual: top_digest });
        }
        let mut small_blobs: Vec<(Digest, Vec<u8>)> = Vec::new();
        let manifest = match manifest::parse(&what, &top_bytes, content_type.as_deref())? {
            Parsed::Manifest(manifest) => manifest,
            Parsed::Index(index) => {
                let chosen = manifest::select(&index, &self.host).ok_or_else(|| PullError::Platform {
                    reference: what.clone(),
                    platform: self.host.clone(),
                    available: index
                        .manifests
                        .iter()
                        .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
                let digest = chosen.digest.clone();
                let fetched = self
                    .registry
                    .get(&reference, credentials, "manifests", &digest.to_string(), Some(manifest::ACCEPT), 0)
                    .await?;
                let content_type = header(&fetched.response, "content-type");
                let bytes = registry::read_limited(fetched.response, &fetched.url, 4 << 20, stall).await?;
                let actual = Digest::of(&bytes);
                if actual != digest {
                    return Err(PullError::Digest { what: "manifest", expected: digest, actual });
                }
                let manifest =
                    match manifest::parse(&format!("{what} ({})", self.host), &bytes, content_type.as_deref())? {
                        Parsed::Manifest(manifest) => manifest,
                        Parsed::Index(_) => {
                            return Err(PullError::Manifest(ManifestError::MediaType {
                                what: format!("{what} entry {digest}"),
                                media_type: "a nested index".into(),
                            }));
                        }
                    };
                small_blobs.push((top_digest.clone(), std::mem::take(&mut top_bytes)));
                top_bytes = bytes;
                manifest
            }
        };
        let manifest_digest = Digest::of(&top_bytes);
        small_blobs.push((manifest_digest.clone(), top_bytes));

        let config_digest = manifest.config.digest.clone();
        let fetched = self.registry.get(&reference, credentials, "blobs", &config_digest.to_string(), None, 0).await?;
        let config_bytes = registry::read_limited(fetched.response, &fetched.url, 16 << 20, stall).await?;
        let actual = Digest::of(&config_bytes);
        if actual != config_digest {
            return Err(PullError::Digest { what: "image config", expected: config_digest, actual });
        }
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|source| PullError::Config { digest: config_digest.clone(), source })?;
        small_blobs.push((config_digest.clone(), config_bytes));
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(PullError::LayerCount {
                reference: what,
                layers: manifest.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let chains = chain_ids(diff_ids);
        for (digest, _) in &small_blobs {
            lease.add(blob_name(digest));
        }
        for (layer, chain) in manifest.layers.iter().zip(&chains) {
            lease.add(blob_name(&layer.digest));
            lease.add(snapshot_name(chain));
        }

        // Owned values, so the futures borrow nothing but `self` and the reference (a stream over borrowed
        // tuples trips the compiler's higher-ranked lifetime inference in the `Send` check).
        let specs: Vec<(Digest, u64, Digest, Digest)> = manifest
            .layers
            .iter()
            .zip(diff_ids)
            .zip(&chains)
            .map(|((layer, diff_id), chain)| (layer.digest.clone(), layer.size, diff_id.clone(), chain.clone()))
            .collect();
        let reference_ref = &reference;
        // Tells layer workers (blocking threads that outlive a dropped future) to stop waiting for lower
        // layers once this pull has failed or was abandoned.
        let cancel = CancelOnDrop::default();
        let workers = Arc::new(Workers::default());
        let jobs: Vec<_> = specs
            .into_iter()
            .enumerate()
            .map(|(index, (digest, size, diff_id, chain))| {
                let lower: Vec<PathBuf> = chains[..index].iter().rev().map(|c| self.snapshot_path(c)).collect();
                let cancelled = cancel.flag.clone();
                let workers = workers.clone();
                self.layer(
                    reference_ref,
                    credentials,
                    LayerSpec { digest, size, diff_id, chain_id: chain, lower, cancelled, workers },
                    progress.clone(),
                )
            })
            .collect();
        let layers = futures_util::stream::iter(jobs)
            .buffer_unordered(self.options.max_concurrent_layers.max(1))
            .try_collect::<Vec<()>>()
            .await;
        if let Err(err) = layers {
            // The other layers' futures were dropped, but their unpack workers (blocking threads) still
            // run until they notice; they remove their own temporary files. Wait for them, so a failed pull
            // returns with nothing of it left on disk.
            drop(cancel);
            workers.wait_idle(Duration::from_secs(60)).await;
            return Err(err);
        }
        cancel.disarm();

        let blobs: Vec<Digest> = small_blobs
            .iter()
            .map(|(d, _)| d.clone())
            .chain(manifest.layers.iter().map(|l| l.digest.clone()))
            .collect();
        let size = small_blobs.iter().map(|(_, b)| b.len() as u64).sum::<u64>()
            + manifest.layers.iter().map(|l| l.size).sum::<u64>();
        let root = self.root.clone();
        let sync = self.options.sync;
        let paths: Vec<(PathBuf, PathBuf, Vec<u8>)> = small_blobs
            .into_iter()
            .map(|(digest, bytes)| {
                (self.root.join("ingest").join(self.temp_name(digest.hex())), self.blob_path(&digest), bytes)
            })
            .collect();
        Self::blocking(
            move || {
                for (temp, path, bytes) in paths {
                    write_atomic(&temp, &path, &bytes)?;
                }
                if sync {
                    let dir = std::fs::File::open(&root).map_err(|source| PullError::Io {
                        step: "cannot open",
                        path: root.clone(),
                        source,
                    })?;
                    rustix::fs::syncfs(&dir).map_err(|e| PullError::Io {
                        step: "cannot sync the filesystem of",
                        path: root.clone(),
                        source: e.into(),
                    })?;
                }
                Ok(())
            },
            PullError::Worker,
        )
        .await?;

        let record = ImageRecord {
            id: config_digest,
            repo_tags: reference.tagged().into_iter().collect(),
            repo_digests: vec![reference.with_digest(&top_digest)],
            size,
            manifest: manifest_digest,
            blobs,
            chain_ids: chains,
            user: config.config.user.clone(),
            pulled_at_unix_nanos: now_nanos(),
        };
        let recorded = self.record(record).await?;
        drop(lease);
        Ok(recorded)
    }

    /// Stores `record`, merging it with an existing record of the same image and moving its tags away
    /// from any other image that had them.
    async fn record(&self, record: ImageRecord) -> Result<ImageRecord, PullError> {
        let _guard = self.records.lock().await;
        let db = self.db.clone();
        Self::blocking(
            move || {
                let all = db.list::<ImageRecord>()?;
                let mut merged = record.clone();
                for mut other in all {
                    if other.id == record.id {
                        for tag in other.repo_tags.drain(..) {
                            if !merged.repo_tags.contains(&tag) {
                                merged.repo_tags.push(tag);
                            }
                        }
                        for digest in other.repo_digests.drain(..) {
                            if !merged.repo_digests.contains(&digest) {
                                merged.repo_digests.push(digest);
                            }
                        }
                        continue;
                    }
                    let before = other.repo_tags.len();
                    other.repo_tags.retain(|tag| !record.repo_tags.contains(tag));
                    if other.repo_tags.len() != before {
                        db.put(&other)?;
                    }
                }
                merged.repo_tags.sort();
                merged.repo_digests.sort();
                db.put(&merged)?;
                Ok(merged)
            },
            PullError::Worker,
        )
        .await
    }

    async fn layer(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        spec: LayerSpec,
        progress: Option<tokio::sync::mpsc::UnboundedSender<PullEvent>>,
    ) -> Result<(), PullError> {
        let LayerSpec { digest, size, diff_id, chain_id, lower, cancelled, workers } = spec;
        let lock = self.key_lock(&snapshot_name(&chain_id));
        let _guard = lock.lock().await;
        let snapshot = self.snapshot_path(&chain_id);
        if tokio::fs::symlink_metadata(&snapshot).await.is_ok() {
            if let Some(progress) = &progress {
                let _ = progress.send(PullEvent::LayerDone { digest, cached: true });
            }
            return Ok(());
        }
        if let Some(progress) = &progress {
            let _ = progress.send(PullEvent::LayerStarted { digest: digest.clone(), size });
        }
        let job = LayerJob {
            ingest: self.root.join("ingest").join(self.temp_name(digest.hex())),
            blob: self.blob_path(&digest),
            unpack_dir: self.root.join("tmp").join(self.temp_name(chain_id.hex())),
            snapshot,
            digest: digest.clone(),
            size,
            diff_id,
            lower,
            cancelled,
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<layer::Chunk>(64);
        let active = workers.enter();
        let worker = tokio::task::spawn_blocking(move || {
            let _active = active;
            layer::run(rx, &job)
        });
        let downloaded = self.download(reference, credentials, &digest, size, &tx, progress.as_ref()).await;
        if let Err(err) = &downloaded {
            // Tell the worker the stream is broken, so it fails and cleans up instead of waiting.
            let _ = tx.send(Err(std::io::Error::other(crate::chain(err)))).await;
        }
        drop(tx);
        let unpacked = worker.await.map_err(PullError::Worker)?;
        downloaded?;
        let stats = unpacked?;
        tracing::debug!(layer = %digest, entries = stats.entries, bytes = stats.file_bytes, "layer unpacked");
        if let Some(progress) = &progress {
            let _ = progress.send(PullEvent::LayerDone { digest, cached: false });
        }
        Ok(())
    }

    /// Streams a blob into `tx`, resuming with a Range request after a transient failure mid-body.
    async fn download(
        &self,
        reference: &Reference,
        credentials: Option<&Credentials>,
        digest: &Digest,
        size: u64,
        tx: &tokio::sync::mpsc::Sender<layer::Chunk>,
        progress: Option<&tokio::sync::mpsc::UnboundedSender<PullEvent>>,
    ) -> Result<(), RegistryError> {
        let stall = self.registry.options().stall_timeout;
        let mut offset = 0u64;
        let mut resumes = 0;
        loop {
            let fetched = self.registry.get(reference, credentials, "blobs", &digest.to_string(), None, offset).await?;
            let mut response = fetched.response;
            let failure = loop {
                match registry::next_chunk(&mut response, &fetched.url, stall).await {
                    Ok(Some(chunk)) => {
                        offset += chunk.len() as u64;
                        if tx.send(Ok(chunk)).await.is_err() {
                            return Ok(()); // the worker stopped (and will say why)
                        }
                        if let Some(progress) = progress {
                            let _ = progress.send(PullEvent::LayerProgress { digest: digest.clone(), bytes: offset });
                        }
                    }
                    Ok(None) => return Ok(()),
                    Err(err) => break err,
                }
            };
            resumes += 1;
            if offset >= size || resumes > 3 {
                return Err(failure);
            }
            tracing::info!(layer = %digest, offset, error = %crate::chain(&failure), "download interrupted; resuming");
        }
    }

    /// Removes the image `name` refers to (all its tags) and collects what no longer has a user. Removing
    /// an image that is not there succeeds, as the CRI asks.
    pub async fn remove(&self, name: &str) -> Result<Option<ImageRecord>, ImageError> {
        let removed = {
            let _guard = self.records.lock().await;
            let db = self.db.clone();
            let name = name.to_owned();
            Self::blocking(
                move || {
                    let all = db.list::<ImageRecord>()?;
                    let Some(found) = find_in(&all, &name).cloned() else { return Ok(None) };
                    db.delete::<ImageRecord>(found.id.hex())?;
                    Ok(Some(found))
                },
                ImageError::Worker,
            )
            .await?
        };
        if removed.is_some() {
            self.collect_garbage().await?;
        }
        Ok(removed)
    }

    /// Deletes blobs and snapshots that no image, container or pull in flight uses.
    pub async fn collect_garbage(&self) -> Result<GcStats, ImageError> {
        let _guard = self.gc.lock().await;
        // No record may change during the pass: a pull that records its image and then drops its lease
        // between our listing and our scan would otherwise lose its content.
        let _records = self.records.lock().await;
        let images = self.list().await?;
        let mut keep: HashSet<String> = HashSet::new();
        for image in &images {
            keep.extend(image.blobs.iter().map(blob_name));
            keep.extend(image.chain_ids.iter().map(snapshot_name));
        }
        let root = self.root.clone();
        let containers = root.join("containers");
        let trash = root.join("trash");
        let unique = self.temp_name("gc");
        let leases = self.leases.clone();
        // Renaming to trash/ is quick and happens under the lease lock, so no pull can start relying on a
        // file between the check and its removal; deleting the trash happens after.
        let stats = Self::blocking(
            move || -> Result<GcStats, ImageError> {
                for used in rootfs_chain_ids(&containers) {
                    keep.insert(snapshot_name(&used));
                }
                let leases = leases.lock().unwrap();
                let mut stats = GcStats::default();
                let mut moved = 0usize;
                for (dir, prefix, counter) in
                    [("blobs/sha256", "blob", &mut stats.blobs), ("snapshots", "snapshot", &mut stats.snapshots)]
                {
                    let path = root.join(dir);
                    let entries = std::fs::read_dir(&path).map_err(|source| ImageError::Io {
                        step: "cannot list",
                        path: path.clone(),
                        source,
                    })?;
                    for entry in entries.flatten() {
                        let file_name = entry.file_name();
                        let name = format!("{prefix}:{}", file_name.to_string_lossy());
                        if keep.contains(&name) || leases.contains_key(&name) {
                            continue;
                        }
                        let target = trash.join(format!("{unique}-{moved}"));
                        moved += 1;
                        if std::fs::rename(entry.path(), &target).is_ok() {
                            *counter += 1;
                        }
                    }
                }
                Ok(stats)
            },
            ImageError::Worker,
        )
        .await?;
        let trash_dir = self.root.join("trash");
        Self::blocking(move || empty_dir(&trash_dir), ImageError::Worker).await?;
        if stats != GcStats::default() {
            tracing::info!(blobs = stats.blobs, snapshots = stats.snapshots, "garbage collected");
        }
        Ok(stats)
    }

    /// The image config blob of an image (verbatim JSON).
    pub async fn config_bytes(&self, image: &ImageRecord) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(&image.id);
        tokio::fs::read(&path).await.map_err(|source| ImageError::Io { step: "cannot read", path, source })
    }

    /// The image config, parsed (the pods work reads Env, Cmd, User... from it).
    pub async fn config(&self, image: &ImageRecord) -> Result<ImageConfig, ImageError> {
        let bytes = self.config_bytes(image).await?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Io {
            step: "cannot parse the image config",
            path: self.blob_path(&image.id),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Periodic garbage collection until the returned task is dropped or aborted.
    pub fn spawn_periodic_gc(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(store) = store.upgrade() else { return };
                if let Err(err) = store.collect_garbage().await {
                    tracing::warn!(error = %crate::chain(&err), "periodic garbage collection failed");
                }
            }
        })
    }
}

impl ImageRecord {
    fn clone_with_tag(&self, tag: &str) -> ImageRecord {
        let mut record = self.clone();
        if !record.repo_tags.iter().any(|t| t == tag) {
            record.repo_tags = vec![tag.to_owned()];
        }
        record
    }
}

/// Finds an image by ID, tag or digest reference among `images`.
pub fn find_in<'a>(images: &'a [ImageRecord], name: &str) -> Option<&'a ImageRecord> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let id = name.strip_prefix("sha256:").unwrap_or(name);
    if id.len() == 64
        && let Some(found) = images.iter().find(|i| i.id.hex() == id)
    {
        return Some(found);
    }
    let reference: Reference = name.parse().ok()?;
    if let Some(digest) = &reference.digest {
        let wanted = reference.with_digest(digest);
        return images.iter().find(|i| {
            i.repo_digests.contains(&wanted)
                || (i.manifest == *digest && i.repo_digests.iter().any(|d| d.starts_with(&reference.name())))
        });
    }
    let tagged = reference.tagged()?;
    images.iter().find(|i| i.repo_tags.contains(&tagged))
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

fn write_atomic(temp: &Path, path: &Path, bytes: &[u8]) -> Result<(), PullError> {
    if path.exists() {
        return Ok(());
    }
    std::fs::write(temp, bytes).map_err(|source| PullError::Io {
        step: "cannot write",
        path: temp.to_owned(),
        source,
    })?;
    std::fs::rename(temp, path).map_err(|source| {
        let _ = std::fs::remove_file(temp);
        PullError::Io { step: "cannot move a verified blob to", path: path.to_owned(), source }
    })
}

/// Removes everything inside `dir`.
fn empty_dir(dir: &Path) -> Result<(), ImageError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ImageError::Io {
        step: "cannot list",
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if let Err(source) = removed
            && source.kind() != std::io::ErrorKind::NotFound
        {
            return Err(ImageError::Io { step: "cannot remove", path, source });
        }
    }
    Ok(())
}

/// Chain IDs used by containers: their root filesystems (`containers/<id>/layers.json`) and image volumes
/// (`containers/<id>/volume-<n>.layers.json`).
fn rootfs_chain_ids(containers: &Path) -> BTreeSet<Digest> {
    let mut used = BTreeSet::new();
    for container in std::fs::read_dir(containers).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(container.path()).into_iter().flatten().flatten() {
            let name = file.file_name();
            let name = name.to_string_lossy();
            if name.ends_with("layers.json")
                && !name.starts_with('.')
                && let Ok(text) = std::fs::read(file.path())
                && let Ok(chains) = serde_json::from_slice::<Vec<Digest>>(&text)
            {
                used.extend(chains);
            }
        }
    }
    used
}
