//! A node's persistent identity and the pool key that makes a pool private.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;

use crate::NetError;

/// The shared secret of a pool: 32 random bytes, written as 64 hex characters. Nodes without
/// it cannot complete a connection (the pnet layer, [`rbee_pnet`], encrypts everything before
/// the handshake).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PoolKey([u8; 32]);

impl PoolKey {
    pub fn generate() -> Result<PoolKey, NetError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| NetError::Io(format!("no system randomness for a pool key: {e}")))?;
        Ok(PoolKey(bytes))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A short public name for the pool (derived from the key, reveals nothing of it).
    pub fn fingerprint(&self) -> String {
        PreSharedKey::new(self.0).fingerprint().to_string()
    }

    /// The secret itself, for the pnet layer.
    pub(crate) fn bytes(&self) -> [u8; 32] {
        self.0
    }
}

impl fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        write!(f, "PoolKey({})", self.fingerprint())
    }
}

impl fmt::Display for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl FromStr for PoolKey {
    type Err = NetError;

    fn from_str(s: &str) -> Result<PoolKey, NetError> {
        let s = s.trim();
        let bad = || {
            NetError::BadPoolKey(
                "a pool key is 64 hexadecimal characters; make one with `rbee-node pool new`"
                    .into(),
            )
        };
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(PoolKey(out))
    }
}

/// Loads the node's ed25519 identity from `path`, creating it (mode 0600, written atomically)
/// the first time. The peer id derived from it is the node's name in the pool.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, NetError> {
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            NetError::Io(format!(
                "{}: not a node identity ({e}); move it away to make a new one",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .map_err(|e| NetError::Io(format!("cannot encode the identity: {e}")))?;
            write_private(path, &bytes)
                .map_err(|e| NetError::Io(format!("{}: {e}", path.display())))?;
            Ok(keypair)
        }
        Err(e) => Err(NetError::Io(format!("{}: {e}", path.display()))),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_keys_round_trip_and_bad_ones_are_refused() {
        let key = PoolKey::generate().unwrap();
        assert_eq!(key.to_string().parse::<PoolKey>().unwrap(), key);
        assert_ne!(PoolKey::generate().unwrap(), key);
        for bad in ["", "abc", &"g".repeat(64), &"a".repeat(63), &"é".repeat(32)] {
            let err = bad.parse::<PoolKey>().unwrap_err().to_string();
            assert!(err.contains("pool new"), "{err}");
        }
        assert!(!format!("{key:?}").contains(&key.to_hex()));
    }

    #[test]
    fn identity_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/node.key");
        let a = load_or_create_identity(&path).unwrap();
        let b = load_or_create_identity(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load_or_create_identity(&path).is_err());
    }
}
