//! Durability and resource bounds against the real binary (issue 7): SIGKILL right after
//! acknowledged admin changes loses none of them; SIGTERM under load drains and flushes the
//! usage of every answered request; streaming a 64 MiB upload does not grow memory.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use support::*;

/// The real `tokengate serve`, as a child process with its own config and data directory.
struct Proc {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

fn write_config(dir: &Path, upstream: SocketAddr) -> std::path::PathBuf {
    write_config_with(dir, upstream, "")
}

/// The config of [`write_config`] followed by `extra` TOML.
fn write_config_with(dir: &Path, upstream: SocketAddr, extra: &str) -> std::path::PathBuf {
    let cfg = dir.join("tokengate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\naccess_log = false\nshutdown_grace = \"10s\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\nkey_file = \"{d}/admin.key\"\n\
             [store]\nurl = \"sqlite://{d}/tokengate.db\"\n\
             [usage]\nflush_interval = \"1h\"\n\
             [[routes]]\npath_prefix = \"/sd/\"\naccess = \"security-director\"\n\
             upstream = \"http://{upstream}\"\nstrip_prefix = true\n{extra}",
            d = dir.display()
        ),
    )
    .unwrap();
    cfg
}

impl Proc {
    /// Starts the binary and waits (reading its log, up to 60 s) for both listeners.
    fn start(config: &Path) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["--config", config.to_str().unwrap(), "serve"])
            .env("TOKENGATE_ADMIN_KEY", ADMIN_KEY)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && line.contains("tokengate listening") {
                    let field = |k: &str| {
                        line.split_whitespace()
                            .find_map(|w| w.strip_prefix(k))
                            .and_then(|v| v.parse::<SocketAddr>().ok())
                    };
                    let _ = tx.send((field("proxy="), field("admin="), line.clone()));
                    sent = true;
                }
            }
        });
        let (proxy, admin, line) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the gateway starts and logs its addresses");
        Proc {
            child,
            proxy: proxy.unwrap_or_else(|| panic!("{line}")),
            admin: admin.unwrap_or_else(|| panic!("{line}")),
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }

    fn rss_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn admin(p: &Proc, method: Method, path: &str, body: Option<Value>) -> Resp {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", p.admin));
    b = b.header("authorization", format!("Bearer {ADMIN_KEY}"));
    let bytes = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Bytes::from(v.to_string())
        }
        None => Bytes::new(),
    };
    send(&client(), b.body(Full::new(bytes)).unwrap()).await
}

async fn proxied(p: &Proc, secret: &str) -> Resp {
    let req = Request::get(format!("http://{}/sd/x", p.proxy))
        .header("authorization", format!("Bearer {secret}"))
        .body(Full::default())
        .unwrap();
    send(&client(), req).await
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_after_acknowledged_changes_loses_none_of_them() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), up.addr);
    let p = Proc::start(&cfg);
    let mut secrets = Vec::new();
    for i in 0..12 {
        let r = admin(
            &p,
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": format!("t{i}"), "access": ["security-director"]})),
        )
        .await;
        r.expect(201, None);
        secrets.push(r.json()["token"].as_str().unwrap().to_string());
    }
    admin(
        &p,
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["t0", "t1", "t2"]})),
    )
    .await
    .expect(200, None);
    admin(
        &p,
        Method::POST,
        "/v1/tokens/t3/ips/block",
        Some(json!({"ips": ["127.0.0.1", "10.0.0.0/8"]})),
    )
    .await
    .expect(200, None);
    let regen = admin(&p, Method::POST, "/v1/tokens/t4/regenerate", None).await;
    regen.expect(200, None);
    let new_t4 = regen.json()["token"].as_str().unwrap().to_string();
    admin(&p, Method::DELETE, "/v1/tokens/t5", None)
        .await
        .expect(204, None);
    admin(
        &p,
        Method::PATCH,
        "/v1/tokens/t6",
        Some(json!({"description": "kept", "access": ["third-party-feeds"]})),
    )
    .await
    .expect(200, None);
    // The last acknowledgement, then SIGKILL at once: no graceful anything.
    p.signal("-KILL");
    let status = p.wait();
    assert!(!status.success());

    let p = Proc::start(&cfg);
    let list = admin(&p, Method::GET, "/v1/tokens", None).await;
    list.expect(200, None);
    let names: Vec<String> = list.json()["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 11, "{names:?}");
    assert!(!names.contains(&"t5".to_string()));
    for (i, s) in secrets.iter().enumerate() {
        let r = proxied(&p, s).await;
        let want = match i {
            0..=2 => 403, // deactivated
            3 => 403,     // 127.0.0.1 blocked
            4 | 5 => 401, // regenerated (old secret) / deleted
            6 => 403,     // access changed to third-party-feeds only
            _ => 200,
        };
        assert_eq!(r.status.as_u16(), want, "t{i}: {r}");
    }
    proxied(&p, &new_t4).await.expect(200, None);
    let t6 = admin(&p, Method::GET, "/v1/tokens/t6", None).await.json();
    assert_eq!(t6["description"], "kept");
    let audit = admin(&p, Method::GET, "/v1/audit?limit=1000", None)
        .await
        .json();
    assert_eq!(
        audit["entries"].as_array().unwrap().len(),
        12 + 3 + 1 + 1 + 1 + 1,
        "every change has its audit row"
    );
    // The database is intact after the kill.
    let db = dir.path().join("tokengate.db");
    let conn = rusqlite::Connection::open(db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// SPEC §10: the outbox row of an acknowledged change is in the change's transaction, so a
/// SIGKILL right after the answer loses no event: it is delivered after the restart, with
/// the `webhook-id` of any attempt made before the kill.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_after_an_acknowledged_change_loses_no_webhook_event() {
    let up = Upstream::start().await;
    let rx = support::webhooks::Receiver::start().await;
    // Until the restart the receiver refuses everything: an event can only be delivered by
    // the second process.
    rx.always(Some(503));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config_with(
        dir.path(),
        up.addr,
        &format!(
            "[[webhooks.endpoints]]\nurl = \"{}\"\nsecret_file = \"{d}/webhook.secret\"\n\
             events = [\"token.*\"]\nca_file = \"{}\"\n",
            rx.url(),
            rx.ca_file.display(),
            d = dir.path().display()
        ),
    );
    let p = Proc::start(&cfg);
    admin(
        &p,
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "hooked", "access": ["security-director"]})),
    )
    .await
    .expect(201, None);
    admin(
        &p,
        Method::POST,
        "/v1/tokens/deactivate",
        Some(json!({"names": ["hooked"]})),
    )
    .await
    .expect(200, None);
    p.signal("-KILL");
    assert!(!p.wait().success());
    let before = rx.got();
    assert!(before.iter().all(|d| d.answered == 503));

    rx.always(None);
    let p = Proc::start(&cfg);
    let got = rx
        .until(
            "both events after the restart",
            Duration::from_secs(30),
            |g| {
                let ok: Vec<String> = g
                    .iter()
                    .filter(|d| d.answered == 204)
                    .map(|d| d.event_type())
                    .collect();
                ok.contains(&"token.created".into()) && ok.contains(&"token.deactivated".into())
            },
        )
        .await;
    let delivered: Vec<_> = got.iter().filter(|d| d.answered == 204).collect();
    assert_eq!(delivered.len(), 2, "each once: {delivered:?}");
    for d in &delivered {
        assert_eq!(d.json()["data"]["name"], "hooked");
    }
    for early in &before {
        assert!(
            delivered.iter().any(|d| d.id == early.id),
            "an attempt before the kill has the id of the delivery after it"
        );
    }
    drop(p);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_drains_and_flushes_every_answered_request() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), up.addr);
    let p = Proc::start(&cfg);
    let r = admin(
        &p,
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "busy", "access": ["security-director"]})),
    )
    .await;
    let secret = r.json()["token"].as_str().unwrap().to_string();
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (answered, stop, secret, proxy) =
            (answered.clone(), stop.clone(), secret.clone(), p.proxy);
        workers.push(tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(format!("http://{proxy}/sd/delay/5"))
                    .header("authorization", format!("Bearer {secret}"))
                    .body(Full::default())
                    .unwrap();
                match http.request(req).await {
                    Ok(resp) if resp.status() == 200 => {
                        if resp.into_body().collect().await.is_ok() {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    // Once the gateway stops accepting, requests fail: the load is over.
                    _ => break,
                }
            }
        }));
    }
    // Let real load build up (an event, not a sleep: wait for answered requests).
    let warmed = tokio::time::timeout(Duration::from_secs(60), async {
        while answered.load(Ordering::SeqCst) < 200 {
            tokio::task::yield_now().await;
        }
    });
    warmed
        .await
        .expect("the gateway answers requests under load");
    p.signal("-TERM");
    for w in workers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    let status = tokio::task::spawn_blocking(move || p.wait()).await.unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    let total = answered.load(Ordering::SeqCst);
    eprintln!("SIGTERM under load: {total} answered requests");

    // flush_interval is 1h: only the shutdown flush can have written the usage.
    let p = Proc::start(&cfg);
    let ips = admin(&p, Method::GET, "/v1/tokens/busy/ips", None)
        .await
        .json();
    let requests = ips["ips"][0]["requests"].as_u64().unwrap_or(0);
    assert_eq!(
        requests, total,
        "usage of every answered request was flushed at shutdown"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_64_mib_upload_streams_without_growing_memory() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), up.addr);
    let p = Proc::start(&cfg);
    let r = admin(
        &p,
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "bulk", "access": ["security-director"]})),
    )
    .await;
    let secret = r.json()["token"].as_str().unwrap().to_string();
    // Warm up connections and buffers first, then take the baseline peak RSS.
    proxied(&p, &secret).await.expect(200, None);
    let before = p.rss_kib("VmHWM:");
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 64 * 1024 * 1024;
    let body = Chunks {
        left: TOTAL / CHUNK,
        chunk: Bytes::from(vec![b'x'; CHUNK]),
    };
    let req = Request::post(format!("http://{}/sd/upload", p.proxy))
        .header("authorization", format!("Bearer {secret}"))
        .body(body)
        .unwrap();
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let resp = http.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        body["body_len"], TOTAL,
        "the upstream received the whole body"
    );
    let after = p.rss_kib("VmHWM:");
    let growth = after.saturating_sub(before);
    eprintln!("64 MiB upload: peak RSS {before} KiB -> {after} KiB (+{growth} KiB)");
    assert!(
        growth < 8 * 1024,
        "peak RSS grew by {growth} KiB ({before} -> {after}) for a 64 MiB upload"
    );
}

/// A request body of `n` chunks of `size` bytes, produced on demand (never all in memory).
struct Chunks {
    left: usize,
    chunk: Bytes,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        self.left -= 1;
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.chunk.clone()))))
    }
}
