//! A webhook receiver for the tests: HTTPS on an ephemeral loopback port with a certificate
//! from a CA made here, recording every delivery it gets and answering each with the next
//! scripted status (204 once the script is empty). Signatures are checked by the Python
//! `standardwebhooks` package ([`verify_with_standardwebhooks`]), an implementation
//! independent of the gateway's.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::Value;
use tokio::net::TcpListener;

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub body: String,
    /// The status this receiver answered.
    pub answered: u16,
}

impl Delivery {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_string()
    }
}

#[derive(Default)]
struct State {
    got: Vec<Delivery>,
    script: VecDeque<u16>,
    /// Answer every delivery with this status while set (after the script).
    always: Option<u16>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    /// The CA that signed the receiver's certificate (PEM), for `ca_file`.
    pub ca_file: PathBuf,
    state: Arc<Mutex<State>>,
    changed: Arc<tokio::sync::Notify>,
    _dir: tempfile::TempDir,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Webhook Test Root");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let ca_file = dir.path().join("hooks-ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(tokengate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Arc<Mutex<State>> = Arc::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let (st, ch) = (state.clone(), changed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, st, ch) = (acceptor.clone(), st.clone(), ch.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (st, ch) = (st.clone(), ch.clone());
                        async move {
                            let h = |k: &str| {
                                req.headers()
                                    .get(k)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or_default()
                                    .to_string()
                            };
                            let (id, timestamp, signature, content_type) = (
                                h("webhook-id"),
                                h("webhook-timestamp"),
                                h("webhook-signature"),
                                h("content-type"),
                            );
                            let body = req.into_body().collect().await?.to_bytes();
                            let answered = {
                                let mut s = st.lock().unwrap();
                                let status = s.script.pop_front().or(s.always).unwrap_or(204);
                                s.got.push(Delivery {
                                    id,
                                    timestamp,
                                    signature,
                                    content_type,
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                    answered: status,
                                });
                                status
                            };
                            ch.notify_waiters();
                            let mut resp = Response::new(Full::new(Bytes::new()));
                            *resp.status_mut() = StatusCode::from_u16(answered).unwrap();
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Receiver {
            addr,
            ca_file,
            state,
            changed,
            _dir: dir,
        }
    }

    /// The endpoint URL (its path stands for a secret that must never be shown).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/hooks/p4th-s3cret", self.addr.port())
    }

    /// Answers the next deliveries with `statuses`, in order.
    pub fn script(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script.extend(statuses);
    }

    /// Answers every delivery with `status` (after the script), or 204 again with `None`.
    pub fn always(&self, status: Option<u16>) {
        self.state.lock().unwrap().always = status;
    }

    pub fn got(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().got.clone()
    }

    /// The deliveries answered 2xx.
    pub fn delivered(&self) -> Vec<Delivery> {
        self.got()
            .into_iter()
            .filter(|d| (200..300).contains(&d.answered))
            .collect()
    }

    /// Waits (up to `deadline`) until `pred` holds for what was received.
    pub async fn until(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.changed.notified();
            let got = self.got();
            if pred(&got) {
                return got;
            }
            if tokio::time::timeout_at(end, notified).await.is_err() {
                let got = self.got();
                if pred(&got) {
                    return got;
                }
                let types: Vec<String> = got.iter().map(|d| d.event_type()).collect();
                panic!(
                    "{what}: not within {deadline:?}; received {} deliveries: {types:?}",
                    got.len()
                );
            }
        }
    }
}

/// The whole `whsec_...` text of a secret file.
pub fn secret_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// Checks every delivery's signature with the Python `standardwebhooks` package: `verify()`
/// for a timestamp within its 5-minute tolerance of now, otherwise (a test clock far from the
/// real one) `sign()` compared with the header. Also checks that a changed body fails, so the
/// check is not vacuous. Returns `None` after [`super::skip`] when Python or the package is
/// missing, else the number verified.
#[track_caller]
pub fn verify_with_standardwebhooks(test: &str, secret: &str, got: &[Delivery]) -> Option<usize> {
    const SCRIPT: &str = r#"
import json, sys, time
from datetime import datetime, timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
data = json.load(open(sys.argv[1]))
wh = Webhook(data["secret"])
ok = 0
for m in data["messages"]:
    headers = {"webhook-id": m["id"], "webhook-timestamp": m["timestamp"], "webhook-signature": m["signature"]}
    ts = int(m["timestamp"])
    if abs(time.time() - ts) < 240:
        wh.verify(m["body"], headers)
    else:
        want = wh.sign(m["id"], datetime.fromtimestamp(ts, tz=timezone.utc), m["body"])
        assert want == m["signature"], (want, m["signature"])
    try:
        wh.verify(m["body"] + " ", dict(headers, **{"webhook-timestamp": str(int(time.time()))}))
        raise SystemExit("a changed body verified")
    except WebhookVerificationError:
        pass
    ok += 1
print(ok)
"#;
    let probe = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            super::skip(
                "standardwebhooks",
                test,
                &format!(
                    "the Python package standardwebhooks is not installed (pip install standardwebhooks): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            );
            return None;
        }
        Err(e) => {
            super::skip(
                "standardwebhooks",
                test,
                &format!("python3 cannot run: {e}"),
            );
            return None;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("messages.json");
    let messages: Vec<Value> = got
        .iter()
        .map(|d| {
            serde_json::json!({"id": d.id, "timestamp": d.timestamp, "signature": d.signature, "body": d.body})
        })
        .collect();
    std::fs::write(
        &input,
        serde_json::json!({"secret": secret, "messages": messages}).to_string(),
    )
    .unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT, input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "standardwebhooks refused a delivery: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let n: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(n, got.len());
    Some(n)
}
