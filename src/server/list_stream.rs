//! The CRI list-streaming RPCs (KEP-5825, feature gate `CRIListStreaming`): StreamPodSandboxes,
//! StreamContainers, StreamImages, StreamContainerStats, StreamPodSandboxStats and StreamPodSandboxMetrics.
//!
//! Each answers exactly what its List* counterpart answers — the router calls the same handler with the
//! same filter — cut into messages by [`chunks`]. api.proto's contract: every message holds at least one
//! item, every item is in exactly one message, and the stream ends (EOF) after the last; an empty list is
//! an empty stream. kubelet gathers the whole stream before using it, so there is nothing to gain from
//! producing items lazily: the list is built (one database read, one stats sample) and then sent.

use prost::Message;
use tonic::Status;
use tonic::codegen::BoxStream;

/// The most a message of a stream carries, in encoded bytes, unless one item alone is larger (items are
/// never split). The streams exist because one List answer can pass a client's receive limit: grpc-go
/// clients default to 4 MiB (kubelet raises its CRI client's to 16 MiB, other tools do not). 1 MiB stays
/// well under the smallest of those while holding hundreds of items per message (a container's stats are
/// ~0.5 KiB, a pod's metrics a few KiB), so a node's answer is a handful of messages, not thousands.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The bytes `item` adds to a message as one element of a repeated field: the field's key (one byte for
/// field numbers up to 15; every Stream*Response uses field 1), the length prefix, the item.
fn encoded_item_len<T: Message>(item: &T) -> usize {
    let len = item.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// `items` in order, cut into runs of at most `max_bytes` encoded bytes each; a run holds at least one
/// item (one larger than `max_bytes` travels alone). No run is empty, so an empty list gives none.
pub fn chunks<T: Message>(items: Vec<T>, max_bytes: usize) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut current_bytes = 0;
    for item in items {
        let bytes = encoded_item_len(&item);
        if !current.is_empty() && current_bytes + bytes > max_bytes {
            runs.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.push(item);
    }
    if !current.is_empty() {
        runs.push(current);
    }
    runs
}

/// The stream of a list: each run of [`chunks`] wrapped in the RPC's response message, then EOF.
pub fn stream<T, R>(items: Vec<T>, wrap: fn(Vec<T>) -> R) -> BoxStream<R>
where
    T: Message,
    R: Send + 'static,
{
    let messages: Vec<Result<R, Status>> =
        chunks(items, MAX_MESSAGE_BYTES).into_iter().map(|run| Ok(wrap(run))).collect();
    Box::pin(tokio_stream::iter(messages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::v1::{Container, StreamContainersResponse};

    fn container(id: &str, image_ref_bytes: usize) -> Container {
        Container { id: id.to_owned(), image_ref: "x".repeat(image_ref_bytes), ..Default::default() }
    }

    #[test]
    fn an_empty_list_is_an_empty_stream() {
        assert!(chunks(Vec::<Container>::new(), 100).is_empty());
    }

    #[test]
    fn every_item_is_sent_once_in_order_and_no_message_is_empty() {
        let items: Vec<Container> = (0..1000).map(|i| container(&format!("c{i}"), i % 37)).collect();
        let runs = chunks(items.clone(), 512);
        assert!(runs.len() > 1, "512 bytes cannot hold 1000 containers");
        assert!(runs.iter().all(|run| !run.is_empty()));
        let flattened: Vec<Container> = runs.into_iter().flatten().collect();
        assert_eq!(flattened, items);
    }

    #[test]
    fn each_message_stays_within_the_limit_as_encoded() {
        let items: Vec<Container> = (0..500).map(|i| container(&format!("c{i}"), 10 + i % 90)).collect();
        let limit = 2048;
        let runs = chunks(items, limit);
        for run in &runs {
            let message = StreamContainersResponse { containers: run.clone() };
            assert!(message.encoded_len() <= limit, "{} bytes in a message", message.encoded_len());
        }
        // Greedy: a run and the next run's first item would not have fitted together.
        for pair in runs.windows(2) {
            let mut joined = pair[0].clone();
            joined.push(pair[1][0].clone());
            assert!(StreamContainersResponse { containers: joined }.encoded_len() > limit);
        }
    }

    #[test]
    fn an_item_larger_than_the_limit_travels_alone() {
        let items = vec![container("small-1", 10), container("huge", 5000), container("small-2", 10)];
        let runs = chunks(items, 1000);
        let ids: Vec<Vec<&str>> = runs.iter().map(|run| run.iter().map(|c| c.id.as_str()).collect()).collect();
        assert_eq!(ids, vec![vec!["small-1"], vec!["huge"], vec!["small-2"]]);
    }

    #[test]
    fn a_small_list_is_one_message() {
        let items: Vec<Container> = (0..100).map(|i| container(&format!("c{i}"), 64)).collect();
        assert_eq!(chunks(items, MAX_MESSAGE_BYTES).len(), 1);
    }

    #[tokio::test]
    async fn the_stream_wraps_each_run_and_ends() {
        use tokio_stream::StreamExt;
        let items: Vec<Container> = (0..3).map(|i| container(&format!("c{i}"), 1)).collect();
        let mut stream = stream(items, |containers| StreamContainersResponse { containers });
        let first = stream.next().await.expect("one message").expect("not an error");
        assert_eq!(first.containers.len(), 3);
        assert!(stream.next().await.is_none(), "EOF after the last message");
    }
}
