//! A 502 or 504 names its cause once at `warn` (issue 15 item 14): which route, which
//! upstream (`scheme://host:port` only), why; rate-limited per route; never a credential.
//! Its own binary: it installs the process's global log subscriber.

mod support;

use std::time::Duration;

use support::*;

trait Warnings {
    fn warnings(&self) -> Vec<String>;
}

impl Warnings for LogCapture {
    fn warnings(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("upstream request failed"))
            .map(str::to_string)
            .collect()
    }
}

#[tokio::test]
async fn an_upstream_failure_is_logged_once_with_its_cause() {
    let capture = LogCapture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        // The request span is at debug: enabled for the proxy, so its lines carry it.
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "warn,tokengate::proxy=debug",
        ))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let refused = refused_addr().await;
    let up = Upstream::start().await;
    let gw = TestGateway::builder()
        .route("/down/", "security-director", refused)
        .route("/slow/", "security-director", up.addr)
        .configure(|c| c.proxy.upstream_timeout = Duration::from_millis(300))
        .start()
        .await;
    let (secret, _) = gw.create_token("t", &["security-director"]).await;

    for _ in 0..5 {
        gw.get("/down/x", Some(&secret))
            .await
            .expect(502, Some("bad_gateway"));
    }
    let lines = capture.warnings();
    assert_eq!(
        lines.len(),
        1,
        "five failures within a second are one warning: {lines:#?}"
    );
    let line = &lines[0];
    for part in [
        // The request's span: who asked, for which route (never a credential).
        "request{method=GET client_ip=127.0.0.1 route=/down/}",
        "route=/down/",
        &format!("upstream=http://127.0.0.1:{}", refused.port()),
        "cause=\"connection refused\"",
    ] {
        assert!(line.contains(part), "{part:?} missing from {line}");
    }

    gw.get("/slow/hang", Some(&secret))
        .await
        .expect(504, Some("gateway_timeout"));
    let lines = capture.warnings();
    let slow = lines
        .iter()
        .find(|l| l.contains("route=/slow/"))
        .unwrap_or_else(|| panic!("no warning for the 504: {lines:#?}"));
    assert!(slow.contains("cause=\"timeout\""), "{slow}");

    let all = capture.text();
    assert!(!all.contains(&secret), "a secret reached the log");
}
