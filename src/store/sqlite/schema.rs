//! The embedded store's file: opening it (directory and permissions) and its versioned
//! migrations.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::{unavailable, Step, BUSY_TIMEOUT};
use crate::store::{StoreError, StoreResult};

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
    (
        3,
        // Expiry (SPEC §1): `expires_at` null = never; `expiry_recorded` = the `expires_at`
        // whose lapse the sweep has recorded. Existing tokens never expire.
        "ALTER TABLE tokens ADD COLUMN expires_at INTEGER;
    ALTER TABLE tokens ADD COLUMN expiry_recorded INTEGER;",
    ),
    (
        4,
        // Rotation with a grace (SPEC §1): the replaced secret's hash and when it stops.
        "ALTER TABLE tokens ADD COLUMN previous_secret_hash BLOB;
    ALTER TABLE tokens ADD COLUMN previous_secret_expires_at INTEGER;",
    ),
    (
        5,
        // Access types by name (SPEC §6 `[[access_types]]`), from the legacy bits of the
        // seed's two. The bits are still written for the seed's two (see `AccessNames`).
        "ALTER TABLE tokens ADD COLUMN access_types TEXT;
    UPDATE tokens SET access_types = CASE access & 3
        WHEN 1 THEN 'security-director'
        WHEN 2 THEN 'third-party-feeds'
        WHEN 3 THEN 'security-director,third-party-feeds'
        ELSE '' END;",
    ),
    (
        6,
        // Rate limits and allow-lists (SPEC §1): null = none / any client IP.
        "ALTER TABLE tokens ADD COLUMN rate_limit_requests INTEGER;
    ALTER TABLE tokens ADD COLUMN rate_limit_per_ms INTEGER;
    ALTER TABLE tokens ADD COLUMN allowed_ips TEXT;",
    ),
    (
        7,
        // Public revocation (SPEC §10): the hash of the secret reported; it revokes the token
        // while it is still the current secret. The status stays inactive/admin, as a previous
        // release reads it.
        "ALTER TABLE tokens ADD COLUMN revoked_secret_hash BLOB;",
    ),
    (
        8,
        // The webhook outbox (SPEC §10), as in PostgreSQL's migration 7.
        crate::store::sql::OUTBOX_TABLE,
    ),
    (
        9,
        // The hourly usage history (SPEC §12), as in PostgreSQL's migration 8.
        crate::store::sql::USAGE_HOURS_TABLE,
    ),
];

pub(super) fn open_blocking(path: &Path) -> StoreResult<Connection> {
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
    migrate(&mut conn).map_err(|f| f.error)?;
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

fn migrate(conn: &mut Connection) -> Step<()> {
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
