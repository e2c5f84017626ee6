//! Token vocabulary: secrets, their hashes, and validation of names and descriptions.
//!
//! This is the only module that sees a plaintext secret. A [`Secret`] is generated here, shown
//! once by the admin layer (create / regenerate) and then dropped; everything else handles the
//! [`SecretHash`] (blake3). [`parse_bearer`] checks the `tg_` format and checksum before any hash
//! is computed, so garbage costs O(1) and never reaches a lookup. Pure code: no IO, no logging.

use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// `0-9A-Za-z`: the base62 alphabet of secrets and their checksum.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const PREFIX: &str = "tg_";
const BODY_LEN: usize = 30;
const CRC_LEN: usize = 6;
/// Total length of a secret: `tg_` + 30 + 6.
pub const SECRET_LEN: usize = PREFIX.len() + BODY_LEN + CRC_LEN;

pub const NAME_MAX: usize = 32;
pub const DESCRIPTION_MAX: usize = 1024;

/// A plaintext secret. It has no `Display`, and its `Debug` is redacted, so it cannot end up
/// in a log line or an error message by accident; [`Secret::expose`] is the one way out.
pub struct Secret(String);

impl Secret {
    /// A fresh secret from the operating system's CSPRNG: 30 uniform base62 characters
    /// (≈ 178 bits) plus their CRC32 as 6 base62 characters.
    pub fn generate() -> Secret {
        let mut s = String::with_capacity(SECRET_LEN);
        s.push_str(PREFIX);
        let mut filled = 0;
        let mut buf = [0u8; 64];
        while filled < BODY_LEN {
            // If the OS RNG fails there is no safe way to continue: a predictable secret
            // would be worse than a crash.
            getrandom::fill(&mut buf).expect("the operating system's random source failed");
            for &b in &buf {
                // Rejection sampling: 248 = 4 × 62, so `b % 62` is uniform below it.
                if b < 248 && filled < BODY_LEN {
                    s.push(ALPHABET[usize::from(b % 62)] as char);
                    filled += 1;
                }
            }
        }
        let crc = crc32fast::hash(&s.as_bytes()[PREFIX.len()..]);
        push_base62_fixed(&mut s, crc);
        Secret(s)
    }

    /// The plaintext, for the one response that shows it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

fn push_base62_fixed(s: &mut String, mut v: u32) {
    let mut digits = [b'0'; CRC_LEN];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
    for d in digits {
        s.push(d as char);
    }
}

fn base62_value(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'A'..=b'Z' => Some(u32::from(b - b'A') + 10),
        b'a'..=b'z' => Some(u32::from(b - b'a') + 36),
        _ => None,
    }
}

/// Why a presented credential was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the token does not have the tg_ format")]
    Malformed,
    #[error("the token's checksum does not match")]
    BadChecksum,
}

/// The credentials of one `Authorization` value with the `Bearer` scheme (SPEC §2): the
/// scheme in any case, then one or more spaces or tabs, then the credentials (surrounding
/// white space ignored). `None` for another scheme, no separator, or nothing after it. The
/// one parser of both listeners (application tokens and the admin key).
pub fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at(value.len().min(6));
    if !scheme.eq_ignore_ascii_case(b"bearer")
        || !rest.first().is_some_and(|&b| b == b' ' || b == b'\t')
    {
        return None;
    }
    Some(rest.trim_ascii()).filter(|c| !c.is_empty())
}

/// Checks the format and checksum of a presented secret and hashes it. Costs O(1) for any
/// input: the length is checked first, so a huge header is refused without being read.
pub fn parse_bearer(token: &[u8]) -> Result<SecretHash, SecretError> {
    if token.len() != SECRET_LEN || !token.starts_with(PREFIX.as_bytes()) {
        return Err(SecretError::Malformed);
    }
    let body = &token[PREFIX.len()..PREFIX.len() + BODY_LEN];
    if !body.iter().all(|&b| base62_value(b).is_some()) {
        return Err(SecretError::Malformed);
    }
    let mut crc: u64 = 0;
    for &b in &token[PREFIX.len() + BODY_LEN..] {
        let v = base62_value(b).ok_or(SecretError::Malformed)?;
        crc = crc * 62 + u64::from(v);
    }
    if crc != u64::from(crc32fast::hash(body)) {
        return Err(SecretError::BadChecksum);
    }
    Ok(SecretHash::of(token))
}

/// blake3 of a secret: what the store and the in-memory index hold. Equality is constant-time
/// (it compares through `blake3::Hash`).
#[derive(Clone, Copy)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn of(secret: &[u8]) -> SecretHash {
        SecretHash(*blake3::hash(secret).as_bytes())
    }

    pub fn from_bytes(b: [u8; 32]) -> SecretHash {
        SecretHash(b)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 bytes: already a uniform hash, so it is the table hash as it is.
    pub fn prefix(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(b)
    }
}

impl PartialEq for SecretHash {
    fn eq(&self, other: &Self) -> bool {
        blake3::Hash::from_bytes(self.0) == blake3::Hash::from_bytes(other.0)
    }
}
impl Eq for SecretHash {}

impl Hash for SecretHash {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The value is already a uniform cryptographic hash: its first 8 bytes are as good a
        // table hash as any, and with `PrefixHasher` no second hash is computed.
        state.write_u64(self.prefix());
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not a secret, but a short prefix is all anyone debugging needs.
        write!(
            f,
            "SecretHash({:02x}{:02x}{:02x}{:02x}..)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A `Hasher` for keys that are already uniform hashes ([`SecretHash`]): it passes the
/// `u64` through instead of running SipHash over it.
#[derive(Default, Clone, Copy)]
pub struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only reached by key types other than SecretHash; fold so it stays a valid hasher.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

pub type BuildPrefixHasher = BuildHasherDefault<PrefixHasher>;

/// Keeps user input quoted in error messages short.
pub fn truncate_for_message(s: &str) -> String {
    if s.chars().count() <= 64 {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(64).collect();
        t.push('…');
        t
    }
}

/// Checks a token name: 1–32 of `A-Z a-z 0-9 -`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > NAME_MAX {
        return Err(format!("name must be 1 to {NAME_MAX} characters"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err("name may contain only letters A-Z a-z, digits and '-'".into());
    }
    Ok(())
}

/// Names a new token cannot take: the admin API's `/v1/tokens/activate` and
/// `/v1/tokens/deactivate` would shadow `/v1/tokens/{name}` for them.
pub const RESERVED_NAMES: [&str; 2] = ["activate", "deactivate"];

/// [`validate_name`], and not one of [`RESERVED_NAMES`] (ignoring case).
pub fn validate_new_name(name: &str) -> Result<(), String> {
    validate_name(name)?;
    if RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(format!(
            "{name:?} is reserved: /v1/tokens/{} is an API path",
            name.to_ascii_lowercase()
        ));
    }
    Ok(())
}

/// The case-folded form under which names are unique and looked up.
pub fn name_key(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// Checks a description: at most 1024 Unicode scalar values.
pub fn validate_description(d: &str) -> Result<(), String> {
    if d.chars().count() > DESCRIPTION_MAX {
        return Err(format!(
            "description must be at most {DESCRIPTION_MAX} characters"
        ));
    }
    Ok(())
}

/// A random admin key for first start: 48 base62 characters (≈ 285 bits).
pub fn generate_admin_key() -> String {
    let mut s = String::with_capacity(48);
    let mut buf = [0u8; 64];
    while s.len() < 48 {
        getrandom::fill(&mut buf).expect("the operating system's random source failed");
        for &b in &buf {
            if b < 248 && s.len() < 48 {
                s.push(ALPHABET[usize::from(b % 62)] as char);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_takes_spaces_or_tabs_in_any_case() {
        assert_eq!(bearer_credentials(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"bEaReR \t abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_credentials(b"Bearer\tabc"), Some(&b"abc"[..]));
        for refused in [
            &b"Bearer"[..],
            b"Bearer   ",
            b"Bearerabc",
            b"Basic abc",
            b"",
        ] {
            assert_eq!(bearer_credentials(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn generated_secrets_parse_and_differ() {
        let a = Secret::generate();
        let b = Secret::generate();
        assert_eq!(a.expose().len(), SECRET_LEN);
        assert!(a.expose().starts_with("tg_"));
        assert_ne!(a.expose(), b.expose());
        assert_eq!(parse_bearer(a.expose().as_bytes()), Ok(a.hash()));
        assert!(a.expose()[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn checksum_is_crc32_of_body_in_base62() {
        // Hand-computed: body of 30 '0's.
        let body = "0".repeat(30);
        let crc = crc32fast::hash(body.as_bytes());
        let mut s = format!("tg_{body}");
        push_base62_fixed(&mut s, crc);
        assert!(parse_bearer(s.as_bytes()).is_ok());
        let mut v: u64 = 0;
        for b in s[33..].bytes() {
            v = v * 62 + u64::from(base62_value(b).unwrap());
        }
        assert_eq!(v, u64::from(crc));
    }

    #[test]
    fn refuses_garbage_without_hashing() {
        let good = Secret::generate();
        let g = good.expose();
        assert_eq!(parse_bearer(b""), Err(SecretError::Malformed));
        assert_eq!(parse_bearer(b"tg_"), Err(SecretError::Malformed));
        assert_eq!(parse_bearer(&[b'a'; 10_000]), Err(SecretError::Malformed));
        let wrong_prefix = format!("xx_{}", &g[3..]);
        assert_eq!(
            parse_bearer(wrong_prefix.as_bytes()),
            Err(SecretError::Malformed)
        );
        let bad_char = format!("{}-{}", &g[..10], &g[11..]);
        assert_eq!(
            parse_bearer(bad_char.as_bytes()),
            Err(SecretError::Malformed)
        );
        // Flip one body character: checksum no longer matches.
        let mut bytes = g.as_bytes().to_vec();
        bytes[5] = if bytes[5] == b'a' { b'b' } else { b'a' };
        assert_eq!(parse_bearer(&bytes), Err(SecretError::BadChecksum));
        // A checksum digit out of range (base62 overflow beyond u32) still fails cleanly.
        let overflow = format!("{}zzzzzz", &g[..33]);
        assert!(parse_bearer(overflow.as_bytes()).is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::generate();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(&s.expose()[3..]));
    }

    #[test]
    fn hash_equality() {
        assert_eq!(SecretHash::of(b"x"), SecretHash::of(b"x"));
        assert_ne!(SecretHash::of(b"x"), SecretHash::of(b"y"));
    }

    #[test]
    fn names() {
        assert!(validate_name("Feed-A").is_ok());
        assert!(validate_name(&"a".repeat(32)).is_ok());
        assert!(validate_name(&"a".repeat(33)).is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("has space").is_err());
        assert!(validate_name("under_score").is_err());
        assert!(validate_name("é").is_err());
        assert_eq!(name_key("Feed-A"), "feed-a");
    }

    #[test]
    fn descriptions_count_scalar_values() {
        assert!(validate_description(&"é".repeat(1024)).is_ok());
        assert!(validate_description(&"é".repeat(1025)).is_err());
    }

    #[test]
    fn admin_keys_are_long_enough() {
        let k = generate_admin_key();
        assert_eq!(k.len(), 48);
        assert_ne!(k, generate_admin_key());
    }
}
