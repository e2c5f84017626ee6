//! TLS with rustls (ring provider, TLS 1.2 and 1.3 only): the listeners' certificates with
//! reload, clients of `https://` upstreams and of a TLS admin listener, and the subject of a
//! client certificate (the audit actor on an admin listener with `client_ca`).
//!
//! - [`ServerTls`] holds a listener's current `ServerConfig`; each accepted connection takes
//!   the one current at its handshake, so swapping it (a reload) changes the certificate for
//!   new connections while live ones keep theirs. A reload that fails (a missing file, a key
//!   that does not match) keeps the current configuration and logs why.
//! - [`Reloader`] polls the files' contents every few seconds and reloads on SIGHUP.
//! - [`UpstreamClients`] (`client.rs`): per distinct route TLS setting (routes without TLS
//!   settings share one), a connector and a pooled hyper client built on it, chosen by route.
//!   `proxy::upstream` opens its connection-affine connections with the connector and uses
//!   the pooled client for HTTP/2 clients and upgrades.
//! - [`subject_of`] (`subject.rs`): a client certificate's subject, read with `x509-parser`.
//!
//! This file: the PEM files and the crypto provider every context shares; `server.rs`: the
//! listeners' configs and their reload.
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

use crate::config::ConfigError;

mod client;
mod server;
mod subject;

pub use client::{client_config, https_client, UpstreamClients, UpstreamConnector};
pub use server::{log_reload, ClientCertSubject, Reloaded, Reloader, ServerTls};
pub use subject::subject_of;

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
