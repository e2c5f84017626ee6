//! The embedded store: one SQLite file in WAL mode.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool behind one connection
//! (SQLite allows one writer at a time anyway). Admin mutations commit with
//! `synchronous=FULL`, so an acknowledged change survives power loss; usage write-behind uses
//! `NORMAL` (a crash may lose the last flush interval of usage, never a token or a block).

mod outbox;
mod queries;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, Row};

use super::rows::{Columns, Value};
use super::{StoreError, StoreResult};

/// How long a statement waits for a lock held elsewhere before failing with SQLITE_BUSY. The
/// gateway has one connection, so the holder is always another process.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// After a fault of the file, the whole-file check runs at most this often.
const THOROUGH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The same wait for a usage flush (retried at the next interval if it fails).
const FLUSH_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The same wait for the readiness probe (`/readyz` answers within 2 s).
const PING_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// Set when a call failed because the database itself is unusable (see [`is_fault`]);
    /// `/readyz` stays 503 until [`Store::ping`] has checked the whole file and committed a
    /// write again. A busy database needs no flag: the probe sees the lock directly.
    fault: Arc<AtomicBool>,
    /// When the last thorough readiness check (after a fault) started.
    thorough_at: Mutex<Option<std::time::Instant>>,
    /// Where events go (set once at start-up; unset = no webhook endpoints).
    events: std::sync::OnceLock<Arc<crate::events::Router>>,
}

impl SqliteStore {
    /// Opens (creating if needed, with its directory) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        let path = path.to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || {
            let conn = schema::open_blocking(&p)?;
            outbox::release_leases(&conn).map_err(|f| f.error)?;
            Ok::<_, StoreError>(conn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
            fault: Arc::default(),
            thorough_at: Mutex::new(None),
            events: std::sync::OnceLock::new(),
        })
    }

    /// Writes the outbox rows of the events its changes report to `router`'s endpoints
    /// (SPEC §10). Set once, before the store is shared; a second call changes nothing.
    pub fn set_events(&self, router: Arc<crate::events::Router>) {
        let _ = self.events.set(router);
    }

    /// The router, when some endpoint is configured (cloned into a blocking call).
    fn router(&self) -> Option<Arc<crate::events::Router>> {
        self.events
            .get()
            .filter(|r| !r.endpoints().is_empty())
            .cloned()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Step<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let fault = self.fault.clone();
        // spawn_blocking runs to completion even if the caller stops waiting, so a dropped
        // admin request never leaves a half-done transaction behind.
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard).map_err(|f| {
                if f.fault {
                    fault.store(true, Ordering::Release);
                }
                f.error
            })
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

/// A failed step of a call: the store's answer, and whether it came from a fault of the
/// database itself (see [`is_fault`]), which [`SqliteStore::run`] notes for `/readyz`.
struct Fail {
    error: StoreError,
    fault: bool,
}

impl From<StoreError> for Fail {
    fn from(error: StoreError) -> Self {
        Fail {
            error,
            fault: false,
        }
    }
}

type Step<T> = Result<T, Fail>;

fn unavailable(e: rusqlite::Error) -> Fail {
    Fail {
        fault: is_fault(&e),
        error: StoreError::Unavailable(e.to_string()),
    }
}

/// Errors that say the database cannot be used as it is: damaged, not a database, disk full,
/// read-only, failing I/O. Not SQLITE_BUSY (another process holds the write lock), which
/// ends by itself, nor constraint violations.
fn is_fault(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(DatabaseCorrupt | NotADatabase | DiskFull | ReadOnly | SystemIoFailure | CannotOpen)
    )
}

/// The readiness probe (see [`Store::ping`] for SQLite). `thorough` after a fault: the whole
/// file is checked and a write committed, since only that shows the fault is over.
fn probe(conn: &mut Connection, thorough: bool) -> rusqlite::Result<()> {
    if thorough {
        let check: String = conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!("quick_check: {check}")),
            ));
        }
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.query_row("SELECT count(*) FROM schema_migrations", [], |_| Ok(()))?;
    if !thorough {
        return tx.rollback();
    }
    // Rewrites a row with its own value: a real commit (WAL frame and fsync), no change.
    tx.execute(
        "UPDATE schema_migrations SET version = version
         WHERE version = (SELECT max(version) FROM schema_migrations)",
        [],
    )?;
    tx.commit()
}

impl Columns for Row<'_> {
    type Error = rusqlite::Error;

    fn column<T: Value>(&self, i: usize) -> rusqlite::Result<T> {
        self.get(i)
    }

    fn access(&self, i: usize) -> rusqlite::Result<i64> {
        self.get(i)
    }

    fn corrupt(&self, i: usize, what: &str) -> rusqlite::Error {
        let ty = self
            .get_ref(i)
            .map_or(rusqlite::types::Type::Null, |v| v.data_type());
        rusqlite::Error::FromSqlConversionFailure(i, ty, what.into())
    }
}
