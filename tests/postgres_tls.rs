//! TLS to PostgreSQL (issue 23): every `sslmode` of the store URL against a private cluster
//! (initdb/pg_ctl, an ephemeral port) that accepts only TLS connections, with certificates made
//! here; a wrong CA refused; a client certificate that `pg_hba.conf` requires; plaintext refused
//! by the server, with the server's reason in the error; and a whole gateway whose every
//! connection (pool and change follower) is encrypted.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::Method;
use support::certs::{Ca, Leaf};
use support::*;
use tokengate::config::StoreUrl;
use tokengate::store::postgres::PostgresStore;

const SD: &str = "security-director";

/// A cluster with `ssl = on` (server certificate `server`, client certificates checked against
/// `client_ca`) and `hba` as its `pg_hba.conf` (local connections are always trusted, for the
/// test's own inspection).
async fn tls_cluster(server: &Leaf, client_ca: &Ca, hba: &str) -> PgCluster {
    let c = PgCluster::init().await;
    c.write_data_file("server.crt", &server.cert_pem);
    c.write_data_file("server.key", &server.key_pem);
    c.write_data_file("client_ca.crt", &client_ca.pem());
    c.configure(
        "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
         ssl_ca_file = 'client_ca.crt'\n",
    );
    c.write_data_file("pg_hba.conf", &format!("local all all trust\n{hba}\n"));
    c.start_server();
    c
}

/// Only TLS over TCP; plaintext is rejected by `pg_hba.conf` itself.
const TLS_ONLY: &str = "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject";

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_string_lossy().into_owned()
}

/// `key=value` pairs as a URL query, values percent-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let v: String = v
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn open(url: &str) -> Result<PostgresStore, String> {
    let clock: tokengate::clock::SharedClock = Arc::new(tokengate::clock::SystemClock);
    PostgresStore::open(url, Duration::from_secs(60), clock)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn every_sslmode_against_a_server_that_takes_only_tls() {
    if postgres_url("every_sslmode_against_a_server_that_takes_only_tls").is_none() {
        return;
    }
    let ca = Ca::new("tokengate test PostgreSQL CA");
    let other = Ca::new("some other CA");
    // Valid for the name `localhost` only: connecting by IP passes verify-ca, not verify-full.
    let cluster = tls_cluster(&ca.server(&["localhost"]), &ca, TLS_ONLY).await;
    let files = tempfile::tempdir().unwrap();
    let root = write(files.path(), "ca.pem", &ca.pem());
    let wrong = write(files.path(), "other.pem", &other.pem());
    let by_ip = |q: &str| {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{q}",
            cluster.port
        )
    };
    let by_name = |q: &str| {
        format!(
            "postgres://postgres@localhost:{}/postgres?{q}",
            cluster.port
        )
    };

    // Plaintext: the default on loopback, and asked for. The server's reason is in the error.
    for url in [by_ip(""), by_ip("sslmode=disable")] {
        let e = open(&url).await.err().expect("plaintext is refused");
        assert!(
            e.contains("pg_hba.conf rejects connection") && e.contains("no encryption"),
            "{e}"
        );
    }
    // Encrypted, certificate unchecked.
    open(&by_ip("sslmode=require")).await.expect("require");
    // The chain checked, not the name.
    open(&by_ip(&query(&[
        ("sslmode", "verify-ca"),
        ("sslrootcert", &root),
    ])))
    .await
    .expect("verify-ca by IP");
    // The chain and the name.
    open(&by_name(&query(&[
        ("sslmode", "verify-full"),
        ("sslrootcert", &root),
    ])))
    .await
    .expect("verify-full by name");
    let e = open(&by_ip(&query(&[
        ("sslmode", "verify-full"),
        ("sslrootcert", &root),
    ])))
    .await
    .err()
    .expect("verify-full by an IP the certificate does not name");
    assert!(e.to_lowercase().contains("not valid for name"), "{e}");
    // A CA that did not sign the server's certificate, whatever the mode that checks it
    // (`require` with a root certificate checks the chain, as libpq does).
    for mode in ["verify-full", "verify-ca", "require"] {
        let e = open(&by_name(&query(&[
            ("sslmode", mode),
            ("sslrootcert", &wrong),
        ])))
        .await
        .err()
        .unwrap_or_else(|| panic!("{mode} with the wrong CA"));
        assert!(e.contains("invalid peer certificate"), "{mode}: {e}");
    }
    // libpq's fall-back modes are refused before any connection.
    let e = open(&by_ip("sslmode=prefer")).await.err().expect("prefer");
    assert!(e.contains("falls back to plaintext"), "{e}");
}

#[tokio::test]
async fn a_client_certificate_that_pg_hba_requires_is_presented() {
    if postgres_url("a_client_certificate_that_pg_hba_requires_is_presented").is_none() {
        return;
    }
    let ca = Ca::new("tokengate test PostgreSQL CA");
    let other = Ca::new("some other CA");
    let hba = "hostssl all all 127.0.0.1/32 cert\nhostnossl all all 127.0.0.1/32 reject";
    let cluster = tls_cluster(&ca.server(&["127.0.0.1"]), &ca, hba).await;
    let files = tempfile::tempdir().unwrap();
    let root = write(files.path(), "ca.pem", &ca.pem());
    let url = |extra: &[(&str, &str)]| {
        let mut pairs = vec![("sslmode", "verify-full"), ("sslrootcert", root.as_str())];
        pairs.extend_from_slice(extra);
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{}",
            cluster.port,
            query(&pairs)
        )
    };
    let e = open(&url(&[])).await.err().expect("no client certificate");
    assert!(e.contains("certificate"), "{e}");
    // The `cert` method maps the certificate's CN to the user: CN=postgres.
    let mine = ca.client("postgres");
    let cert = write(files.path(), "client.pem", &mine.cert_pem);
    let key = write(files.path(), "client.key", &mine.key_pem);
    open(&url(&[("sslcert", &cert), ("sslkey", &key)]))
        .await
        .expect("the client certificate is accepted");
    // One the server's CA did not sign.
    let stranger = other.client("postgres");
    let cert = write(files.path(), "stranger.pem", &stranger.cert_pem);
    let key = write(files.path(), "stranger.key", &stranger.key_pem);
    assert!(open(&url(&[("sslcert", &cert), ("sslkey", &key)]))
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_over_verify_full_encrypts_every_connection() {
    if postgres_url("a_gateway_over_verify_full_encrypts_every_connection").is_none() {
        return;
    }
    let ca = Ca::new("tokengate test PostgreSQL CA");
    // Plaintext allowed too, so a connection that skipped TLS would be counted below.
    let either = "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 trust";
    let cluster = tls_cluster(&ca.server(&["127.0.0.1"]), &ca, either).await;
    let files = tempfile::tempdir().unwrap();
    let root = write(files.path(), "ca.pem", &ca.pem());
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?{}",
        cluster.port,
        query(&[("sslmode", "verify-full"), ("sslrootcert", &root)])
    );
    let up = Upstream::start().await;
    let start = || {
        let url = url.clone();
        async move {
            TestGateway::builder()
                .configure(|c| c.store.url = StoreUrl::Postgres(url))
                .route("/sd/", SD, up.addr)
                .start()
                .await
        }
    };
    let a = start().await;
    let b = start().await;
    let (secret, _) = a.create_token("feed", &[SD]).await;
    a.get("/sd/x", Some(&secret)).await.expect(200, None);
    // A change on A reaches B through B's (encrypted) change follower.
    let r = a
        .admin(
            Method::POST,
            "/v1/tokens/deactivate",
            Some(serde_json::json!({"names": ["feed"]})),
        )
        .await;
    r.expect(200, None);
    eventually(
        "B sees the deactivation",
        Duration::from_secs(5),
        || async { (b.get("/sd/x", Some(&secret)).await.status == 403).then_some(()) },
    )
    .await;
    // Every TCP connection the two gateways hold is TLS (the test itself uses the socket).
    let socket_dir = cluster.path().to_string_lossy().replace('/', "%2F");
    let local = format!("postgres://postgres@{socket_dir}:{}/postgres", cluster.port);
    let client = pg_connect(&local).await;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl), \
                    count(*) FILTER (WHERE a.application_name LIKE 'tokengate listener%') \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name LIKE 'tokengate%'",
            &[],
        )
        .await
        .unwrap();
    let (tls, plain, listeners): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(plain, 0, "no plaintext connection");
    assert_eq!(listeners, 2, "each gateway's change follower is connected");
    assert!(tls >= 3, "pools and followers: {tls}");
}
