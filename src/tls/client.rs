//! Clients of `https://` upstreams and of a TLS admin listener.

use super::*;
use crate::body::ClientBody;
use crate::config::{RouteConfig, UpstreamTls};

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
        let https = |r: &RouteConfig| {
            r.upstream
                .as_ref()
                .is_some_and(|u| u.scheme() == Some(&Scheme::HTTPS))
        };
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
