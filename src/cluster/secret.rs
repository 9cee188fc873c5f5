//! The cluster secret: the shared key peers prove they know before any frame is accepted.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context};

/// Reads the secret from `path`. Trailing whitespace (the editor's newline) is not part of
/// it. The file must not be readable by group or others: whoever reads it can join the
/// cluster.
pub fn load_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the cluster secret file {shown}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "the cluster secret file {shown} is readable by group or others: \
             run `chmod 600 {shown}`"
        );
    }
    let mut secret = std::fs::read(path)
        .with_context(|| format!("cannot read the cluster secret file {shown}"))?;
    trim_end(&mut secret);
    if secret.is_empty() {
        bail!("the cluster secret file {shown} is empty");
    }
    Ok(secret)
}

/// The secret given in an environment variable (kept as is: the value is what the operator
/// typed).
pub fn secret_from_env(value: &str) -> anyhow::Result<Vec<u8>> {
    if value.is_empty() {
        bail!("the cluster secret given in the environment is empty");
    }
    Ok(value.as_bytes().to_vec())
}

fn trim_end(bytes: &mut Vec<u8>) {
    while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
        bytes.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn secret_file(content: &[u8], mode: u32) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(content).unwrap();
        let perms = std::fs::Permissions::from_mode(mode);
        std::fs::set_permissions(file.path(), perms).unwrap();
        file
    }

    #[test]
    fn loads_and_trims_trailing_newline() {
        let file = secret_file(b"  s3cret value\n\r\n", 0o600);
        assert_eq!(load_secret(file.path()).unwrap(), b"  s3cret value");
    }

    #[test]
    fn refuses_empty_secret() {
        let file = secret_file(b" \n", 0o600);
        let err = load_secret(file.path()).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn refuses_group_or_world_readable_file() {
        for mode in [0o640, 0o604, 0o660] {
            let file = secret_file(b"secret", mode);
            let err = load_secret(file.path()).unwrap_err().to_string();
            let chmod = format!("chmod 600 {}", file.path().display());
            assert!(err.contains(&chmod), "{err}");
        }
    }

    #[test]
    fn missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_secret(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn env_secret_must_not_be_empty() {
        assert!(secret_from_env("").is_err());
        assert_eq!(secret_from_env("abc").unwrap(), b"abc");
    }
}
