//! A push consumer's queue position carried across a change of master: whether the new master
//! holds what the consumer already handled, so that it may go on from its own position instead
//! of the group's committed offset there (which may be older: the last commit before the kill
//! had no answer, or went to a slave that was not elected).
//!
//! Why this is safe, in order:
//! 1. Consumers read only up to the confirm offset, which every member of the in-sync set holds,
//!    and the controller elects only from the in-sync set (docs/DURABILITY.md). So after a clean
//!    election the new master holds every message the consumer was handed.
//! 2. An unclean election (`cluster elect --unclean`) may elect a broker that lacks some of
//!    them; it then writes new messages at those queue offsets, which a carried position would
//!    skip. The check below catches that: the message at the queue offset of the last one
//!    handed must be the same record on the new master (same message id, same commit-log
//!    offset: replicas' logs are byte-identical prefixes of each other). If it is not, the
//!    position is dropped and the worker starts again from the new master's committed offset,
//!    which never passes what that master holds.
//! 3. A position never moves past a message neither handled nor handed back (push.rs), so a
//!    carried position skips nothing the consumer owes.
//!
//! Pure: the worker pulls the probe and acts on the [`Verdict`].

use proto::client::PullStatus;

use crate::consumer::PullResult;
use crate::message::ReceivedMessage;

/// The last message a queue's worker handled (or handed back): what a new master must hold for
/// the worker's position to carry over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Handled {
    pub(crate) queue_offset: u64,
    pub(crate) commit_log_offset: u64,
    pub(crate) message_id: String,
}

impl Handled {
    pub(crate) fn of(message: &ReceivedMessage) -> Handled {
        Handled {
            queue_offset: message.queue_offset,
            commit_log_offset: message.commit_log_offset,
            message_id: message.message_id.clone(),
        }
    }
}

/// What a probe of the new master (a pull of one message at the last handled message's queue
/// offset, any tag) says about the worker's position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The new master holds the same record: go on from the position in memory.
    Keep,
    /// The new master holds another record there, or its queue ends before it: its log
    /// diverged (an unclean election). Start again from its committed offset.
    Drop,
    /// Not readable there yet (above its confirm offset, or nothing written there yet): ask
    /// again; meanwhile nothing is pulled from this queue.
    Undecided,
}

/// Judges a probe's answer; see [`Verdict`].
pub(crate) fn judge(last: &Handled, probe: &PullResult) -> Verdict {
    if let Some(found) = probe.messages.first() {
        let same = found.queue_offset == last.queue_offset
            && found.commit_log_offset == last.commit_log_offset
            && found.message_id == last.message_id;
        return if same { Verdict::Keep } else { Verdict::Drop };
    }
    match probe.status {
        // Retention removed it: this broker held it and went past it.
        PullStatus::OffsetTooSmall | PullStatus::NoMatchedMessage => Verdict::Keep,
        // Its queue ends before the message. A new master elected within milliseconds of the
        // kill may not have indexed or confirmed its last records yet; one that never had the
        // message (an unclean election) writes another there, which a later probe finds and
        // drops. Either way nothing is pulled meanwhile, so nothing is skipped.
        PullStatus::OffsetOverflow => Verdict::Undecided,
        // The entry is there but not yet confirmed, or the queue ends exactly at it (the new
        // master lacks it, and nothing new arrived yet: nothing could be skipped meanwhile).
        PullStatus::NoNewMessage | PullStatus::Found | PullStatus::Unspecified => {
            Verdict::Undecided
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::HashMap;

    fn message(queue_offset: u64, commit_log_offset: u64, message_id: &str) -> ReceivedMessage {
        ReceivedMessage {
            topic: "orders".into(),
            queue_id: 0,
            queue_offset,
            commit_log_offset,
            body: Bytes::new(),
            tag: None,
            keys: Vec::new(),
            properties: HashMap::new(),
            message_id: message_id.into(),
            born_timestamp_ms: 0,
            store_timestamp_ms: 0,
            retry_count: 0,
        }
    }

    fn probe(status: PullStatus, messages: Vec<ReceivedMessage>) -> PullResult {
        PullResult {
            status,
            messages,
            next_queue_offset: 0,
            min_queue_offset: 0,
            max_queue_offset: 0,
        }
    }

    #[test]
    fn a_new_master_holding_the_same_record_keeps_the_position() {
        let last = Handled::of(&message(41, 9_000, "m41"));
        let answer = probe(PullStatus::Found, vec![message(41, 9_000, "m41")]);
        assert_eq!(judge(&last, &answer), Verdict::Keep);
    }

    #[test]
    fn a_new_master_with_another_record_there_drops_the_position() {
        let last = Handled::of(&message(41, 9_000, "m41"));
        // Same place, another message: written by a master that never had m41.
        let other_id = probe(PullStatus::Found, vec![message(41, 9_000, "n7")]);
        assert_eq!(judge(&last, &other_id), Verdict::Drop);
        // Same message id at another commit-log offset: a retried send stored again.
        let other_place = probe(PullStatus::Found, vec![message(41, 8_500, "m41")]);
        assert_eq!(judge(&last, &other_place), Verdict::Drop);
    }

    #[test]
    fn a_new_master_whose_queue_ends_before_the_message_is_asked_again() {
        let last = Handled::of(&message(41, 9_000, "m41"));
        assert_eq!(
            judge(&last, &probe(PullStatus::OffsetOverflow, Vec::new())),
            Verdict::Undecided
        );
    }

    #[test]
    fn a_message_not_yet_confirmed_on_the_new_master_asks_again() {
        let last = Handled::of(&message(41, 9_000, "m41"));
        assert_eq!(
            judge(&last, &probe(PullStatus::NoNewMessage, Vec::new())),
            Verdict::Undecided
        );
    }

    #[test]
    fn a_message_retention_removed_keeps_the_position() {
        let last = Handled::of(&message(41, 9_000, "m41"));
        assert_eq!(
            judge(&last, &probe(PullStatus::OffsetTooSmall, Vec::new())),
            Verdict::Keep
        );
    }
}
