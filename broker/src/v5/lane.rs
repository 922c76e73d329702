//! Natural batching of concurrent v5 sends: the official clients send one message per request,
//! and a store append, a replication wait and (on a member that is not master) a hand-off to the
//! master per message cost far more than per batch. Concurrent sends to one topic wait in its
//! lane; a batch takes everything waiting (at most [`BATCH_MAX`] messages) to one queue in one
//! native send, and each caller gets its own answer. A lone send goes at once: batching only
//! gathers what already waits, so it adds no delay.
//!
//! A lane is a topic's NORMAL messages (a batch picks its queue round robin) or one FIFO queue
//! (messages of the message groups hashed to it, in arrival order). At most [`IN_FLIGHT_MAX`]
//! batches of a lane are in flight at once.
//!
//! A batch refused for what a message in it is (a bad tag, key or property: a 4xxxx code) is
//! sent again one message at a time, so that one bad message fails alone.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use proto::client as native;
use proto::v5;
use tokio::sync::oneshot;

/// Most messages in one batch.
pub const BATCH_MAX: usize = 64;
/// Batches of one lane in flight at once.
pub const IN_FLIGHT_MAX: usize = 4;

/// A lane: a topic's NORMAL messages, or one FIFO queue of it, sent as one user.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LaneKey {
    pub topic: String,
    /// The FIFO queue, or None for NORMAL messages.
    pub queue: Option<u32>,
    /// The senders' signature, which a batch handed to the master carries: only requests
    /// signed alike share a batch, so that no message travels under another user's name.
    pub signature: Option<super::forward::UserSignature>,
}

/// One message's outcome: the native send status and its queue offset, or the refusal.
pub type Outcome = Result<(i32, u64), v5::Status>;

struct Waiting {
    message: native::Message,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct LaneState {
    waiting: VecDeque<Waiting>,
    in_flight: usize,
}

/// Every lane's waiting messages.
#[derive(Default)]
pub struct Lanes {
    lanes: Mutex<HashMap<LaneKey, LaneState>>,
}

/// A batch taken from a lane: its messages, and where each answer goes.
pub struct Batch {
    pub messages: Vec<native::Message>,
    replies: Vec<oneshot::Sender<Outcome>>,
}

impl Batch {
    /// Answers every message of the batch from `outcome`, the batch's: a send status shared by
    /// all, consecutive queue offsets from the first.
    pub fn answer(self, outcome: Outcome) {
        for (i, reply) in self.replies.into_iter().enumerate() {
            let _ = reply.send(
                outcome
                    .clone()
                    .map(|(status, first)| (status, first + i as u64)),
            );
        }
    }

    /// The batch as single-message batches, in order.
    pub fn split(self) -> Vec<Batch> {
        self.messages
            .into_iter()
            .zip(self.replies)
            .map(|(message, reply)| Batch {
                messages: vec![message],
                replies: vec![reply],
            })
            .collect()
    }
}

impl Lanes {
    /// Puts `message` in `key`'s lane; answers where its outcome will come, and whether the
    /// caller must start a batch (the lane had room for one more in flight).
    pub fn push(
        &self,
        key: &LaneKey,
        message: native::Message,
    ) -> (oneshot::Receiver<Outcome>, bool) {
        let (reply, outcome) = oneshot::channel();
        let mut lanes = self.lanes.lock().expect("send lanes lock poisoned");
        let lane = lanes.entry(key.clone()).or_default();
        lane.waiting.push_back(Waiting { message, reply });
        let start = lane.in_flight < IN_FLIGHT_MAX;
        if start {
            lane.in_flight += 1;
        }
        (outcome, start)
    }

    /// The next batch of `key`'s lane for a sender that holds one of its in-flight places; None
    /// when nothing waits (the place is given back then, and an empty lane is forgotten).
    pub fn next_batch(&self, key: &LaneKey) -> Option<Batch> {
        let mut lanes = self.lanes.lock().expect("send lanes lock poisoned");
        let lane = lanes.get_mut(key)?;
        if lane.waiting.is_empty() {
            lane.in_flight -= 1;
            if lane.in_flight == 0 {
                lanes.remove(key);
            }
            return None;
        }
        let take = lane.waiting.len().min(BATCH_MAX);
        let (messages, replies) = lane
            .waiting
            .drain(..take)
            .map(|w| (w.message, w.reply))
            .unzip();
        Some(Batch { messages, replies })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> LaneKey {
        LaneKey {
            topic: "orders".into(),
            queue: None,
            signature: None,
        }
    }

    fn message(id: &str) -> native::Message {
        native::Message {
            message_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn waiting_messages_go_in_one_batch_and_each_gets_its_offset() {
        let lanes = Lanes::default();
        let (first, start) = lanes.push(&key(), message("a"));
        assert!(start, "the first send starts a batch");
        let (second, also) = lanes.push(&key(), message("b"));
        assert!(also, "room for another batch in flight");
        let batch = lanes.next_batch(&key()).unwrap();
        assert_eq!(batch.messages.len(), 2);
        batch.answer(Ok((0, 10)));
        assert_eq!(first.blocking_recv().unwrap(), Ok((0, 10)));
        assert_eq!(second.blocking_recv().unwrap(), Ok((0, 11)));
        // Both senders find nothing more and give their places back.
        assert!(lanes.next_batch(&key()).is_none());
        assert!(lanes.next_batch(&key()).is_none());
        assert!(
            lanes.lanes.lock().unwrap().is_empty(),
            "an idle lane is forgotten"
        );
    }

    #[test]
    fn at_most_a_few_batches_of_a_lane_are_in_flight_and_a_batch_is_bounded() {
        let lanes = Lanes::default();
        let starts = (0..200)
            .filter(|i| lanes.push(&key(), message(&i.to_string())).1)
            .count();
        assert_eq!(starts, IN_FLIGHT_MAX);
        let sizes: Vec<usize> = std::iter::from_fn(|| lanes.next_batch(&key()))
            .map(|b| b.messages.len())
            .take(10)
            .collect();
        assert_eq!(sizes, vec![64, 64, 64, 8]);
    }

    #[test]
    fn a_split_batch_answers_each_message_alone() {
        let lanes = Lanes::default();
        let (a, _) = lanes.push(&key(), message("a"));
        let (b, _) = lanes.push(&key(), message("b"));
        let parts = lanes.next_batch(&key()).unwrap().split();
        assert_eq!(parts.len(), 2);
        let mut parts = parts.into_iter();
        parts.next().unwrap().answer(Ok((0, 5)));
        parts
            .next()
            .unwrap()
            .answer(Err(super::super::status::status(
                v5::Code::IllegalMessageTag,
                "bad",
            )));
        assert_eq!(a.blocking_recv().unwrap(), Ok((0, 5)));
        assert!(b.blocking_recv().unwrap().is_err());
    }
}
