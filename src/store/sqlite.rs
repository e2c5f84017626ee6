//! The embedded store: one SQLite file in WAL mode.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool behind one connection
//! (SQLite allows one writer at a time anyway). Admin mutations commit with
//! `synchronous=FULL`, so an acknowledged change survives power loss; usage write-behind uses
//! `NORMAL` (a crash may lose the last flush interval of usage, never a token or a block).

use std::cell::Cell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::*;
use crate::audit;
use crate::model::{InactiveReason, Status, TokenId};
use crate::state::LOAD_BATCH;
use crate::token::{Access, SecretHash};

/// Versioned migrations, applied in order at open, each in its own transaction.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE tokens (
        id              TEXT PRIMARY KEY,
        name            TEXT NOT NULL,
        name_key        TEXT NOT NULL UNIQUE,
        description     TEXT,
        access          INTEGER NOT NULL,
        secret_hash     BLOB NOT NULL UNIQUE,
        status          TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
        inactive_reason TEXT CHECK (inactive_reason IN ('admin', 'idle')),
        created_at      INTEGER NOT NULL,
        activated_at    INTEGER,
        deactivated_at  INTEGER,
        last_used_at    INTEGER,
        version         INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE token_ips (
        token_id      TEXT NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
        entry         TEXT NOT NULL,
        first_used_at INTEGER,
        last_used_at  INTEGER,
        requests      INTEGER NOT NULL DEFAULT 0,
        denied        INTEGER NOT NULL DEFAULT 0,
        blocked_at    INTEGER,
        PRIMARY KEY (token_id, entry)
    ) WITHOUT ROWID;",
    ),
    (
        2,
        "CREATE TABLE audit (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        at         INTEGER NOT NULL,
        actor      TEXT NOT NULL,
        source_ip  TEXT,
        action     TEXT NOT NULL,
        token      TEXT NOT NULL,
        token_key  TEXT NOT NULL,
        token_id   TEXT NOT NULL,
        details    TEXT NOT NULL
    );
    CREATE INDEX audit_by_token ON audit (token_key, seq);
    CREATE INDEX audit_by_time ON audit (at);",
    ),
];

/// How long a statement waits for a lock held elsewhere before failing with SQLITE_BUSY. The
/// gateway has one connection, so the holder is always another process.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// After a fault of the file, the whole-file check runs at most this often.
const THOROUGH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The same wait for a usage flush (retried at the next interval if it fails).
const FLUSH_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The same wait for the readiness probe (`/readyz` answers within 2 s).
const PING_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(250);

const TOKEN_COLUMNS: &str = "id, name, description, access, secret_hash, status, inactive_reason, \
     created_at, activated_at, deactivated_at, last_used_at, version";

pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    /// Set when a call failed because the database itself is unusable (see [`is_fault`]);
    /// `/readyz` stays 503 until [`Store::ping`] has checked the whole file and committed a
    /// write again. A busy database needs no flag: the probe sees the lock directly.
    fault: Arc<AtomicBool>,
    /// When the last thorough readiness check (after a fault) started.
    thorough_at: Mutex<Option<std::time::Instant>>,
}

impl SqliteStore {
    /// Opens (creating if needed, with its directory) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        let path = path.to_path_buf();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_blocking(&p))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))??;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path,
            fault: Arc::default(),
            thorough_at: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> StoreResult<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let fault = self.fault.clone();
        // spawn_blocking runs to completion even if the caller stops waiting, so a dropped
        // admin request never leaves a half-done transaction behind.
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // `f` runs on this thread from start to end: what `unavailable` notes in
            // FAULT_SEEN belongs to this call.
            FAULT_SEEN.with(|seen| seen.set(false));
            let res = f(&mut guard);
            if FAULT_SEEN.with(|seen| seen.replace(false)) && res.is_err() {
                fault.store(true, Ordering::Release);
            }
            res
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

fn open_blocking(path: &Path) -> StoreResult<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            create_private_dir(dir)?;
        }
    }
    let existed = path.exists();
    let mut conn = Connection::open(path)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    if !existed {
        restrict_permissions(path);
    }
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )
    .and_then(|()| conn.busy_timeout(BUSY_TIMEOUT))
    .map_err(|e| StoreError::Unavailable(format!("cannot use {}: {e}", path.display())))?;
    migrate(&mut conn)?;
    Ok(conn)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> StoreResult<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> StoreResult<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))
}

/// The database holds only hashes, but names and usage are still nobody else's business.
fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY)",
    )
    .map_err(unavailable)?;
    for (version, sql) in MIGRATIONS {
        let tx = conn.transaction().map_err(unavailable)?;
        let applied: bool = tx
            .query_row(
                "SELECT 1 FROM schema_migrations WHERE version = ?1",
                [version],
                |_| Ok(()),
            )
            .optional()
            .map_err(unavailable)?
            .is_some();
        if !applied {
            tx.execute_batch(sql).map_err(unavailable)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES (?1)",
                [version],
            )
            .map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)?;
    }
    Ok(())
}

thread_local! {
    /// Set by [`unavailable`] when an error is a fault of the database itself; read and reset
    /// by [`SqliteStore::run`] around each call.
    static FAULT_SEEN: Cell<bool> = const { Cell::new(false) };
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    if is_fault(&e) {
        FAULT_SEEN.with(|seen| seen.set(true));
    }
    StoreError::Unavailable(e.to_string())
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

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp)
}

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    let hash: Vec<u8> = row.get(4)?;
    let hash: [u8; 32] = hash.try_into().map_err(|_| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Blob,
            "hash length".into(),
        )
    })?;
    let status: String = row.get(5)?;
    let reason: Option<String> = row.get(6)?;
    let access: i64 = row.get(3)?;
    Ok(TokenRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        description: row.get(2)?,
        access: Access::from_bits(u8::try_from(access).unwrap_or(0)),
        secret_hash: SecretHash::from_bytes(hash),
        status: Status::from_db(&status),
        inactive_reason: InactiveReason::from_db(reason.as_deref()),
        created_at: Timestamp(row.get(7)?),
        activated_at: ts(row.get(8)?),
        deactivated_at: ts(row.get(9)?),
        last_used_at: ts(row.get(10)?),
        version: row.get(11)?,
    })
}

fn blocks_of(conn: &Connection, token_id: &str) -> StoreResult<Vec<BlockEntry>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT entry FROM token_ips WHERE token_id = ?1 AND blocked_at IS NOT NULL",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map([token_id], |r| r.get::<_, String>(0))
        .map_err(unavailable)?;
    let mut out = Vec::new();
    for r in rows {
        let s = r.map_err(unavailable)?;
        // Entries are written canonical by this store; an unparsable one means corruption.
        out.push(BlockEntry::parse(&s).map_err(StoreError::Unavailable)?);
    }
    Ok(out)
}

/// The idle clock's start, as SQL (latest of created, activated, last used).
const IDLE_START: &str = "max(created_at, coalesce(activated_at, 0), coalesce(last_used_at, 0))";

#[async_trait]
impl Store for SqliteStore {
    async fn load_all(&self, sink: TokenSink) -> StoreResult<()> {
        self.run(move |conn| {
            let mut blocks: HashMap<String, Vec<BlockEntry>> = HashMap::new();
            {
                let mut stmt = conn
                    .prepare("SELECT token_id, entry FROM token_ips WHERE blocked_at IS NOT NULL")
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                    .map_err(unavailable)?;
                for r in rows {
                    let (id, entry) = r.map_err(unavailable)?;
                    let entry = BlockEntry::parse(&entry).map_err(StoreError::Unavailable)?;
                    blocks.entry(id).or_default().push(entry);
                }
            }
            let mut stmt = conn
                .prepare(&format!("SELECT {TOKEN_COLUMNS} FROM tokens"))
                .map_err(unavailable)?;
            let rows = stmt.query_map([], token_from_row).map_err(unavailable)?;
            let closed = || StoreError::Unavailable("the token load was abandoned".into());
            let mut batch = Vec::with_capacity(LOAD_BATCH);
            for r in rows {
                let token = r.map_err(unavailable)?;
                let b = blocks.remove(&token.id.to_string()).unwrap_or_default();
                batch.push(TokenWithBlocks { token, blocks: b });
                if batch.len() == LOAD_BATCH {
                    // On a blocking thread: waits while the index applies the previous batch.
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH));
                    sink.blocking_send(full).map_err(|_| closed())?;
                }
            }
            if !batch.is_empty() {
                sink.blocking_send(batch).map_err(|_| closed())?;
            }
            Ok(())
        })
        .await
    }

    async fn token_by_id(&self, id: TokenId) -> StoreResult<Option<TokenWithBlocks>> {
        let id = id.to_string();
        self.run(move |conn| {
            let token = conn
                .query_row(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
                    [&id],
                    token_from_row,
                )
                .optional()
                .map_err(unavailable)?;
            match token {
                None => Ok(None),
                Some(token) => {
                    let blocks = blocks_of(conn, &id)?;
                    Ok(Some(TokenWithBlocks { token, blocks }))
                }
            }
        })
        .await
    }

    async fn token_by_name(&self, name_key: &str) -> StoreResult<Option<TokenRecord>> {
        let key = name_key.to_string();
        self.run(move |conn| {
            conn.query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE name_key = ?1"),
                [&key],
                token_from_row,
            )
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn list_tokens(
        &self,
        after: Option<&str>,
        q: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<TokenRecord>> {
        let after = after.unwrap_or("").to_string();
        let q = q.unwrap_or("").to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            // instr() rather than LIKE: `q` may contain `%` or `_`, which must match literally.
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens
                     WHERE name_key > ?1 AND instr(name_key, ?2) > 0
                     ORDER BY name_key LIMIT ?3"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![after, q, limit], token_from_row)
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    async fn insert_token(&self, t: &TokenRecord, audit: &AuditEntry) -> StoreResult<()> {
        let t = t.clone();
        let audit = audit.clone();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let res = tx.execute(
                "INSERT INTO tokens (id, name, name_key, description, access, secret_hash, status,
                    inactive_reason, created_at, activated_at, deactivated_at, last_used_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    t.id,
                    t.name,
                    crate::token::name_key(&t.name),
                    t.description,
                    t.access.bits(),
                    t.secret_hash.as_bytes().as_slice(),
                    t.status.as_str(),
                    t.inactive_reason.map(|r| r.as_str()),
                    t.created_at.0,
                    t.activated_at.map(|x| x.0),
                    t.deactivated_at.map(|x| x.0),
                    t.last_used_at.map(|x| x.0),
                    t.version,
                ],
            );
            match res {
                Ok(_) => {
                    write_audit(&tx, &audit)?;
                    tx.commit().map_err(unavailable)
                }
                Err(e) if is_unique_violation(&e) => {
                    if e.to_string().contains("name_key") {
                        Err(StoreError::Conflict("name_taken"))
                    } else {
                        Err(StoreError::Conflict("duplicate"))
                    }
                }
                Err(e) => Err(unavailable(e)),
            }
        })
        .await
    }

    async fn save_tokens(&self, tokens: &[TokenRecord], audit: &[AuditEntry]) -> StoreResult<()> {
        let tokens = tokens.to_vec();
        let audit = audit.to_vec();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            for t in &tokens {
                let n = tx
                    .execute(
                        "UPDATE tokens SET description = ?2, access = ?3, secret_hash = ?4,
                            status = ?5, inactive_reason = ?6, activated_at = ?7,
                            deactivated_at = ?8, version = version + 1
                         WHERE id = ?1 AND version = ?9",
                        params![
                            t.id,
                            t.description,
                            t.access.bits(),
                            t.secret_hash.as_bytes().as_slice(),
                            t.status.as_str(),
                            t.inactive_reason.map(|r| r.as_str()),
                            t.activated_at.map(|x| x.0),
                            t.deactivated_at.map(|x| x.0),
                            t.version,
                        ],
                    )
                    .map_err(unavailable)?;
                if n == 0 {
                    let exists = tx
                        .query_row("SELECT 1 FROM tokens WHERE id = ?1", [&t.id], |_| Ok(()))
                        .optional()
                        .map_err(unavailable)?
                        .is_some();
                    // Dropping `tx` rolls back the rows already written.
                    return Err(if exists {
                        StoreError::Conflict("version")
                    } else {
                        StoreError::NotFound
                    });
                }
            }
            for a in &audit {
                write_audit(&tx, a)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn delete_token(&self, id: TokenId, audit: Option<&AuditEntry>) -> StoreResult<()> {
        let id = id.to_string();
        let audit = audit.cloned();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let n = tx
                .execute("DELETE FROM tokens WHERE id = ?1", [&id])
                .map_err(unavailable)?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            if let Some(a) = &audit {
                write_audit(&tx, a)?;
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn list_ips(&self, token_id: TokenId) -> StoreResult<Vec<IpRecord>> {
        let id = token_id.to_string();
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT entry, first_used_at, last_used_at, requests, denied, blocked_at
                     FROM token_ips WHERE token_id = ?1",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([&id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                    ))
                })
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for r in rows {
                let (entry, first, last, requests, denied, blocked) = r.map_err(unavailable)?;
                out.push(IpRecord {
                    entry: BlockEntry::parse(&entry).map_err(StoreError::Unavailable)?,
                    first_used_at: ts(first),
                    last_used_at: ts(last),
                    requests: u64::try_from(requests).unwrap_or(0),
                    denied: u64::try_from(denied).unwrap_or(0),
                    blocked_at: ts(blocked),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn block(
        &self,
        token_id: TokenId,
        entries: &[BlockEntry],
        now: Timestamp,
        audit: &AuditEntry,
    ) -> StoreResult<()> {
        let id = token_id.to_string();
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        let audit = audit.clone();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let exists = tx
                .query_row("SELECT 1 FROM tokens WHERE id = ?1", [&id], |_| Ok(()))
                .optional()
                .map_err(unavailable)?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound);
            }
            for e in &entries {
                // A repeat keeps the first blocked_at.
                tx.execute(
                    "INSERT INTO token_ips (token_id, entry, blocked_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (token_id, entry) DO UPDATE SET
                        blocked_at = coalesce(blocked_at, excluded.blocked_at)",
                    params![id, e, now.0],
                )
                .map_err(unavailable)?;
            }
            write_audit(&tx, &audit)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn unblock(
        &self,
        token_id: TokenId,
        entries: &[BlockEntry],
        audit: &AuditEntry,
    ) -> StoreResult<()> {
        let id = token_id.to_string();
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        let audit = audit.clone();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            for e in &entries {
                tx.execute(
                    "UPDATE token_ips SET blocked_at = NULL WHERE token_id = ?1 AND entry = ?2",
                    params![id, e],
                )
                .map_err(unavailable)?;
                // A row that existed only as a block entry (a CIDR, or an IP never seen) goes.
                tx.execute(
                    "DELETE FROM token_ips WHERE token_id = ?1 AND entry = ?2
                        AND requests = 0 AND denied = 0 AND first_used_at IS NULL",
                    params![id, e],
                )
                .map_err(unavailable)?;
            }
            write_audit(&tx, &audit)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn flush_usage(&self, batch: &[UsageDelta], max_ips: usize) -> StoreResult<()> {
        let batch = batch.to_vec();
        self.run(move |conn| {
            // Usage is write-behind: a crash may lose the last interval anyway, so skip the
            // fsync per commit here; the next FULL commit syncs the WAL including these pages.
            // And wait less for a lock held elsewhere: a failed flush is retried next interval
            // anyway, while the connection it holds meanwhile is the admin API's too.
            conn.execute_batch("PRAGMA synchronous = NORMAL")
                .and_then(|()| conn.busy_timeout(FLUSH_BUSY_TIMEOUT))
                .map_err(unavailable)?;
            let res = flush_blocking(conn, &batch, max_ips);
            conn.execute_batch("PRAGMA synchronous = FULL")
                .and_then(|()| conn.busy_timeout(BUSY_TIMEOUT))
                .map_err(unavailable)?;
            res
        })
        .await
    }

    async fn sweep(&self, at: SweepCutoffs, keep: &[String]) -> StoreResult<SweepOutcome> {
        let keep = serde_json::Value::from(keep.to_vec()).to_string();
        self.run(move |conn| {
            let tx = conn.transaction().map_err(unavailable)?;
            let mut out = SweepOutcome::default();
            {
                let mut stmt = tx
                    .prepare(&format!(
                        "DELETE FROM tokens WHERE {IDLE_START} <= ?1
                         AND id NOT IN (SELECT value FROM json_each(?2)) RETURNING id, name"
                    ))
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![at.delete_before.0, keep], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(unavailable)?;
                for r in rows {
                    out.deleted.push(r.map_err(unavailable)?);
                }
            }
            {
                // deactivated_at = the instant the token lapsed (idle start + inactive_after),
                // not the sweep's time: the record reads the same however late the sweep ran.
                let lapse = at.inactive_after_ms;
                let mut stmt = tx
                    .prepare(&format!(
                        "UPDATE tokens SET status = 'inactive', inactive_reason = 'idle',
                            deactivated_at = {IDLE_START} + ?2, version = version + 1
                         WHERE status = 'active' AND {IDLE_START} <= ?1
                            AND id NOT IN (SELECT value FROM json_each(?3)) RETURNING id, name"
                    ))
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![at.inactive_before.0, lapse, keep], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .map_err(unavailable)?;
                for r in rows {
                    out.deactivated.push(r.map_err(unavailable)?);
                }
            }
            // Same transaction: no idle change without its audit row.
            out.audit = audit::of_sweep(at.now, &out.deleted, &out.deactivated);
            for a in &out.audit {
                write_audit(&tx, a)?;
            }
            out.pruned = tx
                .execute("DELETE FROM audit WHERE at < ?1", [at.audit_before.0])
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(out)
        })
        .await
    }

    async fn list_audit(
        &self,
        token_key: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<AuditEntry>> {
        let key = token_key.map(str::to_string);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT at, actor, source_ip, action, token, token_id, details FROM audit
                     WHERE ?1 IS NULL OR token_key = ?1 ORDER BY seq DESC LIMIT ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![key, limit], |r| {
                    let details: String = r.get(6)?;
                    Ok(AuditEntry {
                        at: Timestamp(r.get(0)?),
                        actor: r.get(1)?,
                        source_ip: r.get(2)?,
                        action: r.get(3)?,
                        token: r.get(4)?,
                        token_id: r.get(5)?,
                        details: serde_json::from_str(&details)
                            .unwrap_or_else(|_| serde_json::json!({})),
                    })
                })
                .map_err(unavailable)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(unavailable)
        })
        .await
    }

    /// Ready means able to commit, not only to read. In WAL mode a write lock held by another
    /// process (a `sqlite3` shell left inside a transaction, a maintenance script) blocks
    /// writers only, so a read alone would report ready while every admin change and usage
    /// flush fails with SQLITE_BUSY: the probe takes the write lock, waiting only briefly,
    /// and rolls back (nothing is written). After a call failed with a fault of the file
    /// itself (damaged pages, disk full, read-only, I/O error), which a read of one table
    /// would not notice, the probe also runs `PRAGMA quick_check` and commits a write; the
    /// store is ready again once both succeed.
    async fn ping(&self) -> StoreResult<()> {
        let fault = self.fault.clone();
        if fault.load(Ordering::Acquire) {
            // The thorough check reads the whole file while holding the one connection: at
            // most one per THOROUGH_EVERY, however often /readyz is polled.
            let mut last = self
                .thorough_at
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|t| t.elapsed() < THOROUGH_EVERY) {
                return Err(StoreError::Unavailable(
                    "the database failed; it is checked again shortly".into(),
                ));
            }
            *last = Some(std::time::Instant::now());
        }
        self.run(move |conn| {
            conn.busy_timeout(PING_BUSY_TIMEOUT).map_err(unavailable)?;
            let res = probe(conn, fault.load(Ordering::Acquire));
            conn.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
            res.map_err(unavailable)?;
            fault.store(false, Ordering::Release);
            Ok(())
        })
        .await
    }
}

fn write_audit(tx: &rusqlite::Transaction<'_>, a: &AuditEntry) -> StoreResult<()> {
    tx.prepare_cached(
        "INSERT INTO audit (at, actor, source_ip, action, token, token_key, token_id, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            a.at.0,
            a.actor,
            a.source_ip,
            a.action,
            a.token,
            crate::token::name_key(&a.token),
            a.token_id,
            a.details.to_string(),
        ])
    })
    .map_err(unavailable)?;
    Ok(())
}

fn flush_blocking(conn: &mut Connection, batch: &[UsageDelta], max_ips: usize) -> StoreResult<()> {
    // IMMEDIATE: the write lock is taken (with the busy wait) up front; a deferred transaction
    // that reads first could not wait for it when its first write came.
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(unavailable)?;
    // Per token: does it still exist (usage of a token deleted since is dropped), and its
    // latest use in this batch. One lookup per token, not one per (token, IP) row: a batch
    // from 10 000 client IPs of one token is 10 000 upserts and one existence check.
    let mut touched: HashMap<TokenId, (bool, Option<i64>)> = HashMap::new();
    {
        let mut exists = tx
            .prepare_cached("SELECT 1 FROM tokens WHERE id = ?1")
            .map_err(unavailable)?;
        for d in batch {
            if let std::collections::hash_map::Entry::Vacant(e) = touched.entry(d.token_id) {
                let found = exists.exists([&d.token_id]).map_err(unavailable)?;
                e.insert((found, None));
            }
        }
    }
    {
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO token_ips (token_id, entry, first_used_at, last_used_at, requests, denied)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (token_id, entry) DO UPDATE SET
                    first_used_at = coalesce(min(first_used_at, excluded.first_used_at),
                                             first_used_at, excluded.first_used_at),
                    last_used_at = coalesce(max(last_used_at, excluded.last_used_at),
                                            last_used_at, excluded.last_used_at),
                    requests = requests + excluded.requests,
                    denied = denied + excluded.denied",
            )
            .map_err(unavailable)?;
        let mut ip = IpText::default();
        for d in batch {
            let Some((true, last)) = touched.get_mut(&d.token_id) else {
                continue;
            };
            upsert
                .execute(params![
                    d.token_id,
                    ip.format(crate::net::canonical_ip(d.ip)),
                    d.first_used_at.map(|x| x.0),
                    d.last_used_at.map(|x| x.0),
                    i64::try_from(d.requests).unwrap_or(i64::MAX),
                    i64::try_from(d.denied).unwrap_or(i64::MAX),
                ])
                .map_err(unavailable)?;
            if let Some(l) = d.last_used_at {
                *last = Some(last.map_or(l.0, |x| x.max(l.0)));
            }
        }
        let mut raise = tx
            .prepare_cached(
                "UPDATE tokens SET last_used_at = coalesce(max(last_used_at, ?2), ?2) WHERE id = ?1",
            )
            .map_err(unavailable)?;
        for (id, (_, last)) in &touched {
            if let Some(l) = last {
                raise.execute(params![id, l]).map_err(unavailable)?;
            }
        }
    }
    for (id, (found, _)) in &touched {
        if *found {
            trim_ips(&tx, &id.to_string(), max_ips)?;
        }
    }
    tx.commit().map_err(unavailable)
}

/// An IP's text form written into a reused buffer (a flush formats thousands of them).
#[derive(Default)]
struct IpText(String);

impl IpText {
    fn format(&mut self, ip: std::net::IpAddr) -> &str {
        use std::fmt::Write;
        self.0.clear();
        let _ = write!(self.0, "{ip}");
        &self.0
    }
}

/// Keeps at most `max_ips` unblocked records for a token, dropping the least recently used.
/// Records covered by a block entry (exact or CIDR) are never dropped.
fn trim_ips(tx: &rusqlite::Transaction<'_>, token_id: &str, max_ips: usize) -> StoreResult<()> {
    let count: i64 = tx
        .query_row(
            "SELECT count(*) FROM token_ips WHERE token_id = ?1 AND blocked_at IS NULL",
            [token_id],
            |r| r.get(0),
        )
        .map_err(unavailable)?;
    if usize::try_from(count).unwrap_or(0) <= max_ips {
        return Ok(());
    }
    let blocks = blocks_of(tx, token_id)?;
    let mut candidates: Vec<(Option<i64>, String)> = Vec::new();
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT last_used_at, entry FROM token_ips WHERE token_id = ?1 AND blocked_at IS NULL",
            )
            .map_err(unavailable)?;
        let rows = stmt
            .query_map([token_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(unavailable)?;
        for r in rows {
            let (last, entry): (Option<i64>, String) = r.map_err(unavailable)?;
            let covered = BlockEntry::parse(&entry)
                .map(|e| blocks.iter().any(|b| b.contains(e.net().addr())))
                .unwrap_or(false);
            if !covered {
                candidates.push((last, entry));
            }
        }
    }
    if candidates.len() <= max_ips {
        return Ok(());
    }
    // Oldest first (never-used rows sort first: None < Some).
    candidates.sort();
    let excess = candidates.len() - max_ips;
    let mut del = tx
        .prepare_cached("DELETE FROM token_ips WHERE token_id = ?1 AND entry = ?2")
        .map_err(unavailable)?;
    for (_, entry) in candidates.into_iter().take(excess) {
        del.execute(params![token_id, entry]).map_err(unavailable)?;
    }
    Ok(())
}
