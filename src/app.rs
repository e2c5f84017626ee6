//! Wiring: opens the store, loads the token index, binds both listeners, spawns the
//! background tasks (usage flush, lifecycle sweep), and shuts everything down in order.
//!
//! [`Gateway::start`] returns only after both listeners are bound, with their real
//! addresses, so tests can start the gateway on port 0 and use it at once.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::key::{AdminKey, KeySource};
use crate::admin::Admin;
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, ConfigError, RateLimitBackend, ServerTlsConfig, StoreUrl};
use crate::events::dispatch::{load_keys, Dispatcher};
use crate::events::{Endpoint, EventType, Router};
use crate::lifecycle::Sweeper;
use crate::limiter::FailureLimiter;
use crate::metrics::Metrics;
use crate::proxy::{ForwardAuth, Proxy, ProxyConn};
use crate::ratelimit::RateLimiter;
use crate::server::{self, ConnInfo, ServerOptions};
use crate::shared::Shared;
use crate::state::{IndexFollower, TokenIndex};
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use crate::tls::{log_reload, Reloader, ServerTls};
use crate::usage::UsageRecorder;

/// Start-up inputs that are not config keys.
pub struct StartOptions {
    pub clock: SharedClock,
    /// `TOKENGATE_ADMIN_KEY`, if set.
    pub admin_key: Option<String>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            clock: Arc::new(SystemClock),
            admin_key: std::env::var("TOKENGATE_ADMIN_KEY").ok(),
        }
    }
}

/// A running gateway.
pub struct Gateway {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The forward-auth listener's address, when `forward_auth.listen` is set.
    pub forward_auth_addr: Option<SocketAddr>,
    pub store: Arc<dyn Store>,
    pub index: Arc<TokenIndex>,
    pub usage: Arc<UsageRecorder>,
    pub sweeper: Arc<Sweeper>,
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    /// The TLS listeners' certificates (for reloads).
    tls: Vec<Arc<ServerTls>>,
    proxy: Arc<Proxy>,
    webhooks: Arc<Dispatcher>,
}

/// SPEC §4: the admin API is served in clear text only on loopback, unless
/// `admin.allow_plaintext`; a plain proxy listener beyond loopback only gets a warning.
pub fn check_listeners(config: &Config) -> anyhow::Result<()> {
    if !config.admin.listen.ip().is_loopback()
        && config.admin.tls.is_none()
        && !config.admin.allow_plaintext
    {
        bail!(
            "admin.listen {} is not a loopback address: refusing to serve the admin API without TLS \
             (configure admin.tls, or set admin.allow_plaintext = true to override)",
            config.admin.listen
        );
    }
    if let Some(listen) = config.forward_auth.listen {
        if !listen.ip().is_loopback() && config.forward_auth.tls.is_none() {
            tracing::warn!(listen = %listen, "the forward-auth listener is plain HTTP on a non-loopback address: the checks carry bearer tokens in clear text (configure forward_auth.tls)");
        }
    }
    if !config.proxy.listen.ip().is_loopback() && config.proxy.tls.is_none() {
        tracing::warn!(listen = %config.proxy.listen, "the proxy listener is plain HTTP on a non-loopback address: bearer tokens cross the network in clear text (configure proxy.tls)");
    }
    Ok(())
}

fn load_tls(
    section: &'static str,
    files: Option<&ServerTlsConfig>,
) -> anyhow::Result<Option<Arc<ServerTls>>> {
    let Some(files) = files else { return Ok(None) };
    Ok(Some(Arc::new(ServerTls::load(section, files)?)))
}

impl Gateway {
    pub async fn start(config: Config, opts: StartOptions) -> anyhow::Result<Gateway> {
        check_listeners(&config)?;
        // The certificates are read before anything else: a bad file stops start-up, naming
        // its key (`proxy.tls.cert: cannot read ...`).
        let proxy_tls = load_tls("proxy.tls", config.proxy.tls.as_ref())?;
        let admin_tls = load_tls("admin.tls", config.admin.tls.as_ref())?;
        let forward_auth_tls = load_tls("forward_auth.tls", config.forward_auth.tls.as_ref())?;
        // The webhook endpoints (SPEC §10): the store writes their outbox rows in the
        // transactions of the changes they report.
        // Their signing keys first: a missing one stops start-up before anything is opened.
        let shared_store = matches!(config.store.url, StoreUrl::Postgres(_));
        let signing = load_keys(&config.webhooks, shared_store)?;
        let router = Arc::new(Router::new(
            config
                .webhooks
                .endpoints
                .iter()
                .zip(&signing)
                .map(|(e, key)| Endpoint::new(&e.url, e.events, key))
                .collect(),
        ));
        let store: Arc<dyn Store> = match &config.store.url {
            StoreUrl::Sqlite(path) => {
                let s = SqliteStore::open(path)
                    .await
                    .with_context(|| format!("opening the store at sqlite://{}", path.display()))?;
                s.set_events(router.clone());
                Arc::new(s)
            }
            // The error never names the URL: it may carry a password.
            StoreUrl::Postgres(url) => {
                let s = PostgresStore::open(url, config.store.outage_grace, opts.clock.clone())
                    .await
                    .context("opening the PostgreSQL store (store.url)")?;
                s.set_events(router.clone());
                Arc::new(s)
            }
        };
        let (key, source) =
            AdminKey::load_or_create(opts.admin_key.as_deref(), &config.admin.key_file)?;
        match source {
            KeySource::Env => tracing::info!("admin key from TOKENGATE_ADMIN_KEY"),
            KeySource::File => {
                tracing::info!(path = %config.admin.key_file.display(), "admin key from file")
            }
            KeySource::Generated => {
                tracing::info!(path = %config.admin.key_file.display(), "generated a new admin key (mode 0600)")
            }
        }
        let index = Arc::new(
            TokenIndex::load(store.as_ref(), config.access_types.clone())
                .await
                .context("loading tokens from the store")?,
        );
        tracing::info!(tokens = index.len(), "token index loaded");
        let clock = opts.clock;
        let usage = Arc::new(UsageRecorder::new(config.usage.max_ips_per_token));
        let limiter = Arc::new(FailureLimiter::new(
            config.proxy.failed_auth_limit,
            clock.clone(),
        ));
        let metrics = Arc::new(Metrics::new(
            config.routes.iter().map(|r| r.path_prefix.as_str()),
        ));
        let rate_limiter = Arc::new(match &config.rate_limit.backend {
            RateLimitBackend::Local => RateLimiter::local(),
            RateLimitBackend::Redis { url } => {
                RateLimiter::redis(url, config.rate_limit.redis_timeout)
                    .map_err(|e| anyhow::anyhow!("{e}"))?
            }
        });
        // Without endpoints it has no lanes, but still tidies the outbox hourly: rows left by
        // endpoints since removed fail after max_age and are pruned after retention.
        let webhooks = Arc::new(Dispatcher::new(
            &config.webhooks,
            signing,
            router.clone(),
            store.clone(),
            clock.clone(),
            metrics.clone(),
        )?);
        let shared = Shared {
            store: store.clone(),
            index: index.clone(),
            usage: usage.clone(),
            limiter: limiter.clone(),
            clock: clock.clone(),
            metrics: metrics.clone(),
            rate_limiter: rate_limiter.clone(),
        };
        let proxy = Arc::new(Proxy::new(&config, &shared)?);
        let admin = Arc::new(Admin::new(&config, &shared, key));
        let sweeper = Arc::new(Sweeper::new(&config, &shared));
        // Persist the policy once before serving, so the store starts consistent.
        if let Err(e) = sweeper.sweep_once().await {
            tracing::warn!(error = %e, "start-up lifecycle sweep failed");
        }

        let proxy_listener = TcpListener::bind(config.proxy.listen)
            .await
            .with_context(|| format!("binding proxy.listen {}", config.proxy.listen))?;
        let admin_listener = TcpListener::bind(config.admin.listen)
            .await
            .with_context(|| format!("binding admin.listen {}", config.admin.listen))?;
        let forward_auth_listener = match config.forward_auth.listen {
            None => None,
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding forward_auth.listen {addr}"))?,
            ),
        };
        let proxy_addr = proxy_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let forward_auth_addr = match &forward_auth_listener {
            None => None,
            Some(l) => Some(l.local_addr()?),
        };
        let (shutdown, rx) = watch::channel(false);
        let p = &config.proxy;
        let opts = ServerOptions {
            header_read_timeout: p.header_read_timeout,
            // The pipeline applies max_header_bytes exactly, with the SPEC's JSON 431; hyper's
            // buffer sits above it (2x, at least 64 KiB) so that answer covers all but absurd
            // heads, which hyper itself refuses with a bare 431.
            max_buf_size: (p.max_header_bytes * 2).max(64 * 1024),
            h2_max_concurrent_streams: p.h2_max_concurrent_streams,
            // The same for HTTP/2: h2 counts 32 bytes per field on top of names and values, so
            // at 1x it would refuse first, with a bare 431.
            h2_max_header_list_size: u32::try_from(p.max_header_bytes * 2).unwrap_or(u32::MAX),
            idle_timeout: p.idle_timeout,
            max_connections: p.max_connections,
            max_connections_per_ip: p.max_connections_per_ip,
            per_ip_exempt: p.trusted_proxies.clone(),
            shutdown_grace: p.shutdown_grace,
        };
        let admin_opts = ServerOptions {
            max_connections: 1024,
            max_connections_per_ip: 0,
            ..opts.clone()
        };
        let proxy_handle = proxy.clone();
        let forward_auth = Arc::new(ForwardAuth::new(&config, proxy.clone()));
        let check_opts = ServerOptions {
            // Callers are a few proxies holding many keep-alive connections: the per-IP share
            // would only get in their way.
            max_connections_per_ip: 0,
            ..opts.clone()
        };
        let mut servers = vec![
            tokio::spawn(server::serve_tls(
                proxy_listener,
                opts,
                proxy_tls.clone(),
                move |c| {
                    let (proxy, conn) = (proxy.clone(), Arc::new(ProxyConn::new(c)));
                    move |r| proxy.clone().handle(conn.clone(), r)
                },
                rx.clone(),
            )),
            tokio::spawn(server::serve_tls(
                admin_listener,
                admin_opts,
                admin_tls.clone(),
                move |c: ConnInfo| {
                    let admin = admin.clone();
                    move |r| admin.clone().handle(c.clone(), r)
                },
                rx.clone(),
            )),
        ];
        if let Some(listener) = forward_auth_listener {
            servers.push(tokio::spawn(server::serve_tls(
                listener,
                check_opts,
                forward_auth_tls.clone(),
                move |c: ConnInfo| {
                    let (checks, conn) = (forward_auth.clone(), Arc::new(c));
                    move |r| checks.clone().handle(conn.clone(), r)
                },
                rx.clone(),
            )));
        }
        let tls: Vec<Arc<ServerTls>> = proxy_tls
            .into_iter()
            .chain(admin_tls)
            .chain(forward_auth_tls)
            .collect();
        if !tls.is_empty() {
            // Certificate reload: on SIGHUP and when the files change.
            servers.push(tokio::spawn(Reloader::new(tls.clone()).run(rx.clone())));
        }
        let mut background = vec![
            tokio::spawn(
                usage
                    .clone()
                    .run(store.clone(), config.usage.flush_interval, rx.clone()),
            ),
            tokio::spawn(
                sweeper
                    .clone()
                    .run(config.lifecycle.sweep_interval, rx.clone()),
            ),
        ];
        background.push(tokio::spawn(webhooks.clone().run(rx.clone())));
        if !config.webhooks.endpoints.is_empty() {
            tracing::info!(
                endpoints = config.webhooks.endpoints.len(),
                "webhook dispatcher running"
            );
        }
        if router.wants(EventType::AuthFailures) {
            let (tx, crossings) = tokio::sync::mpsc::channel(1024);
            limiter.report_crossings(tx);
            background.push(tokio::spawn(crate::events::dispatch::auth_failures(
                crossings,
                store.clone(),
                router.clone(),
                rx.clone(),
            )));
        }
        background.push(tokio::spawn(prune_windows(
            rate_limiter,
            usage.clone(),
            clock.clone(),
            rx.clone(),
        )));
        // A shared store: follow the changes other instances commit (none for SQLite).
        let follower = Arc::new(IndexFollower {
            index: index.clone(),
            store: store.clone(),
        });
        background.extend(store.clone().follow(follower, rx));
        let console = format!(
            "{}://{admin_addr}/",
            if config.admin.tls.is_some() {
                "https"
            } else {
                "http"
            }
        );
        tracing::info!(
            proxy = %proxy_addr,
            admin = %admin_addr,
            forward_auth = forward_auth_addr.map(tracing::field::display),
            console = %console,
            "tokengate listening"
        );
        if config.routes.is_empty() {
            tracing::warn!("no [[routes]] are configured: the proxy listener answers every request 404 (add a [[routes]] section: see the README's Configuration)");
        }
        Ok(Gateway {
            proxy_addr,
            admin_addr,
            forward_auth_addr,
            store,
            index,
            usage,
            sweeper,
            shutdown,
            servers,
            background,
            tls,
            proxy: proxy_handle,
            webhooks,
        })
    }

    /// Runs a webhook delivery round here and now, returning how many deliveries it
    /// attempted (0 without endpoints). Tests that move the clock use it.
    pub async fn deliver_due_webhooks(&self) -> usize {
        self.webhooks.round_all().await
    }

    /// Wakes the background webhook dispatcher for a round (nothing without endpoints).
    pub fn kick_webhooks(&self) {
        self.webhooks.kick();
    }

    /// Idle upstream connections kept for reuse, summed over origins (connections held by
    /// open client connections are not counted).
    pub fn upstream_idle_connections(&self) -> usize {
        self.proxy.upstream_idle_connections()
    }

    /// Re-reads the TLS listeners' certificate files now (what SIGHUP does). A listener whose
    /// new files are broken keeps its current certificate; the first error is returned.
    pub fn reload_tls(&self) -> Result<(), ConfigError> {
        let mut first = Ok(());
        for t in &self.tls {
            let r = t.reload(true);
            if let (Err(e), Ok(())) = (&r, &first) {
                first = Err(ConfigError::Invalid {
                    key: t.section().to_string(),
                    message: e.to_string(),
                });
            }
            log_reload(t, r, "reload_tls");
        }
        first
    }

    /// Graceful stop: stop accepting, drain in-flight requests (up to `proxy.shutdown_grace`),
    /// stop the background tasks, then flush pending usage one last time.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        for s in self.servers {
            let _ = s.await;
        }
        for b in self.background {
            let _ = b.await;
        }
        self.usage
            .flush(self.store.as_ref())
            .await
            .context("final usage flush")?;
        Ok(())
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Every 10 s, drops the local rate-limit state of tokens whose bucket is full again
/// (lossless: a full bucket is what a token without state has) and the ended hourly windows of
/// the refusal-record cap, so memory follows the tokens in use.
async fn prune_windows(
    limiter: Arc<RateLimiter>,
    usage: Arc<UsageRecorder>,
    clock: SharedClock,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now = clock.now();
                limiter.prune(now);
                usage.prune_denied_windows(now);
            }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tls_listener_tests {
    use super::*;

    fn config(admin: &str, tls: bool, allow_plaintext: bool) -> Config {
        let mut c = Config::defaults();
        c.admin.listen = admin.parse().unwrap();
        c.admin.allow_plaintext = allow_plaintext;
        c.admin.tls = tls.then(|| ServerTlsConfig {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            client_ca: None,
        });
        c
    }

    #[test]
    fn a_non_loopback_admin_listener_needs_tls_or_allow_plaintext() {
        assert!(check_listeners(&config("127.0.0.1:9090", false, false)).is_ok());
        let e = check_listeners(&config("0.0.0.0:9090", false, false)).unwrap_err();
        assert!(e.to_string().contains("admin.allow_plaintext"), "{e}");
        assert!(check_listeners(&config("0.0.0.0:9090", false, true)).is_ok());
        assert!(check_listeners(&config("0.0.0.0:9090", true, false)).is_ok());
        assert!(check_listeners(&config("[::]:9090", true, false)).is_ok());
    }
}
