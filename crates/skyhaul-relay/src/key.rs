//! The transfer key and the per-connection keys derived from it.
//!
//! One random 256-bit key is made per transfer (by `skyhaul cp --relay`, or by a fleet's
//! coordinator) and handed to gateways out of band: through the environment
//! (`SKYHAUL_RELAY_KEY`) or the coordinator's token-authenticated API, never on a command
//! line. No frame is ever sealed with it directly: every TCP connection derives its own
//! key from it and from random values both ends contribute in the handshake, so sequence
//! numbers can start at zero on every connection without a nonce ever repeating, and a
//! recorded connection cannot be replayed to a gateway (its half of the randomness differs).

use aws_lc_rs::hkdf::{KeyType, Salt, HKDF_SHA256};
use std::fmt;

/// The environment variable a gateway and a relayed transfer read the key from.
pub const KEY_ENV: &str = "SKYHAUL_RELAY_KEY";

/// Length of the transfer key and of every derived key, in bytes.
pub const KEY_LEN: usize = 32;

/// Fewer distinct byte values than this in a key is no random key but a pattern (all
/// zeros, `0123…` repeated): 32 random bytes have fewer than 16 distinct values with a
/// probability below 10^-15.
const MIN_DISTINCT_BYTES: usize = 16;

/// A secret AES-256 key. Its `Debug` shows nothing of it, so it can sit in option structs
/// that are logged.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayKey([u8; KEY_LEN]);

impl fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayKey(<redacted>)")
    }
}

impl RelayKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> RelayKey {
        let mut k = [0u8; KEY_LEN];
        random(&mut k);
        RelayKey(k)
    }

    /// Parses 64 hex digits. The error never repeats the input.
    pub fn from_hex(text: &str) -> Result<RelayKey, String> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| format!("{KEY_ENV}: not hex (expected {} hex digits)", KEY_LEN * 2))?;
        let k: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            format!(
                "{KEY_ENV}: wrong length (expected {} hex digits)",
                KEY_LEN * 2
            )
        })?;
        let distinct = k.iter().collect::<std::collections::HashSet<_>>().len();
        if distinct < MIN_DISTINCT_BYTES {
            return Err(format!(
                "{KEY_ENV}: not a random key (a few byte values repeated); make one with `openssl rand -hex 32`"
            ));
        }
        Ok(RelayKey(k))
    }

    /// The key from [`KEY_ENV`], if set.
    pub fn from_env() -> Result<Option<RelayKey>, String> {
        match std::env::var(KEY_ENV) {
            Ok(v) if !v.trim().is_empty() => RelayKey::from_hex(&v).map(Some),
            _ => Ok(None),
        }
    }

    /// 64 hex digits: only for handing the key to a child process's environment or to an
    /// authenticated peer, never for printing.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key of one connection: HKDF-SHA256 of this key, salted with both ends' random
    /// values and the client's session id.
    pub(crate) fn connection_key(&self, salt: &[u8]) -> [u8; KEY_LEN] {
        self.derive(salt, b"skyhaul-relay v1 connection key")
    }

    /// What a gateway sends after its hello to show that it holds this key: derived like
    /// [`RelayKey::connection_key`] but for another purpose, so it tells nothing of that
    /// key. Without it a gateway started with another key could only close the connection
    /// at the first frame, which looks like a network fault that a retry might cure.
    pub(crate) fn gateway_proof(&self, salt: &[u8]) -> [u8; KEY_LEN] {
        self.derive(salt, b"skyhaul-relay v2 gateway proof")
    }

    /// The client's answer to [`RelayKey::gateway_proof`], so that a gateway can tell its
    /// operator that a sender with another key came, rather than see it leave.
    pub(crate) fn client_proof(&self, salt: &[u8]) -> [u8; KEY_LEN] {
        self.derive(salt, b"skyhaul-relay v2 client proof")
    }

    fn derive(&self, salt: &[u8], info: &[u8]) -> [u8; KEY_LEN] {
        struct Len;
        impl KeyType for Len {
            fn len(&self) -> usize {
                KEY_LEN
            }
        }
        let mut out = [0u8; KEY_LEN];
        Salt::new(HKDF_SHA256, salt)
            .extract(&self.0)
            .expand(&[info], Len)
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF-SHA256 of 32 bytes cannot fail");
        out
    }
}

/// Fills `buf` from the operating system's random source.
pub(crate) fn random(buf: &mut [u8]) {
    aws_lc_rs::rand::fill(buf).expect("the system random source failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_redacted_debug() {
        let k = RelayKey::generate();
        assert_eq!(RelayKey::from_hex(&k.to_hex()).unwrap(), k);
        assert!(!format!("{k:?}").contains(&k.to_hex()[..8]));
        assert_ne!(RelayKey::generate(), k);
    }

    #[test]
    fn bad_keys_are_refused_without_echo() {
        let e = RelayKey::from_hex("zz-secret").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        assert!(RelayKey::from_hex("abcd").unwrap_err().contains("length"));
        for pattern in [
            "00".repeat(32),
            "0123456789abcdef".repeat(4),
            "deadbeef".repeat(8),
        ] {
            let e = RelayKey::from_hex(&pattern).unwrap_err();
            assert!(e.contains("openssl rand -hex 32"), "{e}");
        }
    }

    #[test]
    fn connection_keys_differ_by_salt() {
        let k = RelayKey::generate();
        assert_eq!(k.connection_key(b"a"), k.connection_key(b"a"));
        assert_ne!(k.connection_key(b"a"), k.connection_key(b"b"));
        assert_ne!(
            k.connection_key(b"a"),
            RelayKey::generate().connection_key(b"a")
        );
        assert_ne!(k.gateway_proof(b"a"), k.connection_key(b"a"));
        assert_ne!(k.gateway_proof(b"a"), k.client_proof(b"a"));
    }
}
