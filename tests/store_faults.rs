//! Faults of the embedded SQLite store while the gateway runs (hardening issue), made from
//! outside the way they happen in production: another process holding the database's write
//! lock (a `sqlite3` shell left inside a transaction; SQLITE_BUSY), and damaged pages
//! (SQLITE_CORRUPT). For each: admin calls answer 503 `store_unavailable` and change nothing,
//! in the store or in memory; `/readyz` answers 503 while `/healthz` stays 200; usage written
//! behind stays pending (counted in `tokengate_usage_flush_errors`) instead of being dropped;
//! proxied requests with known tokens keep working from memory; nothing panics. Once the fault
//! is gone everything recovers: readyz 200, mutations succeed, the pending usage arrives.
//!
//! Disk full and read-only files are not simulated: file modes stop no write through a
//! descriptor that is already open (nor any write as root, as these tests may run),
//! `PRAGMA max_page_count` binds only the connection that sets it, and no small filesystem
//! can be mounted here. They take the same path as damaged pages (a
//! fault of the file, see `is_fault` in `src/store/sqlite/mod.rs`).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use http::Method;
use serde_json::json;
use support::*;
use tokengate::config::StoreUrl;

async fn gateway() -> (Upstream, TestGateway, String) {
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/sd/", "security-director", up.addr)
        .configure(|c| {
            c.usage.flush_interval = Duration::from_millis(200);
            c.proxy.access_log = false;
        })
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &["security-director"]).await;
    // Healthy before the fault: a use is served, recorded, and the store is ready.
    gw.get("/sd/before", Some(&secret)).await.expect(200, None);
    readyz(&gw).await.expect(200, None);
    assert_eq!(requests_from_loopback(&gw, "t").await, 1);
    (up, gw, secret)
}

fn db_path(gw: &TestGateway) -> PathBuf {
    match &gw.config.store.url {
        StoreUrl::Sqlite(p) => p.clone(),
        StoreUrl::Postgres(_) => unreachable!("these tests use SQLite"),
    }
}

/// A metric's value from `/metrics` (0 when absent).
async fn metric(gw: &TestGateway, name: &str) -> f64 {
    let r = gw.admin(Method::GET, "/metrics", None).await;
    r.expect(200, None);
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

async fn readyz(gw: &TestGateway) -> Resp {
    gw.admin_as(Method::GET, "/readyz", None, None).await
}

/// The `requests` of the token's row for 127.0.0.1 (0 if none), as the store has it.
async fn requests_from_loopback(gw: &TestGateway, name: &str) -> u64 {
    gw.ips(name)
        .await
        .iter()
        .find(|r| r["ip"] == "127.0.0.1")
        .and_then(|r| r["requests"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_locked_by_another_process_fails_writes_clearly_and_recovers() {
    let (up, gw, secret) = gateway().await;

    // The fault: another connection takes the write lock and keeps it (in WAL mode readers
    // go on; every writer waits for the busy timeout, then fails with SQLITE_BUSY).
    let path = db_path(&gw);
    let locker = tokio::task::spawn_blocking(move || {
        let c = rusqlite::Connection::open(path).unwrap();
        c.busy_timeout(Duration::from_secs(30)).unwrap();
        c.execute_batch("BEGIN EXCLUSIVE").unwrap();
        c
    })
    .await
    .unwrap();

    // Not ready while writes fail, even with nothing waiting to be written.
    assert_eq!(metric(&gw, "tokengate_usage_pending").await, 0.0);
    eventually(
        "readyz 503 while the store is locked",
        Duration::from_secs(10),
        || async {
            let r = readyz(&gw).await;
            (r.status == 503).then_some(r)
        },
    )
    .await
    .0
    .expect(503, Some("store_unavailable"));

    // Proxied requests with a known token are served from memory; their usage is recorded.
    for _ in 0..3 {
        gw.get("/sd/during", Some(&secret)).await.expect(200, None);
    }
    // Admin mutations fail clearly, and change nothing.
    gw.admin(
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "new", "access": ["security-director"]})),
    )
    .await
    .expect(503, Some("store_unavailable"));
    gw.admin(
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["t"]})),
    )
    .await
    .expect(503, Some("store_unavailable"));
    gw.get("/sd/still", Some(&secret)).await.expect(200, None);
    // The usage of the requests above failed to flush and is kept.
    eventually("a failed usage flush", Duration::from_secs(20), || async {
        (metric(&gw, "tokengate_usage_flush_errors_total").await >= 1.0).then_some(())
    })
    .await;
    assert!(metric(&gw, "tokengate_usage_pending").await >= 1.0);
    // Alive (a restart would not help, and would lose the pending usage), but not ready.
    gw.admin_as(Method::GET, "/healthz", None, None)
        .await
        .expect(200, None);
    readyz(&gw).await.expect(503, Some("store_unavailable"));

    // The fault goes away.
    tokio::task::spawn_blocking(move || {
        locker.execute_batch("ROLLBACK").unwrap();
        drop(locker);
    })
    .await
    .unwrap();
    recovered(&gw, &up, &secret).await;
}

/// Pages saved before they were overwritten: (file offset, original bytes).
type Saved = Vec<(u64, Vec<u8>)>;

/// Overwrites the root page of every table and index but `schema_migrations` with garbage,
/// then commits a change of its own (which makes the gateway's connection drop its page
/// cache and read the damaged pages). Returns the original pages.
fn damage(path: &std::path::Path) -> Saved {
    use std::io::{Read, Seek, SeekFrom, Write};
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    // Everything into the main file first, so the damage below is what a reader sees.
    let busy: i64 = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0, "checkpoint");
    let page: u64 = c
        .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
        .unwrap() as u64;
    let roots: Vec<i64> = c
        .prepare("SELECT rootpage FROM sqlite_master WHERE rootpage > 0 AND tbl_name <> 'schema_migrations'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(roots.len() >= 4, "{roots:?}");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut saved = Vec::new();
    for root in roots {
        let at = (root as u64 - 1) * page;
        let mut orig = vec![0u8; page as usize];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut orig).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&vec![0x5a; page as usize]).unwrap();
        saved.push((at, orig));
    }
    f.sync_all().unwrap();
    c.execute("INSERT INTO schema_migrations (version) VALUES (-1)", [])
        .unwrap();
    saved
}

/// Puts the saved pages back and commits again (the gateway re-reads them).
fn repair(path: &std::path::Path, saved: Saved) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    for (at, bytes) in saved {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&bytes).unwrap();
    }
    f.sync_all().unwrap();
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c.execute("DELETE FROM schema_migrations WHERE version = -1", [])
        .unwrap();
    let check: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_damaged_while_running_is_refused_clearly_and_recovers_once_repaired() {
    let (up, gw, secret) = gateway().await;

    // The fault: pages of every table and index overwritten (SQLITE_CORRUPT on each read).
    let path = db_path(&gw);
    let p = path.clone();
    let saved = tokio::task::spawn_blocking(move || damage(&p))
        .await
        .unwrap();

    // Proxied requests with a known token are served from memory; their usage is recorded.
    for _ in 0..3 {
        gw.get("/sd/during", Some(&secret)).await.expect(200, None);
    }
    // Every admin call that needs the damaged pages fails clearly (503, not 500, no panic).
    for (method, path, body) in [
        (Method::GET, "/v1/tokens/t", None),
        (Method::GET, "/v1/tokens", None),
        (Method::GET, "/v1/tokens/t/ips", None),
        (Method::GET, "/v1/audit", None),
        (
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "new", "access": ["security-director"]})),
        ),
        (
            Method::POST,
            "/v1/tokens/deactivate",
            Some(json!({"names": ["t"]})),
        ),
        (Method::DELETE, "/v1/tokens/t", None),
    ] {
        gw.admin(method, path, body)
            .await
            .expect(503, Some("store_unavailable"));
    }
    // Nothing changed in memory either: the token still works.
    gw.get("/sd/still", Some(&secret)).await.expect(200, None);
    // Not ready (a read of the table that readyz probes would still succeed).
    readyz(&gw).await.expect(503, Some("store_unavailable"));
    eventually("a failed usage flush", Duration::from_secs(20), || async {
        (metric(&gw, "tokengate_usage_flush_errors_total").await >= 1.0).then_some(())
    })
    .await;
    assert!(metric(&gw, "tokengate_usage_pending").await >= 1.0);
    gw.admin_as(Method::GET, "/healthz", None, None)
        .await
        .expect(200, None);
    readyz(&gw).await.expect(503, Some("store_unavailable"));

    // The fault goes away (the pages are restored, as from a backup).
    tokio::task::spawn_blocking(move || repair(&path, saved))
        .await
        .unwrap();
    recovered(&gw, &up, &secret).await;
}

/// After a fault ends: ready again, the usage kept during the fault arrives (1 request
/// before, 3 during and 1 "still"), nothing the failed mutations asked for happened, and the
/// same mutation now succeeds.
async fn recovered(gw: &TestGateway, up: &Upstream, secret: &str) {
    eventually(
        "readyz 200 after the fault",
        Duration::from_secs(20),
        || async { (readyz(gw).await.status == 200).then_some(()) },
    )
    .await;
    eventually(
        "the pending usage is flushed",
        Duration::from_secs(20),
        || async { (requests_from_loopback(gw, "t").await == 5).then_some(()) },
    )
    .await;
    assert_eq!(metric(gw, "tokengate_usage_pending").await, 0.0);
    gw.admin(Method::GET, "/v1/tokens/new", None)
        .await
        .expect(404, Some("not_found"));
    assert_eq!(gw.token("t").await["status"], "active");
    gw.create_token("new", &["security-director"]).await;
    gw.get("/sd/after", Some(secret)).await.expect(200, None);
    assert_eq!(up.count(), 6);
}
