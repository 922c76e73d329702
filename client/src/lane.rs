//! A lane: the messages of one topic waiting to leave for the broker, which the producer
//! gathers into batches (natural batching, as Kafka's producer does).
//!
//! There is no linger timer. A lane with fewer RPCs in flight than `batch_max_in_flight` sends a
//! message the moment it arrives; messages arriving while the lane's RPCs are busy wait here and
//! leave together in the lane's next RPC, in arrival order, at most `batch_max_messages` and
//! about `batch_max_bytes` at a time (always at least one message, however large). So batches
//! grow exactly as much as the broker's answer time makes senders wait anyway, and a lone
//! message never waits for company. A full batch (`batch_max_messages` or `batch_max_bytes`
//! reached) does not wait for a free slot either: it leaves at once on an extra RPC, so a busy
//! producer is not capped at `batch_max_in_flight` RPCs per topic (the extra RPCs are bounded by
//! the callers waiting, divided by the batch size).
//!
//! The producer picks the queue of each batch when it leaves (round-robin), not of each message:
//! a batch goes to one queue, and gathering per topic makes batches as large as the topic's
//! concurrency allows instead of dividing it by the number of queues.
//!
//! Invariants: a message is taken out of its lane at most once, either by a batch or by its
//! caller's cancellation (both under the lane's lock); whoever takes it owns its reply. While a
//! message waits, the lane has at least one RPC in flight, and one of them takes the waiting
//! messages when it ends.
//!
//! PERF: this is on every send's path. The lock is held only to push or take entries, never
//! across an `.await`; no allocation per message beyond its entry and the batch vector.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::error::ClientError;
use crate::producer::SendResult;

/// Where a caller's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<SendResult, ClientError>>;

/// A message waiting in its lane, or travelling in a batch.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Position in the lane, for cancellation.
    pub seq: u64,
    pub message: proto::client::Message,
    /// An upper bound of the message's size in the request, for `batch_max_bytes`.
    pub size_bytes: usize,
    pub reply: Reply,
}

/// How large a batch may be and how many RPCs a lane may have in flight.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub max_in_flight: usize,
}

/// One topic's waiting messages and RPC count.
#[derive(Debug, Default)]
pub(crate) struct Lane {
    state: Mutex<LaneState>,
}

#[derive(Debug, Default)]
struct LaneState {
    waiting: VecDeque<Pending>,
    /// Sum of `size_bytes` of `waiting`.
    waiting_bytes: usize,
    in_flight: usize,
    next_seq: u64,
}

impl LaneState {
    /// True when the waiting messages fill a batch.
    fn full(&self, limits: BatchLimits) -> bool {
        self.waiting.len() >= limits.max_messages || self.waiting_bytes >= limits.max_bytes
    }
}

impl Lane {
    /// Queues a message. Returns its sequence number (for [`Lane::cancel`]) and, when the lane
    /// had room for another RPC (or the waiting messages fill a batch), the batch the caller
    /// must now send: it is counted in flight, and whoever sends it must call
    /// [`Lane::next_batch`] when it has been answered.
    pub fn push(
        &self,
        message: proto::client::Message,
        size_bytes: usize,
        reply: Reply,
        limits: BatchLimits,
    ) -> (u64, Option<Vec<Pending>>) {
        let mut state = self.state.lock().expect("lane lock");
        let seq = state.next_seq;
        state.next_seq += 1;
        state.waiting.push_back(Pending {
            seq,
            message,
            size_bytes,
            reply,
        });
        state.waiting_bytes += size_bytes;
        if state.in_flight >= limits.max_in_flight && !state.full(limits) {
            return (seq, None);
        }
        let batch = take_batch(&mut state, limits);
        if batch.is_empty() {
            return (seq, None);
        }
        state.in_flight += 1;
        (seq, Some(batch))
    }

    /// Called when one of the lane's RPCs has been answered: the next batch to send on the same
    /// RPC slot, or `None`, which frees the slot. A slot beyond `batch_max_in_flight` (opened for
    /// a full batch) goes on only with another full batch.
    pub fn next_batch(&self, limits: BatchLimits) -> Option<Vec<Pending>> {
        let mut state = self.state.lock().expect("lane lock");
        assert!(
            state.in_flight > 0,
            "a lane RPC ended that was never counted"
        );
        let batch = if state.in_flight > limits.max_in_flight && !state.full(limits) {
            Vec::new()
        } else {
            take_batch(&mut state, limits)
        };
        if batch.is_empty() {
            state.in_flight -= 1;
            return None;
        }
        Some(batch)
    }

    /// Takes the message `seq` out of the lane if it is still waiting, so that it is never sent.
    /// False when a batch already took it (its answer will come through its reply).
    pub fn cancel(&self, seq: u64) -> bool {
        let mut state = self.state.lock().expect("lane lock");
        // Entries wait in sequence order.
        match state.waiting.binary_search_by_key(&seq, |p| p.seq) {
            Ok(index) => {
                let pending = state.waiting.remove(index).expect("found at this index");
                state.waiting_bytes -= pending.size_bytes;
                true
            }
            Err(_) => false,
        }
    }

    /// Messages waiting (cancelled and abandoned ones included until a batch skips them).
    pub fn waiting_len(&self) -> usize {
        self.state.lock().expect("lane lock").waiting.len()
    }
}

/// Takes the oldest waiting messages: at most `max_messages`, and no more than `max_bytes` in
/// all unless the first alone is larger. Skips messages whose caller has gone (its future was
/// dropped before a batch took the message: the send is cancelled, as an unbatched send whose
/// future is dropped is).
fn take_batch(state: &mut LaneState, limits: BatchLimits) -> Vec<Pending> {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    while let Some(next) = state.waiting.front() {
        if !next.reply.is_closed() {
            if batch.len() >= limits.max_messages
                || (!batch.is_empty() && bytes + next.size_bytes > limits.max_bytes)
            {
                break;
            }
            bytes += next.size_bytes;
        }
        let next = state.waiting.pop_front().expect("front exists");
        state.waiting_bytes -= next.size_bytes;
        if !next.reply.is_closed() {
            batch.push(next);
        }
    }
    batch
}

/// An upper bound of the bytes `message` takes in a `SendRequest`: its fields plus protobuf's
/// field tags and length prefixes (a tag byte and a varint of at most 5 bytes per length: 40
/// bytes for the message's own framing, body, tag, id and timestamp; 6 per key; 20 per property,
/// whose map entry has three tags and three lengths).
pub(crate) fn wire_size_bytes(message: &proto::client::Message) -> usize {
    40 + message.body.len()
        + message.tag.len()
        + message.message_id.len()
        + message.keys.iter().map(|k| k.len() + 6).sum::<usize>()
        + message
            .properties
            .iter()
            .map(|(name, value)| name.len() + value.len() + 20)
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_messages: 4,
        max_bytes: 1_000,
        max_in_flight: 1,
    };

    fn message(id: &str, body_bytes: usize) -> proto::client::Message {
        proto::client::Message {
            body: vec![b'x'; body_bytes].into(),
            message_id: id.to_owned(),
            ..Default::default()
        }
    }

    type Answer = oneshot::Receiver<Result<SendResult, ClientError>>;

    fn push(lane: &Lane, id: &str, size_bytes: usize) -> (u64, Option<Vec<Pending>>, Answer) {
        let (reply, answer) = oneshot::channel();
        let (seq, batch) = lane.push(message(id, 1), size_bytes, reply, LIMITS);
        (seq, batch, answer)
    }

    fn ids(batch: &[Pending]) -> Vec<&str> {
        batch
            .iter()
            .map(|p| p.message.message_id.as_str())
            .collect()
    }

    #[test]
    fn an_idle_lane_sends_at_once_and_a_busy_one_gathers() {
        let lane = Lane::default();
        let (_, first, _a) = push(&lane, "a", 10);
        assert_eq!(ids(&first.unwrap()), ["a"]);
        let mut answers = Vec::new();
        for id in ["b", "c", "d"] {
            let (_, batch, answer) = push(&lane, id, 10);
            assert!(batch.is_none(), "the lane's one RPC is busy");
            answers.push(answer);
        }
        assert_eq!(lane.waiting_len(), 3);
        assert_eq!(ids(&lane.next_batch(LIMITS).unwrap()), ["b", "c", "d"]);
        assert!(
            lane.next_batch(LIMITS).is_none(),
            "nothing left: the slot is freed"
        );
        let (_, again, _e) = push(&lane, "e", 10);
        assert_eq!(
            ids(&again.unwrap()),
            ["e"],
            "a freed lane sends at once again"
        );
    }

    #[test]
    fn a_full_batch_leaves_at_once_on_an_extra_rpc_which_then_closes() {
        let lane = Lane::default();
        let (_, _busy, _a) = push(&lane, "a", 10);
        let mut answers = Vec::new();
        for id in ["b", "c", "d"] {
            let (_, batch, answer) = push(&lane, id, 10);
            assert!(batch.is_none());
            answers.push(answer);
        }
        let (_, full, _e) = push(&lane, "e", 10);
        assert_eq!(
            ids(&full.unwrap()),
            ["b", "c", "d", "e"],
            "four fill a batch"
        );
        let (_, none, _f) = push(&lane, "f", 10);
        assert!(none.is_none());
        // Two RPCs in flight, one allowed: the first to end closes, the other takes "f".
        assert!(lane.next_batch(LIMITS).is_none());
        assert_eq!(ids(&lane.next_batch(LIMITS).unwrap()), ["f"]);
        assert!(lane.next_batch(LIMITS).is_none());
        let (_, again, _g) = push(&lane, "g", 10);
        assert_eq!(ids(&again.unwrap()), ["g"], "every slot was freed");
    }

    #[test]
    fn a_batch_respects_the_byte_budget_but_always_takes_one() {
        let limits = BatchLimits {
            max_bytes: 10_000,
            ..LIMITS
        };
        let lane = Lane::default();
        let (reply, _a) = oneshot::channel();
        assert!(lane.push(message("a", 1), 10, reply, limits).1.is_some());
        let mut answers = Vec::new();
        for (id, size_bytes) in [("big", 9_000), ("c", 600), ("d", 300)] {
            let (reply, answer) = oneshot::channel();
            assert!(lane
                .push(message(id, 1), size_bytes, reply, limits)
                .1
                .is_none());
            answers.push(answer);
        }
        let small = BatchLimits {
            max_bytes: 1_000,
            ..LIMITS
        };
        assert_eq!(ids(&lane.next_batch(small).unwrap()), ["big"]);
        assert_eq!(ids(&lane.next_batch(small).unwrap()), ["c", "d"]);
        // Bytes fill a batch too.
        let (reply, _e) = oneshot::channel();
        assert!(lane.push(message("e", 1), 10, reply, small).1.is_none());
        let (reply, _f) = oneshot::channel();
        let full = lane.push(message("f", 1), 2_000, reply, small).1;
        assert_eq!(
            ids(&full.unwrap()),
            ["e"],
            "a batch full by bytes leaves at once"
        );
    }

    #[test]
    fn cancelled_and_abandoned_messages_are_never_taken() {
        let lane = Lane::default();
        let (first_seq, _busy, _a) = push(&lane, "a", 10);
        let (b_seq, _, _b) = push(&lane, "b", 10);
        let (_, _, c_answer) = push(&lane, "c", 10);
        let (_, _, _d) = push(&lane, "d", 10);
        assert!(!lane.cancel(first_seq), "already taken by a batch");
        assert!(lane.cancel(b_seq));
        assert!(!lane.cancel(b_seq), "taken out once only");
        drop(c_answer);
        assert_eq!(ids(&lane.next_batch(LIMITS).unwrap()), ["d"]);
        assert_eq!(lane.state.lock().unwrap().waiting_bytes, 0);
    }

    #[test]
    fn two_rpcs_in_flight_when_allowed() {
        let limits = BatchLimits {
            max_in_flight: 2,
            ..LIMITS
        };
        let lane = Lane::default();
        let (reply, _a) = oneshot::channel();
        assert!(lane.push(message("a", 1), 10, reply, limits).1.is_some());
        let (reply, _b) = oneshot::channel();
        assert!(lane.push(message("b", 1), 10, reply, limits).1.is_some());
        let (reply, _c) = oneshot::channel();
        assert!(lane.push(message("c", 1), 10, reply, limits).1.is_none());
    }
}
