//! Progress of the image pulls in flight, for `berth pull` (the `berth.v1.Pulls` service).
//!
//! PullImage hands the image crate a channel of per-layer events and [`PullHub::track`] folds them into one
//! snapshot per image reference, published through a `watch` channel; `Pulls.Watch` streams those
//! snapshots. Nothing here affects the pull itself: a watcher that is slow or gone loses nothing but
//! intermediate snapshots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_image::PullEvent;
use tokio::sync::{mpsc, watch};

use crate::cri::berth::{LayerProgress, PullProgress};

#[derive(Debug, Default)]
pub struct PullHub {
    pulls: Mutex<HashMap<String, watch::Receiver<PullProgress>>>,
    started: tokio::sync::Notify,
}

impl PullHub {
    /// Follows the events of one pull of `image` until the sender side closes (the pull ended).
    pub fn track(self: &Arc<Self>, image: String) -> mpsc::UnboundedSender<PullEvent> {
        let (events_tx, mut events) = mpsc::unbounded_channel::<PullEvent>();
        let (progress_tx, progress_rx) = watch::channel(PullProgress::default());
        self.pulls.lock().expect("pull hub lock").insert(image.clone(), progress_rx);
        self.started.notify_waiters();
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let mut state = PullProgress::default();
            while let Some(event) = events.recv().await {
                apply(&mut state, event);
                progress_tx.send_replace(state.clone());
            }
            state.finished = true;
            crate::metrics::global().pulled_bytes(state.layers.iter().filter(|l| !l.cached).map(|l| l.bytes).sum());
            progress_tx.send_replace(state);
            let mut pulls = hub.pulls.lock().expect("pull hub lock");
            // Only forget it if no newer pull of the same image replaced it meanwhile.
            if pulls.get(&image).is_some_and(|rx| rx.same_channel(&progress_tx.subscribe())) {
                pulls.remove(&image);
            }
        });
        events_tx
    }

    /// The progress of the pull of `image`, waiting up to `wait` for one to start.
    pub async fn watch(&self, image: &str, wait: Duration) -> Option<watch::Receiver<PullProgress>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.started.notified();
            if let Some(rx) = self.pulls.lock().expect("pull hub lock").get(image) {
                return Some(rx.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

fn apply(state: &mut PullProgress, event: PullEvent) {
    let layer = |state: &mut PullProgress, digest: String| -> usize {
        match state.layers.iter().position(|l| l.digest == digest) {
            Some(index) => index,
            None => {
                state.layers.push(LayerProgress { digest, ..Default::default() });
                state.layers.len() - 1
            }
        }
    };
    match event {
        PullEvent::LayerStarted { digest, size } => {
            let index = layer(state, digest.to_string());
            state.layers[index].size = size;
        }
        PullEvent::LayerProgress { digest, bytes } => {
            let index = layer(state, digest.to_string());
            state.layers[index].bytes = bytes;
        }
        PullEvent::LayerDone { digest, cached } => {
            let index = layer(state, digest.to_string());
            let entry = &mut state.layers[index];
            entry.done = true;
            entry.cached = cached;
            if !cached {
                entry.bytes = entry.size.max(entry.bytes);
            }
        }
    }
}
