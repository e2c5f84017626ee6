//! The shared store's schema: versioned migrations, applied under an advisory lock.

use std::collections::HashSet;

use tokio_postgres::Client;

use super::Fail;

/// Versioned migrations, applied in order at open, all in one transaction under the
/// migration lock. `name_key` and `entry` use the "C" collation so that ordering and paging
/// agree with the embedded store (byte order), whatever the database's locale.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"CREATE TABLE tokens (
        id              text PRIMARY KEY,
        name            text NOT NULL,
        name_key        text COLLATE "C" NOT NULL UNIQUE,
        description     text,
        access          smallint NOT NULL,
        secret_hash     bytea NOT NULL UNIQUE,
        status          text NOT NULL CHECK (status IN ('active', 'inactive')),
        inactive_reason text CHECK (inactive_reason IN ('admin', 'idle')),
        created_at      bigint NOT NULL,
        activated_at    bigint,
        deactivated_at  bigint,
        last_used_at    bigint,
        version         bigint NOT NULL DEFAULT 1
    );
    CREATE TABLE token_ips (
        token_id      text NOT NULL REFERENCES tokens(id) ON DELETE CASCADE,
        entry         text COLLATE "C" NOT NULL,
        first_used_at bigint,
        last_used_at  bigint,
        requests      bigint NOT NULL DEFAULT 0,
        denied        bigint NOT NULL DEFAULT 0,
        blocked_at    bigint,
        PRIMARY KEY (token_id, entry)
    );
    CREATE TABLE audit (
        seq        bigserial PRIMARY KEY,
        at         bigint NOT NULL,
        actor      text NOT NULL,
        source_ip  text,
        action     text NOT NULL,
        token      text NOT NULL,
        token_key  text COLLATE "C" NOT NULL,
        token_id   text NOT NULL,
        details    text NOT NULL
    );
    CREATE INDEX audit_by_token ON audit (token_key, seq);
    CREATE INDEX audit_by_time ON audit (at);
    CREATE TABLE change_generation (
        id         smallint PRIMARY KEY CHECK (id = 1),
        generation bigint NOT NULL
    );
    INSERT INTO change_generation (id, generation) VALUES (1, 0);"#,
    ),
    (
        2,
        // Expiry (SPEC §1): `expires_at` null = never; `expiry_recorded` = the `expires_at`
        // whose lapse the sweep has recorded. Existing tokens never expire.
        "ALTER TABLE tokens ADD COLUMN expires_at bigint, ADD COLUMN expiry_recorded bigint;",
    ),
    (
        3,
        // Rotation with a grace (SPEC §1): the replaced secret's hash and when it stops.
        "ALTER TABLE tokens ADD COLUMN previous_secret_hash bytea,
            ADD COLUMN previous_secret_expires_at bigint;",
    ),
    (
        4,
        // Access types by name (SPEC §6 `[[access_types]]`), from the legacy bits of the
        // seed's two. The bits are still written for the seed's two (see `AccessNames`).
        "ALTER TABLE tokens ADD COLUMN access_types text;
        UPDATE tokens SET access_types = CASE access & 3
            WHEN 1 THEN 'security-director'
            WHEN 2 THEN 'third-party-feeds'
            WHEN 3 THEN 'security-director,third-party-feeds'
            ELSE '' END;",
    ),
    (
        5,
        // Rate limits and allow-lists (SPEC §1): null = none / any client IP.
        "ALTER TABLE tokens ADD COLUMN rate_limit_requests bigint,
            ADD COLUMN rate_limit_per_ms bigint, ADD COLUMN allowed_ips text;",
    ),
    (
        6,
        // Public revocation (SPEC §10): the hash of the secret reported; it revokes the token
        // while it is still the current secret. The status stays inactive/admin, as a previous
        // release reads it.
        "ALTER TABLE tokens ADD COLUMN revoked_secret_hash bytea;",
    ),
    (
        7,
        // The webhook outbox (SPEC §10), as in SQLite's migration 8.
        crate::store::sql::OUTBOX_TABLE,
    ),
    (
        8,
        // The hourly usage history (SPEC §12), as in SQLite's migration 9.
        crate::store::sql::USAGE_HOURS_TABLE,
    ),
];

/// The unique constraint PostgreSQL names after `tokens.name_key` (`<table>_<column>_key`).
pub(super) const NAME_KEY_CONSTRAINT: &str = "tokens_name_key_key";

/// `pg_advisory_xact_lock` key of the migrations ("tokengat").
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e67_6174;

pub(super) async fn migrate(client: &mut Client) -> Result<(), Fail> {
    let tx = client.transaction().await?;
    // Two instances starting together: the second waits here, then finds everything applied.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version bigint PRIMARY KEY)")
        .await?;
    let mut applied = HashSet::new();
    for r in tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
    {
        applied.insert(r.try_get::<_, i64>(0)?);
    }
    for (version, sql) in MIGRATIONS {
        if !applied.contains(version) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            tracing::info!(version, "PostgreSQL migration applied");
        }
    }
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if let Some(newer) = applied.iter().copied().filter(|v| *v > known).max() {
        tracing::warn!(
            schema_version = newer,
            "the database was migrated by a newer tokengate; this instance knows only up to {known}"
        );
    }
    tx.commit().await?;
    Ok(())
}
