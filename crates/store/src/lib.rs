//! berth's durable metadata: one redb database file under the root directory.
//!
//! This crate owns the file format and its schema version; it knows nothing about CRI or about what the
//! records mean. Callers define record types (pods, containers, images, node settings) by implementing
//! [`Record`], which names the table the record lives in and its key. Values are JSON, so an operator can
//! read them with standard tools and new optional fields need no migration.
//!
//! The database is never re-created behind the operator's back: a file that is not a berth database, is
//! damaged, or was written by a newer berth stops the daemon with an error, because replacing it would
//! silently forget every pod and container on the node. A new file is built under a temporary name and
//! renamed into place only once its schema version is committed, so a crash while creating it leaves no
//! half-made database behind.
//!
//! An I/O error inside redb (a full disk, a failing device) closes the open database for good: every later
//! transaction answers `PreviousIo`. The store then reopens the file (redb repairs it from the last committed
//! transaction), so the node works again as soon as the cause is gone, without a daemon restart.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use berth_error_kind::{ErrorKind, Kinded};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The schema this build reads and writes. Raise it (and teach [`Store::open`] to migrate) whenever a change
/// would make an older berth misread the file.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_KEY: &str = "schema_version";

/// The tables records live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Pods,
    Containers,
    Images,
    /// Node-wide settings that must survive a restart (for example the pod CIDR kubelet hands over).
    Node,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Pods, Table::Containers, Table::Images, Table::Node];

    pub fn name(self) -> &'static str {
        match self {
            Table::Pods => "pods",
            Table::Containers => "containers",
            Table::Images => "images",
            Table::Node => "node",
        }
    }

    fn definition(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(self.name())
    }
}

/// A value stored in one of the [`Table`]s under a string key.
pub trait Record: Serialize + DeserializeOwned {
    const TABLE: Table;
    fn key(&self) -> String;
}

/// Why the database could not be opened. Each one stops the daemon.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("state database {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("cannot create the directory {path} for the state database")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database {path} is in use by another process (is another berth daemon running with this root?)")]
    InUse { path: PathBuf },
    #[error(
        "state database {path} is damaged or not a berth database ({reason}); berth never re-creates it \
         automatically because that would forget every pod and container on this node: move it aside to \
         start with an empty node state"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "state database {path} has schema version {found}, newer than the {supported} this berth supports; \
         run the berth release that wrote it, or a newer one"
    )]
    NewerSchema { path: PathBuf, found: u64, supported: u64 },
    #[error("cannot create the state database {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("cannot {step} the state database {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Kinded for OpenError {
    fn kind(&self) -> ErrorKind {
        match self {
            OpenError::InUse { .. } => ErrorKind::Unavailable,
            OpenError::NewerSchema { .. } | OpenError::Corrupt { .. } | OpenError::NotAFile { .. } => {
                ErrorKind::FailedPrecondition
            }
            _ => ErrorKind::Internal,
        }
    }
}

/// A failed read or write of a record.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot {step} {table} record {key:?} in the state database")]
    Database {
        step: &'static str,
        table: &'static str,
        key: String,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("{table} record {key:?} in the state database is not valid JSON for this berth")]
    Decode {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode {table} record {key:?}")]
    Encode {
        table: &'static str,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Kinded for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Database { source, .. } => match source.as_ref() {
                redb::Error::Io(err) => ErrorKind::of_io(err),
                // Closed by an earlier I/O error and not reopened yet (the cause is still there).
                redb::Error::PreviousIo | redb::Error::DatabaseClosed => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            StoreError::Decode { .. } | StoreError::Encode { .. } => ErrorKind::Internal,
        }
    }
}

/// The open state database. Cheap to share behind an `Arc`; every method is a short blocking transaction
/// (writes are fsynced before they return), so async callers run them on a blocking thread.
pub struct Store {
    /// `None` only after a reopen failed; the next operation tries again.
    db: RwLock<Option<Database>>,
    /// How many times the file was reopened: an operation that failed on a database someone else has
    /// already reopened does not reopen it again.
    generation: AtomicU64,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens the database at `path`, creating it (and its directory, mode 0700) when no file exists.
    pub fn open(path: &Path) -> Result<Store, OpenError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_file() => Err(OpenError::NotAFile { path: path.to_owned() }),
            Ok(_) => Self::open_existing(path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Self::create_new(path),
            Err(source) => Err(OpenError::Io { step: "inspect", path: path.to_owned(), source }),
        }
    }

    fn open_existing(path: &Path) -> Result<Store, OpenError> {
        let db = Database::open(path).map_err(|err| match err {
            redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse { path: path.to_owned() },
            redb::DatabaseError::Storage(redb::StorageError::Io(source))
                if source.kind() != std::io::ErrorKind::InvalidData =>
            {
                OpenError::Io { step: "open", path: path.to_owned(), source }
            }
            other => OpenError::Corrupt { path: path.to_owned(), reason: other.to_string() },
        })?;
        let corrupt = |reason: String| OpenError::Corrupt { path: path.to_owned(), reason };
        let found = {
            let read = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
            let meta = read.open_table(META).map_err(|e| match e {
                redb::TableError::TableDoesNotExist(_) => corrupt("it has no schema version".into()),
                other => corrupt(other.to_string()),
            })?;
            let version = meta.get(SCHEMA_KEY).map_err(|e| corrupt(e.to_string()))?;
            version.map(|v| v.value()).ok_or_else(|| corrupt("it has no schema version".into()))?
        };
        if found > SCHEMA_VERSION {
            return Err(OpenError::NewerSchema { path: path.to_owned(), found, supported: SCHEMA_VERSION });
        }
        let store = Store::new(db, path);
        // Older schemas would be migrated here; version 1 is the first, so there is nothing to do yet. The
        // tables are ensured anyway so a file written before a table was introduced gains it.
        store.ensure_tables().map_err(|source| OpenError::Create { path: path.to_owned(), source })?;
        Ok(store)
    }

    fn create_new(path: &Path) -> Result<Store, OpenError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        create_private_dir(dir).map_err(|source| OpenError::CreateDir { path: dir.to_owned(), source })?;
        let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temporary = dir.join(format!(".{file_name}.creating-{}", std::process::id()));
        let build = || -> Result<(), redb::Error> {
            let db = Database::create(&temporary)?;
            let store = Store::new(db, &temporary);
            store.ensure_tables()?;
            store.run(|db| {
                let write = db.begin_write()?;
                write.open_table(META)?.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
                write.commit()?;
                Ok(())
            })
        };
        if let Err(source) = build() {
            let _ = std::fs::remove_file(&temporary);
            return Err(OpenError::Create { path: path.to_owned(), source });
        }
        std::fs::rename(&temporary, path).map_err(|source| {
            let _ = std::fs::remove_file(&temporary);
            OpenError::Io { step: "rename into place", path: path.to_owned(), source }
        })?;
        fsync_dir(dir).map_err(|source| OpenError::Io {
            step: "sync the directory of",
            path: path.to_owned(),
            source,
        })?;
        Self::open_existing(path)
    }

    fn new(db: Database, path: &Path) -> Store {
        Store { db: RwLock::new(Some(db)), generation: AtomicU64::new(0), path: path.to_owned() }
    }

    fn ensure_tables(&self) -> Result<(), redb::Error> {
        self.run(|db| {
            let write = db.begin_write()?;
            write.open_table(META)?;
            for table in Table::ALL {
                write.open_table(table.definition())?;
            }
            write.commit()?;
            Ok(())
        })
    }

    /// Runs `op` on the open database. An operation that meets an I/O error fails with it (the disk may still
    /// be full) and the database is reopened for the next one; one that finds the database closed by an
    /// earlier failure reopens it and runs once more.
    fn run<T>(&self, op: impl Fn(&Database) -> Result<T, redb::Error>) -> Result<T, redb::Error> {
        match self.attempt(&op) {
            Err((generation, redb::Error::PreviousIo | redb::Error::DatabaseClosed)) => {
                self.reopen(generation)?;
                self.attempt(&op).map_err(|(_, err)| err)
            }
            result => result.map_err(|(_, err)| err),
        }
    }

    /// One run of `op`, with the generation of the database it ran on; an I/O error reopens the database.
    fn attempt<T>(&self, op: &impl Fn(&Database) -> Result<T, redb::Error>) -> Result<T, (u64, redb::Error)> {
        let (generation, result) = {
            let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
            let generation = self.generation.load(Ordering::Acquire);
            (generation, guard.as_ref().map_or(Err(redb::Error::DatabaseClosed), op))
        };
        if let Err(redb::Error::Io(_)) = &result {
            // Failing, it is tried again by the next operation; this one answers its own error.
            let _ = self.reopen(generation);
        }
        result.map_err(|err| (generation, err))
    }

    /// Closes the database and opens the file again, unless another thread did since `seen_generation`.
    fn reopen(&self, seen_generation: u64) -> Result<(), redb::Error> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if self.generation.load(Ordering::Acquire) != seen_generation && guard.is_some() {
            return Ok(());
        }
        // redb holds a lock on the file: the old handle must be gone before the new one opens it.
        drop(guard.take());
        let db = Database::open(&self.path).map_err(|err| {
            tracing::warn!(path = %self.path.display(), error = %err, "cannot reopen the state database");
            err
        })?;
        *guard = Some(db);
        self.generation.fetch_add(1, Ordering::AcqRel);
        tracing::info!(path = %self.path.display(), "reopened the state database after an I/O error");
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let version = self
            .run(|db| {
                let read = db.begin_read()?;
                let meta = read.open_table(META)?;
                Ok(meta.get(SCHEMA_KEY)?.map(|v| v.value()))
            })
            .map_err(|source| database_error("read", "meta", SCHEMA_KEY, source))?;
        Ok(version.unwrap_or(0))
    }

    /// Inserts or replaces a record; durable when this returns.
    pub fn put<R: Record>(&self, record: &R) -> Result<(), StoreError> {
        self.insert(record, redb::Durability::Immediate)
    }

    /// Inserts or replaces a record without waiting for the disk: readers see it at once, and it becomes
    /// durable with the next [`put`](Self::put) or [`delete`](Self::delete) (of any record), but a crash
    /// before that loses it. For a step's intent whose side effects start-up can find without it; saves the
    /// fsync (about 0.6 ms here) the durable write of the step's outcome pays anyway.
    pub fn put_provisionally<R: Record>(&self, record: &R) -> Result<(), StoreError> {
        self.insert(record, redb::Durability::None)
    }

    fn insert<R: Record>(&self, record: &R, durability: redb::Durability) -> Result<(), StoreError> {
        let key = record.key();
        let table = R::TABLE.name();
        let value =
            serde_json::to_vec(record).map_err(|source| StoreError::Encode { table, key: key.clone(), source })?;
        self.run(|db| {
            let mut write = db.begin_write()?;
            write.set_durability(durability)?;
            write.open_table(R::TABLE.definition())?.insert(key.as_str(), value.as_slice())?;
            write.commit()?;
            Ok(())
        })
        .map_err(|source| database_error("write", table, &key, source))
    }

    pub fn get<R: Record>(&self, key: &str) -> Result<Option<R>, StoreError> {
        let table = R::TABLE.name();
        let value = self
            .run(|db| {
                let read = db.begin_read()?;
                let opened = read.open_table(R::TABLE.definition())?;
                Ok(opened.get(key)?.map(|value| value.value().to_vec()))
            })
            .map_err(|source| database_error("read", table, key, source))?;
        value.map(|bytes| decode(table, key, &bytes)).transpose()
    }

    /// Removes a record; returns whether it existed.
    pub fn delete<R: Record>(&self, key: &str) -> Result<bool, StoreError> {
        let table = R::TABLE.name();
        self.run(|db| {
            let write = db.begin_write()?;
            let existed = write.open_table(R::TABLE.definition())?.remove(key)?.is_some();
            write.commit()?;
            Ok(existed)
        })
        .map_err(|source| database_error("delete", table, key, source))
    }

    /// Every record of one table, in key order.
    pub fn list<R: Record>(&self) -> Result<Vec<R>, StoreError> {
        let table = R::TABLE.name();
        let entries = self
            .run(|db| {
                let read = db.begin_read()?;
                let opened = read.open_table(R::TABLE.definition())?;
                let mut entries = Vec::new();
                for entry in opened.iter()? {
                    let (key, value) = entry?;
                    entries.push((key.value().to_owned(), value.value().to_vec()));
                }
                Ok(entries)
            })
            .map_err(|source| database_error("list", table, "", source))?;
        entries.iter().map(|(key, value)| decode(table, key, value)).collect()
    }
}

fn database_error(step: &'static str, table: &'static str, key: &str, source: redb::Error) -> StoreError {
    StoreError::Database { step, table, key: key.to_owned(), source: Box::new(source) }
}

fn decode<R: DeserializeOwned>(table: &'static str, key: &str, bytes: &[u8]) -> Result<R, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode { table, key: key.to_owned(), source })
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Pod {
        id: String,
        name: String,
    }

    impl Record for Pod {
        const TABLE: Table = Table::Pods;
        fn key(&self) -> String {
            self.id.clone()
        }
    }

    fn pod(id: &str) -> Pod {
        Pod { id: id.into(), name: format!("name-{id}") }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.redb");
        {
            let store = Store::open(&path).unwrap();
            assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
            store.put(&pod("b")).unwrap();
            store.put(&pod("a")).unwrap();
            assert!(store.delete::<Pod>("b").unwrap());
            assert!(!store.delete::<Pod>("b").unwrap());
            store.put(&pod("c")).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.get::<Pod>("a").unwrap(), Some(pod("a")));
        assert_eq!(store.get::<Pod>("b").unwrap(), None);
        assert_eq!(store.list::<Pod>().unwrap(), vec![pod("a"), pod("c")]);
        // No temporary file is left beside the database.
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.redb")]);
    }

    #[test]
    fn a_provisional_record_is_read_at_once_and_kept_from_the_next_durable_write_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = Store::open(&path).unwrap();
        store.put(&pod("a")).unwrap();
        store.put_provisionally(&pod("b")).unwrap();
        assert_eq!(store.get::<Pod>("b").unwrap(), Some(pod("b")));
        // What a crash now leaves: the file as the kernel has it (a copy, since the store holds its lock).
        let crashed = |name: &str| {
            let copy = dir.path().join(name);
            std::fs::copy(&path, &copy).unwrap();
            Store::open(&copy).unwrap().list::<Pod>().unwrap()
        };
        assert_eq!(crashed("before.redb"), vec![pod("a")], "a provisional record outlived a crash");
        store.put(&pod("c")).unwrap();
        assert_eq!(crashed("after.redb"), vec![pod("a"), pod("b"), pod("c")]);
    }

    #[test]
    fn a_garbage_file_is_reported_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let garbage = vec![0x5a_u8; 8192];
        std::fs::write(&path, &garbage).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, OpenError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("never re-creates"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), garbage);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        drop(Store::open(&path).unwrap());
        {
            let db = Database::open(&path).unwrap();
            let write = db.begin_write().unwrap();
            write.open_table(META).unwrap().insert(SCHEMA_KEY, SCHEMA_VERSION + 1).unwrap();
            write.commit().unwrap();
        }
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, OpenError::NewerSchema { found, .. } if found == SCHEMA_VERSION + 1), "{err:?}");
    }

    #[test]
    fn a_redb_file_without_schema_is_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        drop(Database::create(&path).unwrap());
        let err = Store::open(&path).unwrap_err();
        assert!(err.to_string().contains("no schema version"), "{err}");
    }

    #[test]
    fn a_second_opener_is_told_the_file_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _first = Store::open(&path).unwrap();
        let err = Store::open(&path).unwrap_err();
        assert!(matches!(err, OpenError::InUse { .. }), "{err:?}");
    }
}
