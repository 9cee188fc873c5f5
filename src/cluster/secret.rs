//! Cluster secrets: what peers key their sealed links with. A node holds a list: it dials
//! with the first and accepts any, so that a secret is replaced by rolling restarts (or a
//! reload) without a moment in which two nodes cannot talk.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use base64::Engine;

/// The least estimated strength a secret must have (unless the operator insists).
pub const MIN_BITS: f64 = 128.0;

/// A new secret: 32 random bytes, base64url without padding (43 characters).
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Reads the secrets from `path`: one per line, the first the one to dial with; blank lines
/// and lines starting with `#` are skipped, and trailing whitespace is not part of a
/// secret. The file must not be readable by group or others: whoever reads it can join the
/// cluster.
pub fn load_secrets(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let shown = path.display();
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the cluster secret file {shown}"))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "the cluster secret file {shown} is readable by group or others: \
             run `chmod 600 {shown}`"
        );
    }
    let content = std::fs::read(path)
        .with_context(|| format!("cannot read the cluster secret file {shown}"))?;
    let secrets: Vec<Vec<u8>> = content
        .split(|b| *b == b'\n')
        .map(|line| line.trim_ascii_end())
        .filter(|line| !line.trim_ascii_start().is_empty() && !line.starts_with(b"#"))
        .map(<[u8]>::to_vec)
        .collect();
    if secrets.is_empty() {
        bail!("the cluster secret file {shown} holds no secret");
    }
    Ok(secrets)
}

/// The secret given in an environment variable (kept as is: the value is what the operator
/// typed).
pub fn secret_from_env(value: &str) -> anyhow::Result<Vec<u8>> {
    if value.is_empty() {
        bail!("the cluster secret given in the environment is empty");
    }
    Ok(value.as_bytes().to_vec())
}

/// A rough strength estimate in bits: the length times the bits of the character classes
/// it draws from (lowercase, uppercase, digits, other printable, other bytes). It catches
/// typed words and short strings; it cannot tell a random string from a pattern, so a
/// secret with fewer than 8 distinct characters counts as 0.
pub fn estimated_bits(secret: &[u8]) -> f64 {
    let mut distinct = [false; 256];
    let mut pool = 0u32;
    let mut classes = [false; 5];
    for &b in secret {
        distinct[b as usize] = true;
        let class = match b {
            b'a'..=b'z' => 0,
            b'A'..=b'Z' => 1,
            b'0'..=b'9' => 2,
            0x20..=0x7e => 3,
            _ => 4,
        };
        if !classes[class] {
            classes[class] = true;
            pool += [26, 26, 10, 33, 161][class];
        }
    }
    if distinct.iter().filter(|d| **d).count() < 8 {
        return 0.0;
    }
    secret.len() as f64 * f64::from(pool).log2()
}

/// Refuses a secret estimated below `MIN_BITS`, naming where it came from.
pub fn check_strength(secret: &[u8], source: &str) -> anyhow::Result<()> {
    let bits = estimated_bits(secret);
    if bits < MIN_BITS {
        bail!(
            "the cluster secret from {source} is too weak (about {bits:.0} bits, {MIN_BITS:.0} \
             needed): generate one with `nexus cluster secret`, or pass --insecure-cluster"
        );
    }
    Ok(())
}

/// The secrets of `path`, each checked for strength: a weak one is refused, or (when the
/// operator insists with `insecure`) only logged.
pub fn load_checked(path: &Path, insecure: bool) -> anyhow::Result<Vec<Vec<u8>>> {
    let secrets = load_secrets(path)?;
    let source = format!("the file {}", path.display());
    for s in &secrets {
        checked(s, &source, insecure)?;
    }
    Ok(secrets)
}

/// `check_strength`, only logged when the operator insists.
pub fn checked(secret: &[u8], source: &str, insecure: bool) -> anyhow::Result<()> {
    match check_strength(secret, source) {
        Err(e) if insecure => {
            tracing::warn!("{e:#} (allowed by --insecure-cluster)");
            Ok(())
        }
        other => other,
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
    fn one_secret_per_line_first_to_dial_with() {
        let file = secret_file(b"# rotated 2026-12\n  new value\r\n\n old\n", 0o600);
        assert_eq!(
            load_secrets(file.path()).unwrap(),
            [b"  new value".to_vec(), b" old".to_vec()]
        );
    }

    #[test]
    fn refuses_a_file_without_a_secret() {
        let file = secret_file(b" \n# only a comment\n", 0o600);
        let err = load_secrets(file.path()).unwrap_err().to_string();
        assert!(err.contains("holds no secret"), "{err}");
    }

    #[test]
    fn refuses_group_or_world_readable_file() {
        for mode in [0o640, 0o604, 0o660] {
            let file = secret_file(b"secret", mode);
            let err = load_secrets(file.path()).unwrap_err().to_string();
            let chmod = format!("chmod 600 {}", file.path().display());
            assert!(err.contains(&chmod), "{err}");
        }
    }

    #[test]
    fn missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_secrets(&dir.path().join("nope")).is_err());
    }

    #[test]
    fn env_secret_must_not_be_empty() {
        assert!(secret_from_env("").is_err());
        assert_eq!(secret_from_env("abc").unwrap(), b"abc");
    }

    #[test]
    fn generated_secrets_are_strong_and_typed_ones_are_not() {
        let a = generate();
        assert_eq!(a.len(), 43);
        assert_ne!(a, generate());
        assert!(check_strength(a.as_bytes(), "test").is_ok());
        // 128 random bits in hex pass; phrases, short strings and repeats do not.
        assert!(check_strength(b"9f86d081884c7d659a2feaa0c55ad015", "test").is_ok());
        for weak in [
            "long random string",
            "right-secret",
            "s3cret",
            &"ab".repeat(40),
        ] {
            let err = check_strength(weak.as_bytes(), "the file f").unwrap_err();
            assert!(err.to_string().contains("the file f is too weak"), "{err}");
        }
    }
}
