//! The front end's local token: made on first start, kept 0600 in the state directory, shown by
//! `mythos token` and `mythos env`. Agents send it where they would send a provider key; the
//! real provider keys never leave the daemon.

use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the token in the state directory.
pub const TOKEN_FILE: &str = "http-token";
/// File name of the address the front end is bound to, written once it listens.
pub const ADDRESS_FILE: &str = "http-address";
/// Every token starts with this, so a leaked one is recognisable (and greppable).
pub const TOKEN_PREFIX: &str = "mythos-";

/// The token in `dir`, made (and saved, owner-only) if there is none or it is not one of ours.
pub fn load_or_create(dir: &Path) -> std::io::Result<String> {
    let path = dir.join(TOKEN_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        let t = text.trim();
        if is_well_formed(t) {
            return Ok(t.to_string());
        }
        tracing::warn!(file = %path.display(), "the HTTP token file is malformed: making a new token");
    }
    let token = generate()?;
    write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// A new token: 256 random bits from the operating system, hex.
pub fn generate() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut s = String::with_capacity(TOKEN_PREFIX.len() + 64);
    s.push_str(TOKEN_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

fn is_well_formed(t: &str) -> bool {
    t.strip_prefix(TOKEN_PREFIX)
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Write `bytes` to `path` readable by the owner alone, replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Compare a presented token with ours in time independent of where they differ.
pub fn matches(presented: &str, ours: &str) -> bool {
    let (a, b) = (presented.as_bytes(), ours.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        assert!(is_well_formed(&a), "{a}");
        assert_eq!(load_or_create(dir.path()).unwrap(), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join(TOKEN_FILE), "garbage").unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_ne!(a, b);
        assert!(matches(&b, &b.clone()));
        assert!(!matches(&a, &b));
        assert!(!matches("short", &b));
    }
}
