//! TLS with rustls (ring provider, TLS 1.2 and 1.3 only): the listeners' certificates with
//! reload, clients of `https://` upstreams and of a TLS admin listener, and the subject of a
//! client certificate (the audit actor on an admin listener with `client_ca`).
//!
//! - [`ServerTls`] holds a listener's current `ServerConfig`; each accepted connection takes
//!   the one current at its handshake, so swapping it (a reload) changes the certificate for
//!   new connections while live ones keep theirs. A reload that fails (a missing file, a key
//!   that does not match) keeps the current configuration and logs why.
//! - [`Reloader`] polls the files' contents every few seconds and reloads on SIGHUP.
//! - [`UpstreamClients`]: per distinct route TLS setting (routes without TLS settings share
//!   one), a connector and a pooled hyper client built on it, chosen by the upstream's
//!   `host:port`. `proxy::upstream` opens its connection-affine connections with the
//!   connector and uses the pooled client for HTTP/2 clients and upgrades.
//!
//! Error messages name the config key and the file (`proxy.tls.cert: cannot read "x.pem":
//! ...`); they never contain key material.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use http::uri::Scheme;
use http::Request;
use hyper::body::Body;
use hyper_rustls::{
    DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, ResolveServerName,
};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::body::ClientBody;
use crate::config::{ConfigError, RouteConfig, ServerTlsConfig, UpstreamTls};

/// How often the certificate files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// The crypto provider of every TLS context: ring, with its default (modern AEAD) suites.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

// === PEM files ===

/// The bytes of a PEM file; the error names the key and the file.
pub fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {:?}: {e}", path.display())))
}

/// Every certificate in a PEM file's bytes (at least one).
pub fn parse_certs(
    key: &str,
    path: &Path,
    pem_bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("{:?} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!("no PEM certificate found in {:?}", path.display()),
        ));
    }
    Ok(certs)
}

/// The private key in a PEM file's bytes. The error never quotes the file's content.
pub fn parse_key(
    key: &str,
    path: &Path,
    pem_bytes: &[u8],
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(pem_bytes).map_err(|e| {
        let why = match e {
            pem::Error::NoItemsFound => "no PEM private key (PKCS#8, PKCS#1 or SEC1) found in",
            _ => "malformed PEM private key in",
        };
        invalid(key, format!("{why} {:?}", path.display()))
    })
}

/// A root store from a PEM CA bundle (at least one usable certificate).
pub fn load_roots(key: &str, path: &Path) -> Result<RootCertStore, ConfigError> {
    let certs = parse_certs(key, path, &read_file(key, path)?)?;
    roots_from(key, path, certs)
}

fn roots_from(
    key: &str,
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(invalid(
            key,
            format!("no usable CA certificate in {:?}", path.display()),
        ));
    }
    Ok(roots)
}

/// A certificate chain and its key, read from two PEM files.
pub fn load_cert_and_key(
    cert_key: &str,
    cert: &Path,
    key_key: &str,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
    let certs = parse_certs(cert_key, cert, &read_file(cert_key, cert)?)?;
    let key_der = parse_key(key_key, key, &read_file(key_key, key)?)?;
    Ok((certs, key_der))
}

/// The platform's trusted roots (the OS store, honouring `SSL_CERT_FILE`/`SSL_CERT_DIR`);
/// when it has none, the Mozilla roots bundled in the binary, with a warning that says so.
pub fn platform_roots() -> RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added > 0 {
                tracing::debug!(roots = added, "platform CA roots loaded");
                return roots;
            }
            let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
            tracing::warn!(
                errors = ?errors,
                "no CA certificate in the platform store: verifying https servers against the \
                 Mozilla roots built into tokengate (webpki-roots) instead"
            );
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            roots
        })
        .clone()
}

// === listeners ===

/// A TLS listener's configuration, swapped on reload.
pub struct ServerTls {
    /// `proxy.tls` or `admin.tls`, for messages.
    section: &'static str,
    files: ServerTlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    /// Hash of the file contents last tried (loaded or refused), so a broken file is
    /// reported once, not on every poll.
    seen: Mutex<blake3::Hash>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("section", &self.section)
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The raw contents of a listener's files, read together.
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn read(section: &str, files: &ServerTlsConfig) -> Result<Contents, ConfigError> {
        Ok(Contents {
            cert: read_file(&format!("{section}.cert"), &files.cert)?,
            key: read_file(&format!("{section}.key"), &files.key)?,
            client_ca: match &files.client_ca {
                None => None,
                Some(p) => Some(read_file(&format!("{section}.client_ca"), p)?),
            },
        })
    }

    fn hash(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            let bytes = part.map_or(&[][..], |v| v.as_slice());
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        h.finalize()
    }
}

/// Whether a reload changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// New certificate (or key or client CA) in use for new connections.
    Swapped,
    /// The files did not change since they were last read.
    Unchanged,
}

impl ServerTls {
    /// Reads and checks the files (certificate chain, matching key, client CA).
    pub fn load(section: &'static str, files: &ServerTlsConfig) -> Result<ServerTls, ConfigError> {
        let contents = Contents::read(section, files)?;
        let config = build_server_config(section, files, &contents)?;
        Ok(ServerTls {
            section,
            files: files.clone(),
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(contents.hash()),
        })
    }

    pub fn section(&self) -> &'static str {
        self.section
    }

    /// Whether connections must present a client certificate (`client_ca`).
    pub fn client_auth(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the configuration current now (one per connection).
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// Re-reads the files; with `force` (SIGHUP) even if their contents did not change.
    /// On error the current configuration stays in use. Blocking file IO.
    pub fn reload(&self, force: bool) -> Result<Reloaded, ConfigError> {
        let contents = Contents::read(self.section, &self.files)?;
        let hash = contents.hash();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == hash {
                return Ok(Reloaded::Unchanged);
            }
            *seen = hash;
        }
        let config = build_server_config(self.section, &self.files, &contents)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
        Ok(Reloaded::Swapped)
    }
}

fn build_server_config(
    section: &str,
    files: &ServerTlsConfig,
    contents: &Contents,
) -> Result<ServerConfig, ConfigError> {
    let cert_key = format!("{section}.cert");
    let key_key = format!("{section}.key");
    let certs = parse_certs(&cert_key, &files.cert, &contents.cert)?;
    let key = parse_key(&key_key, &files.key, &contents.key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| invalid(section, e.to_string()))?;
    let builder = match (&files.client_ca, &contents.client_ca) {
        (Some(path), Some(pem_bytes)) => {
            let ca_key = format!("{section}.client_ca");
            let roots = roots_from(&ca_key, path, parse_certs(&ca_key, path, pem_bytes)?)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(&ca_key, format!("{:?}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => invalid(
            &key_key,
            format!(
                "{:?} is not the key of the certificate in {:?}",
                files.key.display(),
                files.cert.display()
            ),
        ),
        other => invalid(
            &key_key,
            format!("cannot use {:?}: {other}", files.key.display()),
        ),
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Reloads the listeners' certificates when their files change (polled every
/// [`WATCH_INTERVAL`]) and on SIGHUP.
pub struct Reloader {
    listeners: Vec<Arc<ServerTls>>,
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Reloader {
    /// Registers the SIGHUP handler at once (so a SIGHUP right after start-up reloads instead
    /// of killing the process). Must be called inside the runtime.
    pub fn new(listeners: Vec<Arc<ServerTls>>) -> Reloader {
        #[cfg(unix)]
        let hangup = {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; certificates reload only when their files change");
                    None
                }
            }
        };
        Reloader {
            listeners,
            #[cfg(unix)]
            hangup,
        }
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            let force = tokio::select! {
                _ = tick.tick() => false,
                _ = self.hangup() => true,
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        return;
                    }
                    continue;
                }
            };
            let listeners = self.listeners.clone();
            let trigger = if force { "SIGHUP" } else { "file change" };
            let done = tokio::task::spawn_blocking(move || {
                for l in &listeners {
                    log_reload(l, l.reload(force), trigger);
                }
            });
            let _ = done.await;
        }
    }

    async fn hangup(&mut self) {
        #[cfg(unix)]
        if let Some(s) = self.hangup.as_mut() {
            if s.recv().await.is_some() {
                return;
            }
            self.hangup = None;
        }
        std::future::pending::<()>().await
    }
}

/// One log line per reload that did something (or failed).
pub fn log_reload(tls: &ServerTls, result: Result<Reloaded, ConfigError>, trigger: &str) {
    match result {
        Ok(Reloaded::Unchanged) => {}
        Ok(Reloaded::Swapped) => tracing::info!(
            listener = tls.section,
            cert = %tls.files.cert.display(),
            trigger,
            "TLS certificate reloaded; new connections use it"
        ),
        Err(e) => tracing::warn!(
            listener = tls.section,
            error = %e,
            trigger,
            "TLS certificate reload failed; keeping the current certificate"
        ),
    }
}

/// The subject of a verified client certificate, added to each request of its connection
/// (as a request extension) by the server.
#[derive(Debug, Clone)]
pub struct ClientCertSubject(pub Arc<str>);

impl ClientCertSubject {
    /// The subject of the connection's first peer certificate, if any.
    pub fn of(conn: &rustls::ServerConnection) -> Option<ClientCertSubject> {
        let cert = conn.peer_certificates()?.first()?;
        let subject = subject_of(cert.as_ref())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "client certificate without subject".to_string());
        Some(ClientCertSubject(subject.into()))
    }
}

// === clients ===

/// A rustls client configuration: `roots`, an optional client certificate, HTTP/1.1 ALPN.
pub fn client_config(
    roots: RootCertStore,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots);
    let mut config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((certs, key)) => builder.with_client_auth_cert(certs, key)?,
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A hyper client for `http://` and `https://` URLs with `tls`.
pub fn https_client<B>(
    tls: ClientConfig,
    server_name: Option<ServerName<'static>>,
    connect_timeout: Option<Duration>,
) -> Client<HttpsConnector<HttpConnector>, B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pooled_client(https_connector(tls, server_name, connect_timeout))
}

fn pooled_client<B>(connector: UpstreamConnector) -> Client<UpstreamConnector, B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// Opens TCP connections (no Nagle, bounded connect time) for `http://` URLs, and TLS over
/// them with `tls` for `https://` URLs.
pub type UpstreamConnector = HttpsConnector<HttpConnector>;

fn https_connector(
    tls: ClientConfig,
    server_name: Option<ServerName<'static>>,
    connect_timeout: Option<Duration>,
) -> UpstreamConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(connect_timeout);
    let resolver: Arc<dyn ResolveServerName + Send + Sync> = match server_name {
        Some(name) => Arc::new(FixedServerNameResolver::new(name)),
        None => Arc::new(DefaultServerNameResolver::default()),
    };
    // Built directly rather than with HttpsConnectorBuilder, which insists on setting ALPN
    // itself (and sets none for HTTP/1.1 only): here the config carries `http/1.1`.
    HttpsConnector::new(http, tls, false, resolver)
}

type UpstreamClient = Client<UpstreamConnector, ClientBody>;

/// One TLS setting's pooled client and the connector it was built with (the proxy opens its
/// connection-affine upstream connections with the connector: see `proxy::upstream`).
#[derive(Clone)]
struct UpstreamTarget {
    pooled: UpstreamClient,
    connector: UpstreamConnector,
}

impl UpstreamTarget {
    fn new(connector: UpstreamConnector) -> Self {
        UpstreamTarget {
            pooled: pooled_client(connector.clone()),
            connector,
        }
    }
}

/// The proxy's upstream clients: one per distinct route TLS setting, chosen by route (not
/// by `host:port`), so two routes to one origin with different settings (a private CA and the
/// platform roots, different client certificates) each get connections made with their own.
/// Requests to `http://` upstreams and to `https://` upstreams without TLS settings share the
/// default client (index 0).
pub struct UpstreamClients {
    targets: Box<[UpstreamTarget]>,
    of_route: Box<[usize]>,
}

impl UpstreamClients {
    pub fn build(routes: &[RouteConfig], connect_timeout: Duration) -> anyhow::Result<Self> {
        let https = |r: &RouteConfig| r.upstream.scheme() == Some(&Scheme::HTTPS);
        // The platform store is read only when an https route relies on it.
        let default_roots = if routes.iter().any(|r| https(r) && r.tls.ca_file.is_none()) {
            platform_roots()
        } else {
            RootCertStore::empty()
        };
        let mut targets = vec![UpstreamTarget::new(https_connector(
            client_config(default_roots.clone(), None)
                .map_err(|e| anyhow::anyhow!("building the upstream TLS client: {e}"))?,
            None,
            Some(connect_timeout),
        ))];
        let mut by_setting: HashMap<&UpstreamTls, usize> = HashMap::new();
        let mut of_route = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            if !https(r) || r.tls == UpstreamTls::default() {
                of_route.push(0);
                continue;
            }
            let t = match by_setting.get(&r.tls) {
                Some(&t) => t,
                None => {
                    targets.push(upstream_client(i, &r.tls, &default_roots, connect_timeout)?);
                    by_setting.insert(&r.tls, targets.len() - 1);
                    targets.len() - 1
                }
            };
            of_route.push(t);
        }
        Ok(UpstreamClients {
            targets: targets.into_boxed_slice(),
            of_route: of_route.into_boxed_slice(),
        })
    }

    /// Sends `req` (absolute URI) with the pooled client of route `route`'s TLS setting.
    pub fn request(&self, route: usize, req: Request<ClientBody>) -> ResponseFuture {
        self.targets[self.of_route[route]].pooled.request(req)
    }

    /// Which TLS setting route `route` uses (routes with equal settings share one).
    pub fn setting_of(&self, route: usize) -> usize {
        self.of_route[route]
    }

    /// The connector of route `route`'s TLS setting.
    pub fn connector(&self, route: usize) -> &UpstreamConnector {
        &self.targets[self.of_route[route]].connector
    }
}

fn upstream_client(
    i: usize,
    tls: &UpstreamTls,
    default_roots: &RootCertStore,
    connect_timeout: Duration,
) -> Result<UpstreamTarget, ConfigError> {
    let key = |k: &str| format!("routes[{i}].{k}");
    let roots = match &tls.ca_file {
        Some(path) => load_roots(&key("ca_file"), path)?,
        None => default_roots.clone(),
    };
    let client_auth = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(k)) => Some(load_cert_and_key(
            &key("client_cert"),
            cert,
            &key("client_key"),
            k,
        )?),
        (None, None) => None,
        _ => return Err(invalid(&key("client_key"), "needed with client_cert")),
    };
    let config = client_config(roots, client_auth).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => invalid(
            &key("client_key"),
            format!(
                "{:?} is not the key of the certificate in {:?}",
                tls.client_key.as_deref().unwrap_or(Path::new("")).display(),
                tls.client_cert
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
            ),
        ),
        other => invalid(&key("client_key"), other.to_string()),
    })?;
    let server_name = match &tls.server_name {
        None => None,
        Some(n) => Some(
            ServerName::try_from(n.clone())
                .map_err(|_| invalid(&key("tls_server_name"), format!("invalid name {n:?}")))?,
        ),
    };
    Ok(UpstreamTarget::new(https_connector(
        config,
        server_name,
        Some(connect_timeout),
    )))
}

// === certificate subjects ===

/// The subject of a DER certificate as an RFC 4514 string (`CN=ops,O=Example`), or `None`
/// if the certificate cannot be read. Control characters are escaped, so the result is safe
/// in a log line.
pub fn subject_of(cert_der: &[u8]) -> Option<String> {
    let (0x30, cert, _) = der_tlv(cert_der)? else {
        return None;
    };
    let (0x30, tbs, _) = der_tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    if let Some((0xa0, _, after)) = der_tlv(rest) {
        rest = after; // [0] version
    }
    // serialNumber, signature, issuer, validity
    for _ in 0..4 {
        rest = der_tlv(rest)?.2;
    }
    let (0x30, subject, _) = der_tlv(rest)? else {
        return None;
    };
    format_name(subject)
}

/// One DER element at the start of `input`: (tag, content, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A Name (the content of its SEQUENCE) in RFC 4514 form: RDNs last to first.
fn format_name(name: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let (0x31, set, after) = der_tlv(rest)? else {
            return None;
        };
        rest = after;
        let mut parts = Vec::new();
        let mut s = set;
        while !s.is_empty() {
            let (0x30, atv, after) = der_tlv(s)? else {
                return None;
            };
            s = after;
            let (0x06, oid, value) = der_tlv(atv)? else {
                return None;
            };
            let (vtag, content, _) = der_tlv(value)?;
            parts.push(format!(
                "{}={}",
                attribute_name(oid)?,
                attribute_value(vtag, content, value)
            ));
        }
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

fn attribute_name(oid: &[u8]) -> Option<String> {
    let short = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ => return dotted_oid(oid),
    };
    Some(short.to_string())
}

fn dotted_oid(oid: &[u8]) -> Option<String> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut v: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        if v > (u64::MAX >> 7) {
            return None;
        }
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let (a, b) = match v {
                    0..=39 => (0, v),
                    40..=79 => (1, v - 40),
                    _ => (2, v - 80),
                };
                arcs.extend([a, b]);
            } else {
                arcs.push(v);
            }
            v = 0;
        } else if i + 1 == oid.len() {
            return None;
        }
    }
    if arcs.is_empty() {
        return None;
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// A string value escaped per RFC 4514 (and control characters as `\XX`); any other type
/// as `#` and the hex of its DER encoding.
fn attribute_value(tag: u8, content: &[u8], encoded: &[u8]) -> String {
    let text: Option<String> = match tag {
        // UTF8String, PrintableString, IA5String, NumericString, VisibleString
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => std::str::from_utf8(content).ok().map(str::to_string),
        // TeletexString, read as Latin-1
        0x14 => Some(content.iter().map(|&b| char::from(b)).collect()),
        // BMPString (UTF-16BE)
        0x1e if content.len() % 2 == 0 => {
            let units = content
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    };
    let Some(text) = text else {
        let len = der_tlv(encoded).map_or(encoded.len(), |(_, _, rest)| encoded.len() - rest.len());
        return std::iter::once("#".to_string())
            .chain(encoded[..len].iter().map(|b| format!("{b:02x}")))
            .collect();
    };
    let last = text.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert_with(dn: DistinguishedName) -> Vec<u8> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn subject_in_rfc4514_order_with_escapes() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "DE");
        dn.push(DnType::OrganizationName, "Example, Inc.");
        dn.push(DnType::CommonName, "ops-admin");
        let s = subject_of(&cert_with(dn)).unwrap();
        assert_eq!(s, "CN=ops-admin,O=Example\\, Inc.,C=DE");
    }

    #[test]
    fn subject_escapes_control_characters_and_names_unknown_oids() {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "evil\nline");
        dn.push(
            DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            "a@b.example",
        );
        let s = subject_of(&cert_with(dn)).unwrap();
        assert_eq!(s, "1.2.840.113549.1.9.1=a@b.example,CN=evil\\0Aline");
        assert!(!s.contains('\n'));
    }

    #[test]
    fn subject_of_garbage_is_none() {
        assert_eq!(subject_of(b""), None);
        assert_eq!(subject_of(&[0x30, 0x82, 0xff]), None);
        assert_eq!(subject_of(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
    }

    #[test]
    fn dotted_oids() {
        assert_eq!(dotted_oid(&[0x55, 0x04, 0x03]).unwrap(), "2.5.4.3");
        assert_eq!(
            dotted_oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]).unwrap(),
            "1.2.840.113549.1.9.1"
        );
        assert_eq!(dotted_oid(&[0x86]), None);
    }

    fn write(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    fn self_signed(name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn load_errors_name_the_key_and_file_but_not_the_key_material() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("a.example");
        let (_, other_key) = self_signed("b.example");
        let cert_p = write(dir.path(), "c.pem", &cert);
        let key_p = write(dir.path(), "k.pem", &key);
        let files = |cert: &Path, key: &Path| ServerTlsConfig {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: None,
        };
        ServerTls::load("proxy.tls", &files(&cert_p, &key_p)).unwrap();

        let missing = dir.path().join("x.pem");
        let e = ServerTls::load("proxy.tls", &files(&missing, &key_p)).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "proxy.tls.cert: cannot read {:?}:",
                missing.display()
            )),
            "{e}"
        );
        let e = ServerTls::load("admin.tls", &files(&key_p, &key_p)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("admin.tls.cert: no PEM certificate"),
            "{e}"
        );
        let e = ServerTls::load("admin.tls", &files(&cert_p, &cert_p)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("admin.tls.key: no PEM private key"),
            "{e}"
        );
        let wrong = write(dir.path(), "wrong.pem", &other_key);
        let e = ServerTls::load("proxy.tls", &files(&cert_p, &wrong)).unwrap_err();
        assert!(e.to_string().starts_with("proxy.tls.key:"), "{e}");
        assert!(
            e.to_string().contains("is not the key of the certificate"),
            "{e}"
        );
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n",
        );
        let e = ServerTls::load("proxy.tls", &files(&cert_p, &broken)).unwrap_err();
        assert!(e.to_string().starts_with("proxy.tls.key: malformed"), "{e}");
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    }

    #[test]
    fn reload_swaps_only_on_change_and_keeps_the_old_config_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("a.example");
        let cert_p = write(dir.path(), "c.pem", &cert);
        let key_p = write(dir.path(), "k.pem", &key);
        let files = ServerTlsConfig {
            cert: cert_p.clone(),
            key: key_p.clone(),
            client_ca: None,
        };
        let tls = ServerTls::load("proxy.tls", &files).unwrap();
        assert_eq!(tls.reload(false).unwrap(), Reloaded::Unchanged);
        assert_eq!(tls.reload(true).unwrap(), Reloaded::Swapped);
        let before = Arc::as_ptr(&tls.current.read().unwrap());
        std::fs::write(&cert_p, "not a certificate").unwrap();
        assert!(tls.reload(false).is_err());
        assert_eq!(Arc::as_ptr(&tls.current.read().unwrap()), before);
        // A broken file is reported once, not on every poll.
        assert_eq!(tls.reload(false).unwrap(), Reloaded::Unchanged);
        let (cert2, key2) = self_signed("b.example");
        std::fs::write(&cert_p, cert2).unwrap();
        std::fs::write(&key_p, key2).unwrap();
        assert_eq!(tls.reload(false).unwrap(), Reloaded::Swapped);
        assert_ne!(Arc::as_ptr(&tls.current.read().unwrap()), before);
    }
}
