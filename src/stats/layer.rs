//! The disk usage of containers' writable layers (their overlay `upper/` directories), cached.
//!
//! Measuring is a walk of the tree, so stats calls never walk: they read this cache. A container is measured
//! the first time it is asked about (its layer is new, so nearly empty and quick to walk), and afterwards a
//! background task re-measures every cached layer once per `max_age`, so a figure is never older than that
//! plus one pass. Layers of containers that are gone are dropped from the cache by that pass.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::disk_usage::{self, DiskUsage};

/// One measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerUsage {
    pub usage: DiskUsage,
    /// When it was measured, nanoseconds since the epoch.
    pub measured_at: i64,
}

/// Where a container's writable layer is.
pub type UpperDir = Arc<dyn Fn(&str) -> PathBuf + Send + Sync>;

pub struct LayerCache {
    upper_dir: UpperDir,
    entries: Mutex<HashMap<String, LayerUsage>>,
}

impl std::fmt::Debug for LayerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerCache").finish_non_exhaustive()
    }
}

impl LayerCache {
    pub fn new(upper_dir: UpperDir) -> LayerCache {
        LayerCache { upper_dir, entries: Mutex::new(HashMap::new()) }
    }

    /// The cached usage of `container_id`'s layer, measured now if it never was. Blocking.
    pub fn usage(&self, container_id: &str) -> Option<LayerUsage> {
        if let Some(cached) = self.entries.lock().expect("layer cache lock").get(container_id) {
            return Some(*cached);
        }
        let measured = self.measure(container_id)?;
        self.entries.lock().expect("layer cache lock").insert(container_id.to_owned(), measured);
        Some(measured)
    }

    fn measure(&self, container_id: &str) -> Option<LayerUsage> {
        let dir = (self.upper_dir)(container_id);
        match disk_usage::measure(&dir) {
            Ok(usage) => Some(LayerUsage { usage, measured_at: crate::records::now_nanos() }),
            Err(err) => {
                tracing::debug!(container_id, path = %dir.display(), error = %err, "cannot measure a writable layer");
                None
            }
        }
    }

    /// Re-measures every cached layer of a container in `live`, and forgets the others. Blocking.
    pub fn refresh(&self, live: &HashSet<String>) {
        let ids: Vec<String> = {
            let mut entries = self.entries.lock().expect("layer cache lock");
            entries.retain(|id, _| live.contains(id));
            entries.keys().cloned().collect()
        };
        for id in ids {
            let measured = self.measure(&id);
            let mut entries = self.entries.lock().expect("layer cache lock");
            match measured {
                // Removed meanwhile: stay forgotten.
                Some(usage) if live.contains(&id) && entries.contains_key(&id) => {
                    entries.insert(id, usage);
                }
                Some(_) => {}
                None => {
                    entries.remove(&id);
                }
            }
        }
    }

    /// Runs [`LayerCache::refresh`] every `every`, with the live container ids from `live`, until the
    /// runtime stops.
    pub fn spawn_refresh<F>(self: &Arc<Self>, every: Duration, live: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Option<HashSet<String>> + Send + Sync + 'static,
    {
        let cache = Arc::clone(self);
        let live = Arc::new(live);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let cache = Arc::clone(&cache);
                let live = Arc::clone(&live);
                let _ = tokio::task::spawn_blocking(move || {
                    if let Some(ids) = live() {
                        cache.refresh(&ids);
                    }
                })
                .await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_measured_once_then_refreshed_and_forgotten_when_gone() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path().to_owned();
        let cache = LayerCache::new(Arc::new(move |id: &str| base.join(id).join("upper")));
        std::fs::create_dir_all(root.path().join("c1/upper")).unwrap();
        std::fs::write(root.path().join("c1/upper/file"), vec![1u8; 64 * 1024]).unwrap();
        let first = cache.usage("c1").unwrap();
        assert!(first.usage.bytes >= 64 * 1024, "{first:?}");
        assert_eq!(first.usage.inodes, 2);
        // Cached: a new file is not seen until a refresh.
        std::fs::write(root.path().join("c1/upper/more"), vec![1u8; 64 * 1024]).unwrap();
        assert_eq!(cache.usage("c1").unwrap(), first);
        cache.refresh(&HashSet::from(["c1".to_owned()]));
        let refreshed = cache.usage("c1").unwrap();
        assert_eq!(refreshed.usage.inodes, 3);
        assert!(refreshed.usage.bytes >= 128 * 1024);
        cache.refresh(&HashSet::new());
        assert!(cache.entries.lock().unwrap().is_empty(), "a removed container is forgotten");
        // A container without a layer directory uses nothing.
        assert_eq!(cache.usage("missing").unwrap().usage, DiskUsage::default());
    }
}
