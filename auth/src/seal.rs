//! Users' secret keys at rest and in flight: sealed with a key derived from the cluster secret.
//!
//! The controller must verify users' HMAC signatures, so it needs their secret keys, not a hash
//! of them. It keeps them sealed instead: ChaCha20-Poly1305 under a key derived from the cluster
//! secret, with the user's name as associated data. So:
//! - the Raft log, snapshots and sled files hold no secret in clear (someone who copies a
//!   controller's disk without its configuration learns none);
//! - the sealed form can be sent to brokers as it is (they hold the cluster secret too);
//! - a sealed secret moved to another user's record does not open (the name is authenticated).
//!
//! Layout (one string, so that it serialises the same in every format): `v1.<nonce: 24 hex
//! digits>.<ciphertext and tag: hex>`.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::key::ClusterKey;

const VERSION: &str = "v1";
const NONCE_BYTES: usize = 12;
/// Longest sealed secret accepted from the wire or a file: the longest secret key plus the tag.
const CIPHERTEXT_BYTES_MAX: usize = crate::acl::SECRET_KEY_BYTES_MAX + 16;

/// A secret key sealed with the cluster key. `Debug` shows no byte of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    nonce: [u8; NONCE_BYTES],
    ciphertext: Vec<u8>,
}

/// Why a sealed secret does not open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed secret does not open with this cluster key (another cluster's, or altered)")]
    DoesNotOpen,
    #[error("sealed secret is not v1.<nonce>.<ciphertext> in hex")]
    Malformed,
}

impl ClusterKey {
    /// Seals `secret` for `user`: a fresh random nonce each time.
    pub fn seal(&self, user: &str, secret: &str) -> Sealed {
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let ciphertext = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.as_bytes(),
                    aad: user.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encrypts any message shorter than 256 GiB");
        Sealed { nonce, ciphertext }
    }

    /// The secret `sealed` holds for `user`, if this key sealed it for that user.
    pub fn open(&self, user: &str, sealed: &Sealed) -> Result<String, SealError> {
        let plain = self
            .cipher()
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: user.as_bytes(),
                },
            )
            .map_err(|_| SealError::DoesNotOpen)?;
        String::from_utf8(plain).map_err(|_| SealError::DoesNotOpen)
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(self.seal_key()))
    }
}

impl Sealed {
    pub fn to_text(&self) -> String {
        format!("{VERSION}.{}.{}", hex(&self.nonce), hex(&self.ciphertext))
    }

    pub fn parse(text: &str) -> Result<Sealed, SealError> {
        let mut parts = text.split('.');
        let (Some(VERSION), Some(nonce), Some(ciphertext), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Malformed);
        };
        if ciphertext.len() > 2 * CIPHERTEXT_BYTES_MAX {
            return Err(SealError::Malformed);
        }
        let nonce: [u8; NONCE_BYTES] = unhex(nonce)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(SealError::Malformed)?;
        let ciphertext = unhex(ciphertext).ok_or(SealError::Malformed)?;
        Ok(Sealed { nonce, ciphertext })
    }

    #[cfg(test)]
    pub(crate) fn for_tests() -> Sealed {
        Sealed {
            nonce: [0; NONCE_BYTES],
            ciphertext: vec![0; 16],
        }
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealed(..)")
    }
}

impl Serialize for Sealed {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_text())
    }
}

impl<'de> Deserialize<'de> for Sealed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Sealed, D::Error> {
        let text = String::deserialize(deserializer)?;
        Sealed::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> ClusterKey {
        ClusterKey::new(secret).unwrap()
    }

    #[test]
    fn a_sealed_secret_opens_with_the_same_key_for_the_same_user_only() {
        let sealed = key("0123456789abcdef").seal("app", "s3cret-key");
        assert_eq!(
            key("0123456789abcdef").open("app", &sealed).unwrap(),
            "s3cret-key"
        );
        assert_eq!(
            key("0123456789abcdeF").open("app", &sealed),
            Err(SealError::DoesNotOpen)
        );
        assert_eq!(
            key("0123456789abcdef").open("other", &sealed),
            Err(SealError::DoesNotOpen)
        );
        assert!(!sealed.to_text().contains(&hex(b"s3cret-key")));
        assert_eq!(format!("{sealed:?}"), "Sealed(..)");
    }

    #[test]
    fn the_text_form_round_trips_and_garbage_is_refused() {
        let sealed = key("0123456789abcdef").seal("app", "s3cret-key");
        let text = sealed.to_text();
        assert_eq!(Sealed::parse(&text).unwrap(), sealed);
        let json = serde_json::to_string(&sealed).unwrap();
        assert_eq!(serde_json::from_str::<Sealed>(&json).unwrap(), sealed);
        for bad in [
            "",
            "v1",
            "v2.000000000000000000000000.00",
            "v1.00.00",
            "v1.000000000000000000000000.0",
            "v1.000000000000000000000000.zz",
            &format!("{text}.00"),
            &format!("v1.000000000000000000000000.{}", "00".repeat(400)),
        ] {
            assert_eq!(Sealed::parse(bad), Err(SealError::Malformed), "{bad:?}");
        }
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert_eq!(
            key("0123456789abcdef").open("app", &flipped),
            Err(SealError::DoesNotOpen)
        );
    }
}
