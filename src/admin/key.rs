//! The admin key: where it comes from, and how a presented key is checked.
//!
//! Source order (SPEC §4): env `TOKENGATE_ADMIN_KEY`, else `admin.key_file`; if neither exists
//! at first start, a key is generated and written atomically to the key file with mode 0600,
//! and only its path is logged. Only a blake3 hash of the key stays in memory, and presented
//! keys are compared through that hash, in constant time.

use std::io::Write;
use std::path::Path;

use crate::token;

/// Minimum admin key length, in characters.
pub(crate) const MIN_KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("the admin key from {0} is shorter than {MIN_KEY_LEN} characters")]
    TooShort(String),
    #[error("admin key file {0} is readable by group or others; chmod 600 it")]
    TooOpen(String),
    #[error("cannot read admin key file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("cannot write admin key file {0}: {1}")]
    Write(String, std::io::Error),
}

/// Where the key came from, for the start-up log line (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeySource {
    Env,
    File,
    Generated,
}

pub(crate) struct AdminKey {
    hash: blake3::Hash,
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(<redacted>)")
    }
}

impl AdminKey {
    pub(crate) fn from_plain(key: &str) -> AdminKey {
        AdminKey {
            hash: blake3::hash(key.as_bytes()),
        }
    }

    /// Constant-time: compares blake3 hashes (`blake3::Hash` equality is constant-time), so
    /// neither the key's length nor a shared prefix shows in the timing.
    pub(crate) fn verify(&self, presented: &[u8]) -> bool {
        blake3::hash(presented) == self.hash
    }

    /// Resolves the key as SPEC §4 says. `env_key` is `TOKENGATE_ADMIN_KEY` if set.
    pub(crate) fn load_or_create(
        env_key: Option<&str>,
        key_file: &Path,
    ) -> Result<(AdminKey, KeySource), KeyError> {
        if let Some(k) = env_key {
            check_len(k, "TOKENGATE_ADMIN_KEY")?;
            return Ok((AdminKey::from_plain(k), KeySource::Env));
        }
        match read_key_file(key_file)? {
            Some(k) => Ok((AdminKey::from_plain(&k), KeySource::File)),
            None => {
                let k = token::generate_admin_key();
                write_key_file(key_file, &k)?;
                Ok((AdminKey::from_plain(&k), KeySource::Generated))
            }
        }
    }
}

fn check_len(k: &str, source: &str) -> Result<(), KeyError> {
    if k.chars().count() < MIN_KEY_LEN {
        return Err(KeyError::TooShort(source.to_string()));
    }
    Ok(())
}

/// Reads the key file if it exists: `None` if it does not. The trailing newline is ignored;
/// a file readable by group or others is refused.
pub(crate) fn read_key_file(path: &Path) -> Result<Option<String>, KeyError> {
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(KeyError::Read(shown, e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(KeyError::TooOpen(shown));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let raw = std::fs::read_to_string(path).map_err(|e| KeyError::Read(shown.clone(), e))?;
    let k = raw.strip_suffix('\n').unwrap_or(&raw);
    let k = k.strip_suffix('\r').unwrap_or(k);
    check_len(k, &shown)?;
    Ok(Some(k.to_string()))
}

/// Writes a new key file atomically (temp file with mode 0600 in the same directory, then
/// rename), creating the directory with mode 0700 if needed.
fn write_key_file(path: &Path, key: &str) -> Result<(), KeyError> {
    let shown = path.display().to_string();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| KeyError::Write(shown.clone(), e))?;
        }
        #[cfg(not(unix))]
        std::fs::create_dir_all(dir).map_err(|e| KeyError::Write(shown.clone(), e))?;
    }
    // tempfile creates the file with mode 0600 on unix.
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| KeyError::Write(shown.clone(), e))?;
    tmp.write_all(key.as_bytes())
        .map_err(|e| KeyError::Write(shown.clone(), e))?;
    tmp.write_all(b"\n")
        .map_err(|e| KeyError::Write(shown.clone(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| KeyError::Write(shown.clone(), e))?;
    tmp.persist(path)
        .map_err(|e| KeyError::Write(shown, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_key_wins_and_must_be_long() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.key");
        let (k, src) = AdminKey::load_or_create(Some(&"k".repeat(32)), &file).unwrap();
        assert_eq!(src, KeySource::Env);
        assert!(k.verify("k".repeat(32).as_bytes()));
        assert!(!k.verify(b"kkkk"));
        assert!(!file.exists());
        assert!(matches!(
            AdminKey::load_or_create(Some("short"), &file),
            Err(KeyError::TooShort(_))
        ));
    }

    #[test]
    fn generates_a_private_file_once_then_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/admin.key");
        let (_, src) = AdminKey::load_or_create(None, &file).unwrap();
        assert_eq!(src, KeySource::Generated);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.ends_with('\n'));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (k, src) = AdminKey::load_or_create(None, &file).unwrap();
        assert_eq!(src, KeySource::File);
        assert!(k.verify(text.trim_end().as_bytes()));
    }

    #[cfg(unix)]
    #[test]
    fn refuses_open_or_short_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin.key");
        std::fs::write(&file, format!("{}\n", "x".repeat(40))).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            AdminKey::load_or_create(None, &file),
            Err(KeyError::TooOpen(_))
        ));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(AdminKey::load_or_create(None, &file).is_ok());
        std::fs::write(&file, "short\n").unwrap();
        assert!(matches!(
            AdminKey::load_or_create(None, &file),
            Err(KeyError::TooShort(_))
        ));
    }
}
