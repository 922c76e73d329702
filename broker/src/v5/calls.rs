//! The consumption calls a group's master serves itself (a receive, an acknowledgement, a
//! change of invisibility), once `mod.rs` has admitted the caller; another member hands a
//! receive to the master (`forward`).

use std::time::Duration;

use proto::v5;

use super::forward::Origin;
use super::status::{self, status};
use super::{consume, message, name_of, receive_status, V5Service, DEADLINE_MARGIN};

impl V5Service {
    /// A receive: served here on the master, else by the master.
    pub(super) async fn receive(
        &self,
        mut request: v5::ReceiveMessageRequest,
        origin: &Origin,
        deadline: Option<Duration>,
    ) -> Vec<v5::ReceiveMessageResponse> {
        let mut receive = match consume::validate(&request) {
            Ok(receive) => receive,
            Err(refused) => return vec![receive_status(refused)],
        };
        // The answer must reach the client before its deadline, or what was handed out is lost
        // to it until its invisibility runs out.
        if let Some(deadline) = deadline {
            receive.long_polling = receive
                .long_polling
                .min(deadline.saturating_sub(DEADLINE_MARGIN));
        }
        if !self.consumption.is_master() {
            // The master's answer within the client's deadline: its long poll and a margin.
            request.long_polling_timeout =
                prost_types::Duration::try_from(receive.long_polling).ok();
            let timeout = receive.long_polling + Duration::from_millis(2500);
            return self.to_master.receive(request, origin, timeout).await;
        }
        let started = prost_types::Timestamp::from(std::time::SystemTime::now());
        match self.consumption.receive(&receive).await {
            Err(refused) => vec![receive_status(refused)],
            Ok(messages) if messages.is_empty() => vec![receive_status(status(
                v5::Code::MessageNotFound,
                "no new message for this group in this queue",
            ))],
            Ok(messages) => std::iter::once(receive_status(status::ok()))
                .chain(std::iter::once(v5::ReceiveMessageResponse {
                    content: Some(v5::receive_message_response::Content::DeliveryTimestamp(
                        started,
                    )),
                }))
                .chain(
                    messages
                        .into_iter()
                        .map(|message| v5::ReceiveMessageResponse {
                            content: Some(v5::receive_message_response::Content::Message(message)),
                        }),
                )
                .collect(),
        }
    }

    pub(super) async fn ack(&self, request: v5::AckMessageRequest) -> v5::AckMessageResponse {
        if request.entries.is_empty() || request.entries.len() > consume::ACK_ENTRIES_MAX {
            return v5::AckMessageResponse {
                status: Some(status(
                    v5::Code::BadRequest,
                    format!(
                        "an acknowledgement holds 1 to {} entries",
                        consume::ACK_ENTRIES_MAX
                    ),
                )),
                entries: Vec::new(),
            };
        }
        let (group, topic) = (name_of(&request.group), name_of(&request.topic));
        let handles: Vec<&str> = request
            .entries
            .iter()
            .map(|e| e.receipt_handle.as_str())
            .collect();
        let statuses = self.consumption.ack(&group, &topic, &handles).await;
        let entries: Vec<v5::AckMessageResultEntry> = request
            .entries
            .into_iter()
            .zip(statuses)
            .map(|(entry, status)| v5::AckMessageResultEntry {
                message_id: entry.message_id,
                receipt_handle: entry.receipt_handle,
                status: Some(status),
            })
            .collect();
        let status = entries
            .iter()
            .filter_map(|e| e.status.clone())
            .find(|s| s.code != v5::Code::Ok as i32)
            .unwrap_or_else(status::ok);
        v5::AckMessageResponse {
            status: Some(status),
            entries,
        }
    }

    pub(super) async fn change_invisible(
        &self,
        request: v5::ChangeInvisibleDurationRequest,
    ) -> v5::ChangeInvisibleDurationResponse {
        let refusal = |status| v5::ChangeInvisibleDurationResponse {
            status: Some(status),
            receipt_handle: String::new(),
        };
        let Some(invisible) = request
            .invisible_duration
            .as_ref()
            .and_then(message::millis_of)
            .map(std::time::Duration::from_millis)
            .filter(|d| *d <= std::time::Duration::from_secs(12 * 3600))
        else {
            return refusal(status(
                v5::Code::IllegalInvisibleTime,
                "invisible_duration must be 0 to 12 h",
            ));
        };
        let (group, topic) = (name_of(&request.group), name_of(&request.topic));
        match self
            .consumption
            .change_invisible(&group, &topic, &request.receipt_handle, invisible)
            .await
        {
            Ok(receipt_handle) => v5::ChangeInvisibleDurationResponse {
                status: Some(status::ok()),
                receipt_handle,
            },
            Err(status) => refusal(status),
        }
    }
}
