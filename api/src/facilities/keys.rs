//! X25519 key pairs as `furnace keygen` writes them: `NAME.key` holds the
//! private key and `NAME.pub` the public one, each as one line of standard
//! base64 (32 bytes, 44 characters). The public line is what goes into the
//! `furnace.dev/backend-key` annotation and `furnace backend --allow`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what}: {problem}")]
    Malformed { what: String, problem: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; KEY_LEN]);

#[derive(Clone)]
pub struct PrivateKey(pub [u8; KEY_LEN]);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(…)")
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<Self, KeyError> {
        decode_key("a public key", text).map(PublicKey)
    }
}

fn decode_key(what: &str, text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let malformed = |problem: String| KeyError::Malformed {
        what: what.into(),
        problem,
    };
    let bytes = STANDARD.decode(text.trim()).map_err(|e| {
        malformed(format!(
            "not base64 ({e}); paste the line `furnace keygen` wrote"
        ))
    })?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        malformed(format!(
            "{} bytes where an X25519 key has {KEY_LEN}",
            b.len()
        ))
    })
}

pub struct Keypair {
    pub private: PrivateKey,
    pub public: PublicKey,
}

impl Keypair {
    pub fn generate() -> Keypair {
        let pair = snow::Builder::new(super::seal::upstream_params())
            .generate_keypair()
            .expect("the default resolver generates X25519 keys");
        Keypair {
            private: PrivateKey(pair.private.try_into().expect("32-byte private key")),
            public: PublicKey(pair.public.try_into().expect("32-byte public key")),
        }
    }

    /// Writes `<stem>.key` (0600, refusing to overwrite) and `<stem>.pub`.
    pub fn write(&self, stem: &Path) -> Result<(PathBuf, PathBuf), KeyError> {
        // Appended, not substituted: `alpha.v2` gives `alpha.v2.key`.
        let with = |ext: &str| {
            let mut name = stem.as_os_str().to_owned();
            name.push(ext);
            PathBuf::from(name)
        };
        let (key, public) = (with(".key"), with(".pub"));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| KeyError::Io { path, source }
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .map_err(io(&key))?;
        writeln!(file, "{}", STANDARD.encode(self.private.0)).map_err(io(&key))?;
        std::fs::write(&public, format!("{}\n", self.public)).map_err(io(&public))?;
        Ok((key, public))
    }
}

pub fn read_private(path: &Path) -> Result<PrivateKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.into(),
        source,
    })?;
    decode_key(&format!("private key {}", path.display()), &text).map(PrivateKey)
}

pub fn read_public(path: &Path) -> Result<PublicKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.into(),
        source,
    })?;
    decode_key(&format!("public key {}", path.display()), &text).map(PublicKey)
}

/// The public half of a private key.
pub fn public_of(private: &PrivateKey) -> PublicKey {
    let secret = x25519_dalek::StaticSecret::from(private.0);
    PublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes())
}
