//! The peer's identity key (see `p2p_proto::identity`): 32 secret bytes, as 64 hex digits
//! in `identity.key` in the platform's data folder for p2p (`~/.local/share/p2p/` on Linux,
//! under `$XDG_DATA_HOME` when set), or the file `P2P_IDENTITY` names. Created on first use
//! with permissions 0600; every peer of the user shares it, so that each name one of them
//! registers is bound to the user's key at the tracker.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use p2p_proto::identity::{fingerprint, Identity};

/// The variable naming another identity file.
pub(crate) const IDENTITY_ENV: &str = "P2P_IDENTITY";

/// Where the identity file is: `P2P_IDENTITY`, else `identity.key` in the data folder.
pub(crate) fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(IDENTITY_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    directories::ProjectDirs::from("", "", "p2p").map(|d| d.data_dir().join("identity.key"))
}

/// The user's identity: read from its file, or made and saved there on first use. `None`
/// (with a warning) when there is no data folder to keep it in: the peer then registers
/// unsigned, as before identities existed.
pub(crate) fn load_or_create() -> Result<Option<Identity>> {
    let Some(path) = path() else {
        eprintln!("warning: no data folder to keep an identity key in; registering without one");
        return Ok(None);
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).map(Some).with_context(|| {
            format!(
                "{} is not an identity key file (64 hex digits); move it away to make a new key",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path).map(Some),
        Err(e) => {
            Err(e).with_context(|| format!("cannot read the identity key {}", path.display()))
        }
    }
}

/// Where the identity file is and, if it exists and reads as one, its key's fingerprint
/// (for `p2p config`; nothing is made).
pub(crate) fn describe() -> (Option<PathBuf>, Option<String>) {
    let path = path();
    let key = path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| parse(&text).ok())
        .map(|id| fingerprint(&id.public()));
    (path, key)
}

/// A key file's text: 64 hex digits (and a newline).
fn parse(text: &str) -> Result<Identity> {
    let hex = text.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("expected 64 hex digits");
    }
    let mut secret = [0u8; 32];
    for (i, byte) in secret.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)?;
    }
    Ok(Identity::from_secret(secret))
}

/// Makes a key and saves it at `path` (0600, never over an existing file).
fn create(path: &Path) -> Result<Identity> {
    let secret: [u8; 32] = rand::random();
    let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the folder {} for the identity key",
                dir.display()
            )
        })?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(f) => f,
        // Another process made it first: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path)?;
            return parse(&text);
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot create the identity key {}", path.display()))
        }
    };
    file.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the identity key {}", path.display()))?;
    let id = Identity::from_secret(secret);
    eprintln!(
        "made an identity key for this user ({}) in {}: the names you register are bound to it",
        fingerprint(&id.public()),
        path.display()
    );
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key is made once, private to its owner, and read back the same.
    #[test]
    fn a_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("identity.key");
        let made = create(&path).unwrap();
        let read = parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(made.public(), read.public());
        assert_eq!(
            create(&path).unwrap().public(),
            made.public(),
            "not made twice"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(parse("not hex").is_err());
        assert!(parse(&"ab".repeat(31)).is_err());
    }
}
