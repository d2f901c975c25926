//! `berth serve`: the daemon's life from start to exit.
//!
//! Start: load the config, create the directories, refuse to start if another daemon serves the socket or
//! holds the state lock, open the state database, bind the socket, serve. Exit (SIGTERM or SIGINT): stop
//! accepting, give in-flight RPCs `daemon.shutdown_grace_seconds` to finish, remove the socket. Any failure
//! before serving is one line naming what failed, and leaves nothing half made: the socket is bound last,
//! after everything it would depend on exists.

mod authority;
pub mod heap;
mod lock;
mod socket;

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_error_kind::{ErrorKind, Kinded};
use berth_store::Store;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::context::Context;
use crate::layout::Layout;
use crate::server::Cri;
use crate::server::trace::RpcTraceLayer;

pub use socket::SocketError;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot start the streaming server: {0}")]
    Streaming(String),
    #[error("cannot create {key} directory {path}")]
    CreateDir {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Store(#[from] berth_store::OpenError),
    #[error("cannot install the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the image store")]
    Images(#[source] berth_image::ImageError),
    #[error("cannot finish the pod sandboxes a crash interrupted: {0}")]
    Recover(String),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::server::MetricsListenError),
    #[error("the gRPC server failed")]
    Server(#[source] tonic::transport::Error),
}

impl Kinded for ServeError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServeError::Lock(_) => ErrorKind::Unavailable,
            ServeError::Socket(err) => err.kind(),
            ServeError::Store(err) => err.kind(),
            ServeError::Images(err) => err.kind(),
            ServeError::Metrics(err) => err.kind(),
            _ => ErrorKind::Internal,
        }
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    crate::failpoints::arm_from_env();
    let layout = Layout::new(&config);
    for (key, path, mode) in layout.directories() {
        create_dir(key, &path, mode)?;
    }
    // The socket check comes first: "a daemon is serving this socket" is the clearest answer when an operator
    // starts a second one. The lock then closes the race between two daemons starting at once.
    socket::check_not_served(&layout.socket)?;
    socket::check_directory(&layout.socket)?;
    let socket_access =
        socket::Access::resolve(&config.daemon.socket_owner, &config.daemon.socket_group, config.daemon.socket_mode.0)?;
    let _lock = lock::StateLock::acquire(&layout.lock())?;
    let store = Arc::new(Store::open(&layout.database())?);

    let images = Arc::new(crate::images::open(&config, &layout, store.clone()).map_err(ServeError::Images)?);
    // What a crash left (a pull that never recorded its image, a removal that never collected) goes now,
    // before anything can use it.
    if let Err(err) = images.collect_garbage().await {
        tracing::warn!(error = %crate::error::chain(&err), "garbage collection at start failed");
    }
    let _periodic_gc = (config.images.gc_interval_seconds > 0)
        .then(|| images.spawn_periodic_gc(Duration::from_secs(config.images.gc_interval_seconds)));
    note_cgroup_migration_cost();
    let pods = Arc::new(crate::pods::PodManager::new(&config, &layout, store.clone()));
    // Before serving: kubelet must never see a sandbox a crash left half made.
    let recovering = pods.clone();
    tokio::task::spawn_blocking(move || recovering.recover())
        .await
        .map_err(|join| ServeError::Recover(join.to_string()))?
        .map_err(|err| ServeError::Recover(berth_error_kind::chain(&err)))?;
    let containers =
        Arc::new(crate::containers::ContainerManager::new(&config, &layout, store.clone(), images.clone()));
    // Before serving: every shim reconnected, every exit that happened while the daemon was down recorded.
    let live_pods = pods.list().map_err(|err| ServeError::Recover(berth_error_kind::chain(&err)))?;
    containers.recover(&live_pods).await.map_err(|err| ServeError::Recover(berth_error_kind::chain(&err)))?;
    let stats = {
        let images = images.clone();
        Arc::new(crate::stats::StatsCollector::new(
            layout.runtime_state(),
            config.cgroup.driver,
            images.root().to_path_buf(),
            Arc::new(move |id: &str| images.container_dir(id).join("upper")),
        ))
    };
    // The streaming server listens before the CRI socket, so a taken port or a bad certificate stops the
    // daemon before kubelet can see it.
    let tls = match (&config.streaming.tls_cert, &config.streaming.tls_key) {
        (Some(cert), Some(key)) => Some(
            berth_streaming::tls::server_config(
                cert.as_ref(),
                key.as_ref(),
                config.streaming.tls_client_ca.as_ref().map(|ca| ca.as_path()),
            )
            .map_err(|err| ServeError::Streaming(berth_error_kind::chain(&err)))?,
        ),
        _ => None,
    };
    let streaming_config = berth_streaming::Config {
        idle_timeout: Duration::from_secs(config.streaming.idle_timeout_seconds),
        max_sessions_per_container: config.streaming.max_sessions_per_container,
        tls,
        ..Default::default()
    };
    let backend = crate::streaming::DaemonBackend { pods: pods.clone(), containers: containers.clone() };
    let streaming = Arc::new(
        berth_streaming::Server::bind_with(config.streaming.address, backend, streaming_config)
            .await
            .map_err(|err| ServeError::Streaming(berth_error_kind::chain(&err)))?,
    );
    tracing::info!(address = %streaming.local_addr(), "streaming server listening");
    let context = Arc::new(Context {
        config: config.clone(),
        layout: layout.clone(),
        store,
        images,
        pulls: Default::default(),
        pods,
        containers,
        stats,
        streaming,
    });
    let _layer_refresh = {
        let containers = context.containers.clone();
        context
            .stats
            .layers
            .spawn_refresh(Duration::from_secs(config.stats.writable_layer_refresh_seconds), move || {
                containers.list().ok().map(|records| records.into_iter().map(|r| r.id).collect())
            })
    };
    // Bound before the CRI socket, so a taken metrics port stops the daemon before kubelet can see it.
    let _metrics_server = if config.metrics.enabled {
        let listener = crate::metrics::server::bind(config.metrics.address).await?;
        tracing::info!(address = %config.metrics.address, "serving metrics at /metrics");
        Some(crate::metrics::server::spawn(listener, context.clone()))
    } else {
        None
    };
    let _heap_trimmer = heap::spawn_trimmer();
    let cri = Cri::new(context);
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|source| ServeError::Signal { signal: "SIGTERM", source })?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|source| ServeError::Signal { signal: "SIGINT", source })?;

    let (listener, socket_file) = socket::bind(&layout.socket, socket_access)?;
    let incoming =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::UnixListenerStream::new(listener), |accepted| {
            accepted.map(authority::AuthorityFix::new)
        });
    let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(RpcTraceLayer)
            .add_service(cri.runtime_service())
            .add_service(cri.image_service())
            .add_service(cri.pulls_service())
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            }),
    );
    tracing::info!(
        socket = %layout.socket.display(),
        root = %layout.root.display(),
        state = %layout.state.display(),
        version = %crate::version::RUNTIME_VERSION,
        "berth is serving CRI"
    );
    // Under a systemd unit of Type=notify, kubelet is ordered after berth only once this is sent.
    if let Err(err) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %err, "cannot tell systemd that berth is ready (NOTIFY_SOCKET)");
    }

    let received = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
        finished = &mut server => {
            socket_file.remove();
            return match finished {
                Ok(result) => result.map_err(ServeError::Server),
                Err(join) => panic!("the gRPC server task panicked: {join}"),
            };
        }
    };
    let grace = Duration::from_secs(config.daemon.shutdown_grace_seconds.0);
    tracing::info!(
        signal = received,
        grace_seconds = grace.as_secs(),
        "stopping: no new RPCs; waiting for those in flight"
    );
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_accepting.send(());
    let outcome = tokio::time::timeout(grace, &mut server).await;
    socket_file.remove();
    match outcome {
        Ok(Ok(result)) => result.map_err(ServeError::Server)?,
        Ok(Err(join)) => panic!("the gRPC server task panicked: {join}"),
        Err(_) => {
            server.abort();
            tracing::warn!(grace_seconds = grace.as_secs(), "RPCs still in flight after the grace period were cut off");
        }
    }
    tracing::info!("berth stopped");
    Ok(())
}

/// Creates `path` (and missing parents) with `mode`, and checks an existing one is a directory we can write.
fn create_dir(key: &'static str, path: &Path, mode: u32) -> Result<(), ServeError> {
    let failed = |source: std::io::Error| ServeError::CreateDir { key, path: path.to_owned(), source };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "it exists and is not a directory",
            )));
        }
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(mode).create(path).map_err(failed)?;
            // The umask may have narrowed the mode; the socket directory must be traversable by clients.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(failed)?;
        }
        Err(err) => return Err(failed(err)),
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK)
        .map_err(|errno| failed(std::io::Error::from(errno)))
}

/// Says once, at start, when this host makes every move of a process into a cgroup wait for an RCU grace
/// period (no `favordynmods` on its cgroup mounts): each CreateContainer and ExecSync pays it, and only the
/// node's operator can change it (README, "Tuning").
fn note_cgroup_migration_cost() {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    if !berth_runtime::cgroups::Layout::favors_dynamic_modifications(&mountinfo) {
        tracing::info!(
            "the cgroup mounts lack favordynmods: placing a container's or exec's first process in its cgroup \
             waits for an RCU grace period (about 8 ms idle, more under load); `mount -o remount,favordynmods` \
             on the cgroup2 mount (Linux 6.0+) removes that wait"
        );
    }
}
