//! `tokengate dev`: a zero-setup demo in one command.
//!
//! Starts two echo upstreams on loopback, a gateway routing `/sd/` and `/feeds/` to them with
//! its state in a fresh temporary directory (never `data/`), creates a demo token through the
//! admin API, and prints on stdout (never through the log) the token, the admin key, the
//! console URL and a `curl` line that works. Stops on Ctrl-C; the directory is removed.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access::Access;
use crate::app::{Gateway, StartOptions};
use crate::client::AdminClient;
use crate::clock::SystemClock;
use crate::config::{Config, RouteConfig, StoreUrl};
use crate::server::{self, ConnInfo, ServerOptions};
use crate::token;

/// An upstream that answers every request with what it received (minus any Authorization).
pub(crate) async fn spawn_echo(
    service: &'static str,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let opts = ServerOptions {
        header_read_timeout: std::time::Duration::from_secs(10),
        max_buf_size: 64 * 1024,
        h2_max_concurrent_streams: 100,
        h2_max_header_list_size: 64 * 1024,
        idle_timeout: std::time::Duration::from_secs(60),
        max_connections: 1024,
        max_connections_per_ip: 0,
        per_ip_exempt: Vec::new(),
        shutdown_grace: std::time::Duration::from_secs(1),
    };
    tokio::spawn(server::serve(
        listener,
        opts,
        move |_c: ConnInfo| move |req: Request<Incoming>| echo(service, req),
        shutdown,
    ));
    Ok(addr)
}

async fn echo(service: &'static str, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .filter(|(k, _)| *k != http::header::AUTHORIZATION)
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let body = json!({
        "service": service,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    let mut resp = Response::new(Full::new(Bytes::from(format!("{body:#}\n"))));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The preferred port if it is free, else any free port.
async fn pick(preferred: &str) -> SocketAddr {
    match TcpListener::bind(preferred).await {
        Ok(l) => l
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0))),
        Err(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

pub(crate) async fn run() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("tokengate-dev-")
        .tempdir()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let sd = spawn_echo("security-director", stop_rx.clone()).await?;
    let feeds = spawn_echo("third-party-feeds", stop_rx).await?;
    let mut config = Config::defaults();
    config.store.url = StoreUrl::Sqlite(dir.path().join("tokengate.db"));
    config.admin.key_file = dir.path().join("admin.key");
    config.proxy.listen = pick("127.0.0.1:8080").await;
    config.admin.listen = pick("127.0.0.1:9090").await;
    // Forward-auth too, so the nginx / Caddy configurations of the README can be tried.
    config.forward_auth.listen = Some(pick("127.0.0.1:8081").await);
    let route = |prefix: &str, access: Access, upstream: SocketAddr| RouteConfig {
        path_prefix: prefix.into(),
        host: None,
        access,
        upstream: Some(
            format!("http://{upstream}")
                .parse()
                .expect("a socket address makes a valid URI"),
        ),
        strip_prefix: true,
        preserve_host: false,
        forward_authorization: false,
        tls: Default::default(),
    };
    let bit = |name: &str| {
        config
            .access_types
            .bit(name)
            .expect("the default config has the seed's access types")
    };
    config.routes = vec![
        route("/sd/", bit("security-director"), sd),
        route("/feeds/", bit("third-party-feeds"), feeds),
    ];
    let admin_key = token::generate_admin_key();
    let gw = Gateway::start(
        config,
        StartOptions {
            clock: Arc::new(SystemClock),
            admin_key: Some(admin_key.clone()),
        },
    )
    .await?;
    let admin_url = format!("http://{}", gw.admin_addr);
    let client = AdminClient::new(&admin_url, &admin_key)?;
    let created = client
        .call(
            Method::POST,
            "/v1/tokens",
            Some(json!({
                "name": "demo",
                "description": "created by tokengate dev",
                "access": ["security-director", "third-party-feeds"],
            })),
        )
        .await?;
    let secret = created
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let proxy = gw.proxy_addr;
    let checks = gw
        .forward_auth_addr
        .map_or_else(|| "-".to_string(), |a| a.to_string());
    let dir_shown = dir.path().display();
    let banner = format!(
        "tokengate dev is running (state in {dir_shown}, removed on exit)\n\n\
         \x20 proxy        http://{proxy}   (/sd/ -> security-director echo, /feeds/ -> third-party-feeds echo)\n\
         \x20 forward-auth http://{checks}   (/auth for nginx auth_request, Traefik, Caddy; see the README)\n\
         \x20 admin API    {admin_url}\n\
         \x20 console      {admin_url}/\n\
         \x20 admin key    {admin_key}\n\
         \x20 demo token   {secret}   (shown once)\n\n\
         Try it:\n\
         \x20 curl -s -H 'Authorization: Bearer {secret}' http://{proxy}/sd/hello\n\
         and as a forward-auth check (an empty 200 with the x-tokengate-* headers):\n\
         \x20 curl -si -H 'Authorization: Bearer {secret}' -H 'X-Forwarded-Uri: /sd/hello' -H 'X-Forwarded-For: 127.0.0.1' http://{checks}/auth\n\n\
         Manage tokens with the CLI:\n\
         \x20 export TOKENGATE_ADMIN_URL={admin_url} TOKENGATE_ADMIN_KEY={admin_key}\n\
         \x20 tokengate token list\n\n\
         Press Ctrl-C to stop.\n"
    );
    // Whoever reads stdout may stop early (`tokengate dev | head`): the demo goes on
    // running rather than dying of a broken pipe.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes()).and_then(|()| out.flush());
    }
    crate::app::wait_for_signal().await;
    gw.shutdown().await?;
    let _ = stop_tx.send(true);
    Ok(())
}
