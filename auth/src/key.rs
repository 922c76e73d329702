//! The cluster key and the signature a member puts on an internal call.
//!
//! Header layout (ASCII, one value of [`SIGNATURE_METADATA_KEY`]):
//!
//! ```text
//! v1.<timestamp_ms>.<nonce: 32 hex digits>.<mac: 64 hex digits>
//! mac = HMAC-SHA256(cluster_secret,
//!         "broker-member-v1" 0x00 path 0x00 timestamp_ms 0x00 nonce 0x00 [body])
//! ```
//!
//! `path` is the gRPC path (`/broker.controller.v1.Raft/Vote`), so a signature made for one RPC
//! is worthless on another; `body` is the whole gRPC request body (its length-prefixed frames)
//! when the RPC's [`Coverage`](crate::Coverage) is `Body`, nothing when it is `Header`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// gRPC metadata key of a member's signature.
pub const SIGNATURE_METADATA_KEY: &str = "x-member-signature";
/// Shortest accepted secret: 16 bytes of hex or text is the least that is not guessable offline
/// from one captured signature.
pub const SECRET_BYTES_MIN: usize = 16;
/// What the MAC input starts with, so that no other HMAC made with the same secret (a later
/// format, another protocol) can be taken for a member's signature.
const DOMAIN: &[u8] = b"broker-member-v1";
const VERSION: &str = "v1";
/// What the seal key is derived from (HMAC-SHA256 of the cluster secret over it): no member
/// signature's input starts with it, so no signature ever equals the seal key.
const SEAL_KEY_DOMAIN: &[u8] = b"broker-acl-seal-v1";

type HmacSha256 = Hmac<Sha256>;

/// Why a configured secret cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("cluster_secret is empty: every controller and broker of a cluster must share one")]
    Empty,
    #[error("cluster_secret has {len} bytes; at least {SECRET_BYTES_MIN} are needed")]
    TooShort { len: usize },
}

/// The key made from the cluster secret. Cloning is cheap; `Debug` never shows the secret.
#[derive(Clone)]
pub struct ClusterKey {
    /// The keyed state before any input; each signature starts from a copy.
    mac: std::sync::Arc<HmacSha256>,
    /// The key users' secrets are sealed with ([`crate::seal`]): derived, so that a sealed
    /// secret and a member's signature never share a key.
    seal_key: std::sync::Arc<[u8; 32]>,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    pub fn new(secret: &str) -> Result<ClusterKey, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::Empty);
        }
        if secret.len() < SECRET_BYTES_MIN {
            return Err(KeyError::TooShort { len: secret.len() });
        }
        let mac = HmacSha256::new_from_slice(secret.as_bytes())
            .expect("HMAC accepts a key of any length");
        let mut derive = mac.clone();
        derive.update(SEAL_KEY_DOMAIN);
        Ok(ClusterKey {
            mac: std::sync::Arc::new(mac),
            seal_key: std::sync::Arc::new(derive.finalize().into_bytes().into()),
        })
    }

    pub(crate) fn seal_key(&self) -> &[u8; 32] {
        &self.seal_key
    }

    /// The MAC state over everything but the body, which the caller feeds when it is covered.
    pub(crate) fn begin(&self, path: &str, timestamp_ms: u64, nonce: u128) -> HmacSha256 {
        let mut mac = HmacSha256::clone(&self.mac);
        mac.update(DOMAIN);
        mac.update(&[0]);
        mac.update(path.as_bytes());
        mac.update(&[0]);
        mac.update(timestamp_ms.to_string().as_bytes());
        mac.update(&[0]);
        mac.update(format!("{nonce:032x}").as_bytes());
        mac.update(&[0]);
        mac
    }

    /// Signs a call: `body` is the request body when the path's coverage is `Body`, else empty.
    pub fn sign(&self, path: &str, timestamp_ms: u64, nonce: u128, body: &[u8]) -> Signature {
        let mut mac = self.begin(path, timestamp_ms, nonce);
        mac.update(body);
        Signature {
            timestamp_ms,
            nonce,
            mac: mac.finalize().into_bytes().into(),
        }
    }

    /// Whether `signature` was made with this key over this path and body (constant time).
    pub fn verify(&self, path: &str, signature: &Signature, body: &[u8]) -> bool {
        let mut mac = self.begin(path, signature.timestamp_ms, signature.nonce);
        mac.update(body);
        mac.verify_slice(&signature.mac).is_ok()
    }
}

/// One signature, as carried in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// When the caller signed, in milliseconds since the Unix epoch by its clock.
    pub timestamp_ms: u64,
    /// Random per call: the receiver refuses a nonce it has seen within the skew window.
    pub nonce: u128,
    pub mac: [u8; 32],
}

impl Signature {
    pub fn to_header(&self) -> String {
        let mut text = format!("{VERSION}.{}.{:032x}.", self.timestamp_ms, self.nonce);
        for byte in self.mac {
            text.push_str(&format!("{byte:02x}"));
        }
        text
    }

    /// Parses a header value; `None` for anything not exactly the layout above.
    pub fn parse(header: &str) -> Option<Signature> {
        let mut parts = header.split('.');
        let (version, timestamp, nonce, mac) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != VERSION || parts.next().is_some() {
            return None;
        }
        if timestamp.is_empty()
            || timestamp.len() > 20
            || !timestamp.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        if nonce.len() != 32 || mac.len() != 64 {
            return None;
        }
        let timestamp_ms = timestamp.parse().ok()?;
        let nonce = u128::from_str_radix(nonce, 16).ok()?;
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            let pair = mac.get(2 * i..2 * i + 2)?;
            if !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Signature {
            timestamp_ms,
            nonce,
            mac: bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/broker.controller.v1.Raft/Vote";

    fn key(secret: &str) -> ClusterKey {
        ClusterKey::new(secret).unwrap()
    }

    #[test]
    fn a_signature_verifies_with_the_same_key_path_and_body_only() {
        let signature = key("0123456789abcdef").sign(PATH, 17, 99, b"body");
        assert!(key("0123456789abcdef").verify(PATH, &signature, b"body"));
        assert!(!key("0123456789abcdeF").verify(PATH, &signature, b"body"));
        assert!(!key("0123456789abcdef").verify("/x/Vote", &signature, b"body"));
        assert!(!key("0123456789abcdef").verify(PATH, &signature, b"bodY"));
        let mut later = signature.clone();
        later.timestamp_ms += 1;
        assert!(!key("0123456789abcdef").verify(PATH, &later, b"body"));
        let mut other_nonce = signature;
        other_nonce.nonce += 1;
        assert!(!key("0123456789abcdef").verify(PATH, &other_nonce, b"body"));
    }

    #[test]
    fn the_header_round_trips_and_anything_else_is_refused() {
        let signature = key("0123456789abcdef").sign(PATH, 1_765_000_000_000, u128::MAX, b"");
        let header = signature.to_header();
        assert_eq!(Signature::parse(&header), Some(signature));
        for bad in [
            "",
            "v1",
            "v2.1.00000000000000000000000000000000.".to_owned().as_str(),
            &header.replacen("v1", "v2", 1),
            &format!("{header}.x"),
            &header.replacen(".1765", ".+1765", 1),
            &header[..header.len() - 1],
            &format!("{}g", &header[..header.len() - 1]),
            &header.replacen(".1765000000000.", ".99999999999999999999999.", 1),
        ] {
            assert_eq!(Signature::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn short_and_empty_secrets_are_refused() {
        assert_eq!(ClusterKey::new("").unwrap_err(), KeyError::Empty);
        assert_eq!(
            ClusterKey::new("short").unwrap_err(),
            KeyError::TooShort { len: 5 }
        );
        assert_eq!(
            format!("{:?}", key("0123456789abcdef")),
            "ClusterKey(..)",
            "Debug never shows the secret"
        );
    }
}
