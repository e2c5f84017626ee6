//! TLS to PostgreSQL: libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` parameters of the
//! store URL, honoured with rustls.
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `require` | yes | no (with `sslrootcert`: as `verify-ca`, as libpq does) |
//! | `verify-ca` | yes | chain to `sslrootcert` (or the platform roots) |
//! | `verify-full` | yes | chain, and the host name or IP the URL connects to |
//!
//! **The default is not libpq's.** libpq's `prefer` falls back to plaintext without a word
//! when the server offers no TLS, so a network attacker downgrades it by answering "no".
//! tokengate refuses `prefer` and `allow` outright. Without `sslmode`, a URL whose hosts are
//! all loopback addresses or Unix sockets means `disable`: nothing leaves the machine. Any
//! other host means `verify-full`, so a gateway pointed at a remote server either has a
//! verified encrypted connection or does not start; plaintext to a remote server has to be
//! asked for with `sslmode=disable`.
//!
//! `sslcert` + `sslkey` present a client certificate (for `pg_hba.conf`'s `cert` method, or
//! `clientcert=verify-full`). The parameters are removed from the URL before tokio-postgres
//! reads the rest (it knows only `disable`, `prefer` and `require`).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres::config::{Host, SslMode as DriverMode};

use crate::tls;

/// How the connection to PostgreSQL is protected (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "prefer" | "allow" => {
                return Err(format!(
                    "sslmode={value} falls back to plaintext without a word; use disable, \
                     require, verify-ca or verify-full"
                ))
            }
            _ => {
                return Err(format!(
                    "sslmode must be disable, require, verify-ca or verify-full, not {value:?}"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A store URL split into what tokio-postgres reads and the TLS settings.
#[derive(Debug)]
pub struct PgUrl {
    /// The driver's configuration (the URL without the TLS parameters), its `ssl_mode` set.
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    root_cert: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
}

impl PgUrl {
    /// Parses `url`. Errors name the parameter at fault, never the URL (it may hold a password).
    pub fn parse(url: &str) -> Result<PgUrl, String> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let (mut mode, mut root_cert, mut cert, mut key) = (None, None, None, None);
        let mut rest: Vec<&str> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let value = || {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8()
                    .map(|v| v.into_owned())
                    .map_err(|_| format!("{k} is not valid UTF-8 once decoded"))
            };
            match k {
                "sslmode" => mode = Some(SslMode::parse(&value()?)?),
                "sslrootcert" => root_cert = Some(PathBuf::from(value()?)),
                "sslcert" => cert = Some(PathBuf::from(value()?)),
                "sslkey" => key = Some(PathBuf::from(value()?)),
                _ => rest.push(pair),
            }
        }
        let driver_url = if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        };
        let mut config: tokio_postgres::Config = driver_url
            .parse()
            .map_err(|e| format!("not a valid PostgreSQL URL ({e})"))?;
        let client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("sslcert and sslkey go together".into()),
        };
        let mode = mode.unwrap_or_else(|| {
            if config.get_hosts().iter().all(stays_on_this_machine) {
                SslMode::Disable
            } else {
                SslMode::VerifyFull
            }
        });
        if mode == SslMode::Disable && (root_cert.is_some() || client_cert.is_some()) {
            return Err(
                "sslrootcert, sslcert and sslkey need an sslmode other than disable".into(),
            );
        }
        config.ssl_mode(if mode == SslMode::Disable {
            DriverMode::Disable
        } else {
            DriverMode::Require
        });
        Ok(PgUrl {
            config,
            mode,
            root_cert,
            client_cert,
        })
    }

    /// The connector of every connection to this server: its rustls configuration read from
    /// the certificate files now (errors name the parameter and the file). With `disable`
    /// it is never used.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        let key = |what: &str| format!("store.url {what}");
        let roots = || -> Result<RootCertStore, String> {
            match &self.root_cert {
                Some(path) => tls::load_roots(&key("sslrootcert"), path).map_err(|e| e.to_string()),
                None => Ok(tls::platform_roots()),
            }
        };
        let builder = ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let effective = match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (m, _) => m,
        };
        let builder = match effective {
            SslMode::Disable | SslMode::VerifyFull => builder.with_root_certificates(roots()?),
            SslMode::VerifyCa => {
                let inner = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots()?),
                    tls::provider(),
                )
                .build()
                .map_err(|e| format!("{}: {e}", key("sslrootcert")))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Lenient { chain: Some(inner) }))
            }
            SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient { chain: None })),
        };
        let config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, private)) => {
                let (chain, private) =
                    tls::load_cert_and_key(&key("sslcert"), cert, &key("sslkey"), private)
                        .map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| format!("{}: {e}", key("sslcert")))?
            }
        };
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

/// A loopback address, `localhost`, or a Unix socket.
fn stays_on_this_machine(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            let name = name.trim_start_matches('[').trim_end_matches(']');
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// The server-certificate check of `verify-ca` (`chain`: it must lead to a trusted root, the
/// name in it is not checked) and of `require` without `sslrootcert` (no chain: not checked,
/// libpq's meaning). Either way the handshake's signatures are verified, so the peer holds the
/// key of the certificate it sent.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &tls::provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &tls::provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(url: &str) -> Result<PgUrl, String> {
        PgUrl::parse(url)
    }

    #[test]
    fn the_default_is_disable_on_this_machine_and_verify_full_elsewhere() {
        for local in [
            "postgres://u@127.0.0.1/db",
            "postgres://u@localhost:5433/db",
            "postgres://u@[::1]/db",
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db",
        ] {
            assert_eq!(parse(local).unwrap().mode, SslMode::Disable, "{local}");
        }
        for remote in ["postgres://u@db.example.com/db", "postgres://u@10.0.0.5/db"] {
            assert_eq!(parse(remote).unwrap().mode, SslMode::VerifyFull, "{remote}");
        }
        // One remote host among several is enough.
        let mixed = parse("postgres://u@127.0.0.1,db.example.com/db").unwrap();
        assert_eq!(mixed.mode, SslMode::VerifyFull);
    }

    #[test]
    fn the_tls_parameters_are_taken_out_and_the_rest_kept() {
        let u = parse(
            "postgres://u:p@db.example.com:6432/app?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem\
             &application_name=gw&options=-csearch_path%3Dtg",
        )
        .unwrap();
        assert_eq!(u.mode, SslMode::VerifyCa);
        assert_eq!(u.root_cert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(u.config.get_application_name(), Some("gw"));
        assert_eq!(u.config.get_options(), Some("-csearch_path=tg"));
        assert_eq!(u.config.get_ssl_mode(), DriverMode::Require);
        let d = parse("postgres://u@127.0.0.1/db?sslmode=disable").unwrap();
        assert_eq!(d.config.get_ssl_mode(), DriverMode::Disable);
    }

    #[test]
    fn modes_that_fall_back_to_plaintext_and_half_settings_are_refused() {
        for (url, why) in [
            (
                "postgres://u@h/db?sslmode=prefer",
                "falls back to plaintext",
            ),
            ("postgres://u@h/db?sslmode=allow", "falls back to plaintext"),
            (
                "postgres://u@h/db?sslmode=verify",
                "must be disable, require",
            ),
            ("postgres://u@h/db?sslcert=%2Fc.pem", "go together"),
            (
                "postgres://u@h/db?sslmode=disable&sslrootcert=x",
                "other than disable",
            ),
            ("postgres://u@h/db?nonsense=1", "not a valid PostgreSQL URL"),
        ] {
            let e = parse(url).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
        let e = parse("postgres://u:secret@h/db?sslmode=nope").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn a_missing_certificate_file_is_named() {
        let u =
            parse("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fnowhere%2Fca.pem").unwrap();
        let e = u.connector().err().expect("no such file");
        assert!(
            e.contains("sslrootcert") && e.contains("/nowhere/ca.pem"),
            "{e}"
        );
    }
}
