//! Hostile clients and store faults (issue 7): each test sends the abuse to the real server,
//! checks the refusal, and checks that a valid request right after still succeeds.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn a_slowloris_head_is_cut_off_by_the_header_read_timeout() {
    let (up, gw, secret) = gateway_with_token(|c| {
        c.proxy.header_read_timeout = Duration::from_millis(300);
        c.proxy.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(b"GET /sd/x HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .await
        .unwrap();
    let took = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("closed");
    assert!(
        took >= Duration::from_millis(250),
        "closed too early: {took:?}"
    );
    assert_eq!(up.count(), 0);
    gw.get("/sd/ok", Some(&secret)).await.expect(200, None);
}

#[tokio::test]
async fn a_stalled_body_is_cut_off_by_the_idle_timeout() {
    let (_up, gw, secret) = gateway_with_token(|c| {
        c.proxy.idle_timeout = Duration::from_millis(500);
        c.proxy.upstream_timeout = Duration::from_secs(30);
    })
    .await;
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let head = format!(
        "POST /sd/upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nContent-Length: 1000\r\n\r\n0123456789"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The body never completes: no byte moves, so the connection is closed as idle.
    let took = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("closed");
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
    gw.get("/sd/ok", Some(&secret)).await.expect(200, None);
}

#[tokio::test]
async fn connections_beyond_max_connections_wait_until_one_closes() {
    let (_up, gw, secret) = gateway_with_token(|c| c.proxy.max_connections = 2).await;
    // Two keep-alive connections hold both slots (the test client's pool holds one more
    // connection to the admin listener, which has its own cap).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.proxy).await.unwrap();
        let req =
            format!("GET /sd/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // A third connection is accepted by the kernel but not served while both are held.
    let third = waiting_request(&gw, &secret, "served beyond max_connections").await;
    // Free a slot: the waiting connection is served.
    drop(held.pop());
    answered_200(third, "served once a slot is free").await;
}

/// Sends a request on a new connection and checks that it is not answered within 0.5 s (it
/// waits for a connection slot); returns the connection.
async fn waiting_request(gw: &TestGateway, secret: &str, served_early: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    let req = format!("GET /sd/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 512];
    let early = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    assert!(early.is_err(), "{served_early}");
    s
}

/// The request waiting on `s` is answered 200 within 10 s.
async fn answered_200(mut s: TcpStream, what: &str) {
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect(what)
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn an_open_tunnel_keeps_its_connection_slot() {
    let (_up, gw, secret) = gateway_with_token(|c| c.proxy.max_connections = 1).await;
    // A WebSocket tunnel: the connection task ends at the upgrade, the socket does not.
    let mut tunnel = TcpStream::connect(gw.proxy).await.unwrap();
    let upgrade = format!(
        "GET /sd/ws HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    );
    tunnel.write_all(upgrade.as_bytes()).await.unwrap();
    let head = read_head(&mut tunnel).await;
    assert_eq!(raw_status(&head), 101, "{head}");
    // The tunnel holds the only slot: a second connection is not served while it is open.
    let second = waiting_request(
        &gw,
        &secret,
        "served beyond max_connections while a tunnel was open",
    )
    .await;
    // Closing the tunnel frees the slot.
    drop(tunnel);
    answered_200(second, "served once the tunnel closed").await;
}

#[tokio::test]
async fn invalid_header_bytes_and_smuggling_shapes_are_refused() {
    let (up, gw, secret) = gateway_with_token(|_| {}).await;
    let auth = format!("Authorization: Bearer {secret}\r\n");
    for bad in [
        // Control byte in a header value, space before the colon, obs-fold continuation.
        format!("GET /sd/x HTTP/1.1\r\nHost: a\r\n{auth}X-Bad: a\x01b\r\n\r\n"),
        format!("GET /sd/x HTTP/1.1\r\nHost: a\r\n{auth}X-Bad : v\r\n\r\n"),
        format!("GET /sd/x HTTP/1.1\r\nHost: a\r\n{auth}X-Folded: a\r\n  b\r\n\r\n"),
        // Two different Content-Lengths; chunked that is not the final coding.
        format!("POST /sd/x HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        format!("POST /sd/x HTTP/1.1\r\nHost: a\r\n{auth}Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    ] {
        let answer = raw(gw.proxy, bad.as_bytes()).await;
        assert_eq!(raw_status(&answer), 400, "{bad:?} -> {answer}");
    }
    assert_eq!(up.count(), 0, "nothing reached the upstream");
    gw.get("/sd/ok", Some(&secret)).await.expect(200, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_database_stops_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tokengate.db");
    std::fs::write(&db, vec![0x5a; 64 * 1024]).unwrap();
    let cfg = dir.path().join("tg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\nkey_file = \"{d}/admin.key\"\n[store]\nurl = \"sqlite://{d}/tokengate.db\"\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["--config", cfg.to_str().unwrap(), "serve"])
            .env("TOKENGATE_ADMIN_KEY", ADMIN_KEY)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tokengate.db"),
        "the file is named: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
