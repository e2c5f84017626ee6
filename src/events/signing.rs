//! Standard Webhooks signatures: the `whsec_` secret file and `webhook-signature`.

use std::io::Write;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Bytes of a secret this gateway generates; one read from a file may hold 24 to 64.
const GENERATED_BYTES: usize = 32;
const MIN_BYTES: usize = 24;
const MAX_BYTES: usize = 64;
const PREFIX: &str = "whsec_";

/// A webhook signing key (the decoded part after `whsec_`). Never printed.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// How [`SigningKey::load_or_create`] found the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    File,
    Generated,
}

impl SigningKey {
    /// Parses `whsec_<base64>` (surrounding white space ignored).
    pub fn parse(text: &str) -> Result<SigningKey, String> {
        let b64 = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| format!("does not start with {PREFIX}"))?;
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| format!("the part after {PREFIX} is not base64"))?;
        if !(MIN_BYTES..=MAX_BYTES).contains(&bytes.len()) {
            return Err(format!(
                "holds {} bytes; a secret has {MIN_BYTES} to {MAX_BYTES}",
                bytes.len()
            ));
        }
        Ok(SigningKey(bytes))
    }

    /// Reads the key at `path`; when it is absent and `may_create`, writes a new random one
    /// there (mode 0600, never overwriting a file that appeared meanwhile).
    pub fn load_or_create(
        path: &Path,
        may_create: bool,
    ) -> Result<(SigningKey, KeyOrigin), String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = std::fs::metadata(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                        .permissions()
                        .mode();
                    if mode & 0o077 != 0 {
                        return Err(format!(
                            "{} is readable by group or others (mode {:o}): chmod 600 it",
                            path.display(),
                            mode & 0o777
                        ));
                    }
                }
                Ok((SigningKey::parse(&text)?, KeyOrigin::File))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
                let mut bytes = vec![0u8; GENERATED_BYTES];
                getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
                let text = format!("{PREFIX}{}\n", STANDARD.encode(&bytes));
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts
                    .open(path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                f.write_all(text.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok((SigningKey(bytes), KeyOrigin::Generated))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "{} does not exist; with a shared store every instance must sign with the same \
                 secret, so it is not generated: copy it from another instance, or create one \
                 (whsec_ followed by 24 to 64 random bytes in base64)",
                path.display()
            )),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The store's key of the endpoint at `url`: a hash of the URL keyed by this secret
    /// (32 hex digits), so the URL (whose path may be a secret) cannot be guessed from it.
    pub fn endpoint_key(&self, url: &str) -> String {
        let key = blake3::derive_key("tokengate 2026-12 webhook endpoint key", &self.0);
        blake3::keyed_hash(&key, url.as_bytes()).to_hex().as_str()[..32].to_string()
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (spec/standard-webhooks.md).
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn a_generated_secret_is_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/webhook.secret");
        assert!(SigningKey::load_or_create(&path, false)
            .unwrap_err()
            .contains("does not exist"));
        let (a, origin) = SigningKey::load_or_create(&path, true).unwrap();
        assert_eq!(origin, KeyOrigin::Generated);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("whsec_"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (b, origin) = SigningKey::load_or_create(&path, true).unwrap();
        assert_eq!(origin, KeyOrigin::File);
        assert_eq!(a.sign("m", 1, b"x"), b.sign("m", 1, b"x"));
        assert!(!format!("{a:?}").contains(&text[6..12]));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
            let err = SigningKey::load_or_create(&path, true).unwrap_err();
            assert!(err.contains("readable by group or others"), "{err}");
        }
    }

    #[test]
    fn malformed_secrets_are_refused() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
        ] {
            assert!(SigningKey::parse(bad).is_err(), "{bad}");
        }
    }
}
