//! Bench-only helper: seeds a SQLite store with N tokens directly (not through the admin API,
//! which commits each token with its own fsync), for the 1 M-token scale measurements.
//!
//!     cargo run --release --example seed_tokens -- /tmp/tg-scale/tokengate.db 1000000
//!
//! Prints two valid secrets (of the last two tokens) on stdout, one per line: the first
//! request after start-up, then a cold token over a warm upstream connection.

use std::path::PathBuf;

use tokengate::clock::{Clock, SystemClock};
use tokengate::store::sqlite::SqliteStore;
use tokengate::token::Secret;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: seed_tokens DB_PATH N"))?,
    );
    let n: u64 = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    // Opening through the store creates the file and runs the migrations.
    drop(SqliteStore::open(&path).await?);
    let mut conn = rusqlite::Connection::open(&path)?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")?;
    let now = SystemClock.now().millis();
    let tx = conn.transaction()?;
    let mut secrets = Vec::new();
    {
        let mut stmt = tx.prepare(
            "INSERT INTO tokens (id, name, name_key, description, access, secret_hash, status,
                inactive_reason, created_at, activated_at, deactivated_at, last_used_at, version,
                access_types)
             VALUES (?1, ?2, ?2, NULL, 3, ?3, 'active', NULL, ?4, ?4, NULL, NULL, 1,
                'security-director,third-party-feeds')",
        )?;
        for i in 0..n {
            // Real secrets for a few, cheap distinct hashes for the rest: the index does not care.
            let name = format!("scale-{i}");
            let hash = if i + 2 >= n {
                let s = Secret::generate();
                let h = s.hash();
                secrets.push(s);
                *h.as_bytes()
            } else {
                *blake3::hash(name.as_bytes()).as_bytes()
            };
            stmt.execute(rusqlite::params![
                uuid::Uuid::new_v4().to_string(),
                name,
                &hash[..],
                now
            ])?;
        }
    }
    tx.commit()?;
    for s in secrets {
        println!("{}", s.expose());
    }
    Ok(())
}
