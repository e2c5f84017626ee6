//! The listeners' TLS: certificates held behind a lock, swapped on reload (SIGHUP or a file change).

use super::*;
use crate::config::ServerTlsConfig;

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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

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
