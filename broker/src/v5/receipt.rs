//! Receipt handles: what a consumer acknowledges a received message with.
//!
//! Opaque to the client; they carry what the master needs to find the message and its
//! delivery again (group, topic, queue, queue offset, commit-log offset, the master epoch it
//! was handed out in, the delivery's nonce and attempt, its deadline), signed with the cluster
//! key (a standalone broker's own random key), so that a forged, altered or truncated handle is
//! refused with INVALID_RECEIPT_HANDLE and changes nothing. A handle from another master epoch
//! is refused the same way: the new master has not handed that delivery out, and the message
//! comes again (at least once, never skipped).
//!
//! Layout, hex-encoded: version u8 (1), master epoch u64, queue id u32, queue offset u64,
//! commit-log offset u64, nonce u64, deadline (Unix ms) u64, attempt u32, group length u16,
//! group, topic length u16, topic; then HMAC-SHA256 (32 bytes) over all of it.

use auth::{ClusterKey, Signature};

const VERSION: u8 = 1;
/// What the MAC is bound to, so that no other signed thing of the cluster passes for a handle.
const PURPOSE: &str = "apache.rocketmq.v2/receipt-handle";
/// Longest handle accepted, in characters: two names of at most 255 bytes and the fixed part,
/// hex-encoded.
pub const HANDLE_CHARS_MAX: usize = 2 * (1 + 8 + 4 + 8 + 8 + 8 + 8 + 4 + 2 + 255 + 2 + 255 + 32);

/// One delivery of one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub master_epoch: u64,
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub commit_log_offset: u64,
    pub nonce: u64,
    pub deadline_ms: u64,
    pub attempt: u32,
}

impl Receipt {
    /// The signed, hex-encoded handle.
    pub fn encode(&self, key: &ClusterKey) -> String {
        let body = self.body();
        let mac = key.sign(PURPOSE, 0, 0, &body).mac;
        let mut text = String::with_capacity(2 * (body.len() + mac.len()));
        for byte in body.iter().chain(mac.iter()) {
            text.push_str(&format!("{byte:02x}"));
        }
        text
    }

    /// The receipt of `handle`, if it is one this cluster signed; None for anything else.
    pub fn decode(handle: &str, key: &ClusterKey) -> Option<Receipt> {
        if handle.len() > HANDLE_CHARS_MAX || handle.len() % 2 != 0 {
            return None;
        }
        let bytes: Vec<u8> = (0..handle.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(handle.get(i..i + 2)?, 16).ok())
            .collect::<Option<_>>()?;
        let split = bytes.len().checked_sub(32)?;
        let (body, mac) = bytes.split_at(split);
        let signature = Signature {
            timestamp_ms: 0,
            nonce: 0,
            mac: mac.try_into().ok()?,
        };
        if !key.verify(PURPOSE, &signature, body) {
            return None;
        }
        Self::parse(body)
    }

    fn body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64 + self.group.len() + self.topic.len());
        body.push(VERSION);
        body.extend_from_slice(&self.master_epoch.to_le_bytes());
        body.extend_from_slice(&self.queue_id.to_le_bytes());
        body.extend_from_slice(&self.queue_offset.to_le_bytes());
        body.extend_from_slice(&self.commit_log_offset.to_le_bytes());
        body.extend_from_slice(&self.nonce.to_le_bytes());
        body.extend_from_slice(&self.deadline_ms.to_le_bytes());
        body.extend_from_slice(&self.attempt.to_le_bytes());
        for name in [&self.group, &self.topic] {
            // Names are validated to at most 255 bytes before a receipt is made.
            body.extend_from_slice(&(name.len() as u16).to_le_bytes());
            body.extend_from_slice(name.as_bytes());
        }
        body
    }

    fn parse(body: &[u8]) -> Option<Receipt> {
        let mut at = Reader { bytes: body };
        if at.take(1)?[0] != VERSION {
            return None;
        }
        let receipt = Receipt {
            master_epoch: at.u64()?,
            queue_id: u32::from_le_bytes(at.take(4)?.try_into().ok()?),
            queue_offset: at.u64()?,
            commit_log_offset: at.u64()?,
            nonce: at.u64()?,
            deadline_ms: at.u64()?,
            attempt: u32::from_le_bytes(at.take(4)?.try_into().ok()?),
            group: at.name()?,
            topic: at.name()?,
        };
        at.bytes.is_empty().then_some(receipt)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(taken)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn name(&mut self) -> Option<String> {
        let len = u16::from_le_bytes(self.take(2)?.try_into().ok()?);
        String::from_utf8(self.take(usize::from(len))?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> ClusterKey {
        ClusterKey::new(secret).unwrap()
    }

    fn receipt() -> Receipt {
        Receipt {
            master_epoch: 7,
            group: "payments".into(),
            topic: "orders".into(),
            queue_id: 3,
            queue_offset: 42,
            commit_log_offset: 4096,
            nonce: 99,
            deadline_ms: 1_700_000_000_000,
            attempt: 2,
        }
    }

    #[test]
    fn a_handle_reads_back_as_it_was_made() {
        let k = key("receipt-test-secret");
        let handle = receipt().encode(&k);
        assert!(handle.len() <= HANDLE_CHARS_MAX);
        assert_eq!(Receipt::decode(&handle, &k), Some(receipt()));
    }

    #[test]
    fn forged_altered_truncated_and_foreign_handles_are_refused() {
        let k = key("receipt-test-secret");
        let handle = receipt().encode(&k);
        let mut altered = handle.clone().into_bytes();
        altered[10] = if altered[10] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).unwrap();
        for bad in [
            "",
            "zz",
            "abc",
            &handle[..handle.len() - 2],
            &altered,
            &"0".repeat(HANDLE_CHARS_MAX + 2),
        ] {
            assert_eq!(Receipt::decode(bad, &k), None, "{bad:?}");
        }
        let other = key("another-cluster-secret");
        assert_eq!(Receipt::decode(&handle, &other), None);
        assert_eq!(Receipt::decode(&receipt().encode(&other), &k), None);
    }
}
