//! Per-interface counters of a pod's network namespace.
//!
//! The counters live in the namespace, so they are read from inside it: `/proc/thread-self/net/dev` shows
//! the network namespace of the reading *thread* (`/proc/net` follows the process's main thread instead).
//! One dedicated std thread does every read: it `setns()`es into each pod's pinned namespace in turn and
//! never runs anything else, so no tokio worker ever changes namespace and the daemon never forks
//! (DESIGN.md, "Processes"). Requests queue on a channel; one read costs a setns and a small file.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};

use berth_error_kind::{ErrorKind, Kinded};

/// The counters of one interface, from /proc/net/dev.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkStatsError {
    #[error("cannot open the network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter the network namespace {path}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot read the interface counters of the network namespace {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the network statistics thread is gone")]
    ReaderGone,
}

impl Kinded for NetworkStatsError {
    fn kind(&self) -> ErrorKind {
        match self {
            NetworkStatsError::Open { source, .. } | NetworkStatsError::Read { source, .. } => ErrorKind::of_io(source),
            _ => ErrorKind::Internal,
        }
    }
}

type Reply = Sender<Result<Vec<InterfaceCounters>, NetworkStatsError>>;

/// The handle of the reading thread. The thread starts with the first request and lives as long as the
/// daemon.
#[derive(Debug, Default)]
pub struct NetnsReader {
    requests: Mutex<Option<Sender<(PathBuf, Reply)>>>,
}

impl NetnsReader {
    /// The counters of every interface in the namespace pinned at `netns`. Blocks: call it from a blocking
    /// task.
    pub fn read(&self, netns: &Path) -> Result<Vec<InterfaceCounters>, NetworkStatsError> {
        let (reply, answer) = channel();
        {
            let mut requests = self.requests.lock().expect("netns reader lock");
            let sender = requests.get_or_insert_with(spawn_reader);
            if sender.send((netns.to_owned(), reply.clone())).is_err() {
                // The thread died (it never should); start another for the next request.
                *requests = None;
                return Err(NetworkStatsError::ReaderGone);
            }
        }
        drop(reply);
        answer.recv().map_err(|_| NetworkStatsError::ReaderGone)?
    }
}

fn spawn_reader() -> Sender<(PathBuf, Reply)> {
    let (requests, incoming) = channel::<(PathBuf, Reply)>();
    std::thread::Builder::new()
        .name("berth-netstats".into())
        .spawn(move || {
            for (netns, reply) in incoming {
                let _ = reply.send(read_in(&netns));
            }
        })
        .expect("spawn the network statistics thread");
    requests
}

/// Runs on the reader thread only: enters `netns` and reads the counters there.
fn read_in(netns: &Path) -> Result<Vec<InterfaceCounters>, NetworkStatsError> {
    let file = File::open(netns).map_err(|source| NetworkStatsError::Open { path: netns.to_owned(), source })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|source| NetworkStatsError::Enter { path: netns.to_owned(), source })?;
    let text = std::fs::read_to_string("/proc/thread-self/net/dev")
        .map_err(|source| NetworkStatsError::Read { path: netns.to_owned(), source })?;
    Ok(parse_proc_net_dev(&text))
}

/// Parses /proc/net/dev: two header lines, then `name: rx bytes packets errs drop fifo frame compressed
/// multicast tx bytes packets errs drop fifo colls carrier compressed`.
pub fn parse_proc_net_dev(text: &str) -> Vec<InterfaceCounters> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let values: Vec<u64> = counters.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            if values.len() < 16 {
                return None;
            }
            Some(InterfaceCounters {
                name: name.trim().to_owned(),
                rx_bytes: values[0],
                rx_packets: values[1],
                rx_errors: values[2],
                rx_dropped: values[3],
                tx_bytes: values[8],
                tx_packets: values[9],
                tx_errors: values[10],
                tx_dropped: values[11],
            })
        })
        .collect()
}

/// The interface kubelet reports as the pod's default: `eth0` (what berth's CNI attachment names it), else
/// the first one that is not loopback, else loopback.
pub fn default_interface(interfaces: &[InterfaceCounters]) -> Option<&InterfaceCounters> {
    interfaces
        .iter()
        .find(|i| i.name == "eth0")
        .or_else(|| interfaces.iter().find(|i| i.name != "lo"))
        .or_else(|| interfaces.first())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_NET_DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1234      10    0    0    0     0          0         0     1234      10    0    0    0     0       0          0
  eth0: 9876543    5000    2    1    0     0          0         3   123456     800    4    5    0     0       0          0
";

    #[test]
    fn proc_net_dev_parses_per_interface() {
        let interfaces = parse_proc_net_dev(PROC_NET_DEV);
        assert_eq!(interfaces.len(), 2);
        assert_eq!(interfaces[0].name, "lo");
        assert_eq!((interfaces[0].rx_bytes, interfaces[0].tx_bytes), (1234, 1234));
        let eth0 = &interfaces[1];
        assert_eq!((eth0.rx_bytes, eth0.rx_packets, eth0.rx_errors, eth0.rx_dropped), (9_876_543, 5000, 2, 1));
        assert_eq!((eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors, eth0.tx_dropped), (123_456, 800, 4, 5));
        assert_eq!(default_interface(&interfaces).unwrap().name, "eth0");
        assert_eq!(default_interface(&interfaces[..1]).unwrap().name, "lo");
        assert!(parse_proc_net_dev("header\nheader\nbroken line\n").is_empty());
    }

    #[test]
    fn the_reader_thread_reads_a_namespace_without_moving_the_caller() {
        // Our own namespace: readable without privileges, and the caller stays where it was.
        let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let reader = NetnsReader::default();
        let interfaces = reader.read(Path::new("/proc/self/ns/net")).unwrap();
        assert!(interfaces.iter().any(|i| i.name == "lo"), "{interfaces:?}");
        assert_eq!(std::fs::read_link("/proc/thread-self/ns/net").unwrap(), before);
        let missing = reader.read(Path::new("/nonexistent/netns")).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
    }
}
