//! Calls only a group's master can answer (receives and what follows them), made on another
//! member: handed to the master's own v5 service, at the address the controller's group view
//! gives (`GroupView.master_v5_addr`), with the client's id and its user's signature as they
//! came ([`Origin`]), so that the master authenticates and checks the same user (the signature
//! covers its date only, so it verifies there too). The member keeps one channel per master
//! address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use proto::controller::GroupView;
use proto::v5;
use proto::v5::messaging_service_client::MessagingServiceClient;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use auth::user_sign::{AUTHORIZATION_METADATA_KEY, DATE_TIME_METADATA_KEY};

use super::status::status;
use super::CLIENT_ID_METADATA_KEY;

/// Longest the TCP connect to the master may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Most items a forwarded receive's stream may bring back (a batch, its status and time).
const STREAM_ITEMS_MAX: usize = super::consume::RECEIVE_BATCH_MAX as usize + 4;

/// A user's signature headers as a call brought them (`authorization`, `x-mq-date-time`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UserSignature {
    authorization: String,
    date_time: String,
}

impl UserSignature {
    /// The signature of a request whose caller it proved (`auth::Caller::User`); None for an
    /// anonymous one, whose headers prove nothing and are not passed on.
    pub fn of(
        metadata: &tonic::metadata::MetadataMap,
        extensions: &tonic::Extensions,
    ) -> Option<Self> {
        if !matches!(
            extensions.get::<auth::Caller>(),
            Some(auth::Caller::User(_))
        ) {
            return None;
        }
        let get = |key| {
            metadata
                .get(key)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Some(UserSignature {
            authorization: get(AUTHORIZATION_METADATA_KEY)?,
            date_time: get(DATE_TIME_METADATA_KEY)?,
        })
    }

    /// Puts the headers on a call handed on.
    pub fn apply(&self, metadata: &mut tonic::metadata::MetadataMap) {
        for (key, value) in [
            (AUTHORIZATION_METADATA_KEY, &self.authorization),
            (DATE_TIME_METADATA_KEY, &self.date_time),
        ] {
            if let Ok(value) = value.parse() {
                metadata.insert(key, value);
            }
        }
    }
}

/// Who made a call: its client, and its user's signature when it had one.
#[derive(Clone, Debug)]
pub struct Origin {
    pub client_id: String,
    pub signature: Option<UserSignature>,
}

/// Where the group's master serves v5, and channels to it.
pub struct ToMaster {
    views: Option<watch::Receiver<Option<GroupView>>>,
    clients: Mutex<HashMap<String, MessagingServiceClient<Channel>>>,
}

impl ToMaster {
    /// `views`: the controller's views of this broker's group; None for a standalone broker.
    pub fn new(views: Option<watch::Receiver<Option<GroupView>>>) -> ToMaster {
        ToMaster {
            views,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// A client of the master's v5 service, or the status saying there is none to hand to.
    fn master(&self) -> Result<MessagingServiceClient<Channel>, v5::Status> {
        let no_master = || {
            status(
                v5::Code::HaNotAvailable,
                "this broker is not its group's master and knows no master serving v5 now (an \
                 election may be running); try again",
            )
        };
        let addr = self
            .views
            .as_ref()
            .and_then(|views| views.borrow().as_ref().map(|v| v.master_v5_addr.clone()))
            .filter(|addr| !addr.is_empty())
            .ok_or_else(no_master)?;
        let mut clients = self
            .clients
            .lock()
            .expect("v5 master clients lock poisoned");
        if let Some(client) = clients.get(&addr) {
            return Ok(client.clone());
        }
        let endpoint = proto::dial::endpoint(&addr, CONNECT_TIMEOUT).map_err(|_| no_master())?;
        let client = MessagingServiceClient::new(endpoint.connect_lazy());
        clients.insert(addr, client.clone());
        Ok(client)
    }

    fn request<T>(message: T, origin: &Origin, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Ok(value) = origin.client_id.parse() {
            request.metadata_mut().insert(CLIENT_ID_METADATA_KEY, value);
        }
        if let Some(signature) = &origin.signature {
            signature.apply(request.metadata_mut());
        }
        request.set_timeout(timeout);
        request
    }

    /// A receive on the master: its stream's items, collected (at most a batch and its status).
    pub async fn receive(
        &self,
        message: v5::ReceiveMessageRequest,
        origin: &Origin,
        timeout: Duration,
    ) -> Vec<v5::ReceiveMessageResponse> {
        let failed = |status| {
            vec![v5::ReceiveMessageResponse {
                content: Some(v5::receive_message_response::Content::Status(status)),
            }]
        };
        let mut client = match self.master() {
            Ok(client) => client,
            Err(status) => return failed(status),
        };
        let mut stream = match client
            .receive_message(Self::request(message, origin, timeout))
            .await
        {
            Ok(stream) => stream.into_inner(),
            Err(err) => return failed(unreachable(&err)),
        };
        let mut items = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(item) if items.len() < STREAM_ITEMS_MAX => items.push(item),
                Ok(_) => break,
                Err(err) => return failed(unreachable(&err)),
            }
        }
        items
    }

    /// One unary call on the master; `failed` makes the answer from a status when there is
    /// no master to hand it to or it did not answer.
    async fn unary<Req, Resp, Call, Answer>(
        &self,
        message: Req,
        origin: &Origin,
        call: Call,
        failed: impl Fn(v5::Status) -> Resp,
    ) -> Resp
    where
        Call: FnOnce(MessagingServiceClient<Channel>, tonic::Request<Req>) -> Answer,
        Answer: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let client = match self.master() {
            Ok(client) => client,
            Err(status) => return failed(status),
        };
        match call(client, Self::request(message, origin, UNARY_TIMEOUT)).await {
            Ok(answer) => answer.into_inner(),
            Err(err) => failed(unreachable(&err)),
        }
    }

    pub async fn ack(
        &self,
        message: v5::AckMessageRequest,
        origin: &Origin,
    ) -> v5::AckMessageResponse {
        self.unary(
            message,
            origin,
            |mut c, r| async move { c.ack_message(r).await },
            |status| v5::AckMessageResponse {
                status: Some(status),
                entries: Vec::new(),
            },
        )
        .await
    }

    pub async fn change_invisible(
        &self,
        message: v5::ChangeInvisibleDurationRequest,
        origin: &Origin,
    ) -> v5::ChangeInvisibleDurationResponse {
        self.unary(
            message,
            origin,
            |mut c, r| async move { c.change_invisible_duration(r).await },
            |status| v5::ChangeInvisibleDurationResponse {
                status: Some(status),
                receipt_handle: String::new(),
            },
        )
        .await
    }

    pub async fn dead_letter(
        &self,
        message: v5::ForwardMessageToDeadLetterQueueRequest,
        origin: &Origin,
    ) -> v5::ForwardMessageToDeadLetterQueueResponse {
        self.unary(
            message,
            origin,
            |mut c, r| async move { c.forward_message_to_dead_letter_queue(r).await },
            |status| v5::ForwardMessageToDeadLetterQueueResponse {
                status: Some(status),
            },
        )
        .await
    }
}

/// Longest a forwarded acknowledgement or renewal may take: below the clients' 3 s.
const UNARY_TIMEOUT: Duration = Duration::from_millis(2500);

fn unreachable(err: &tonic::Status) -> v5::Status {
    status(
        v5::Code::HaNotAvailable,
        format!("the group's master did not answer: {}", err.message()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_verified_callers_signature_is_handed_on() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert(
            AUTHORIZATION_METADATA_KEY,
            "MQv2-HMAC-SHA1 x".parse().unwrap(),
        );
        metadata.insert(DATE_TIME_METADATA_KEY, "20261207T203000Z".parse().unwrap());
        let mut extensions = tonic::Extensions::new();
        assert_eq!(UserSignature::of(&metadata, &extensions), None, "anonymous");
        extensions.insert(auth::Caller::User("app".into()));
        let signature = UserSignature::of(&metadata, &extensions).unwrap();
        let mut forwarded = tonic::metadata::MetadataMap::new();
        signature.apply(&mut forwarded);
        assert_eq!(
            forwarded.get(AUTHORIZATION_METADATA_KEY),
            metadata.get(AUTHORIZATION_METADATA_KEY)
        );
        assert_eq!(
            forwarded.get(DATE_TIME_METADATA_KEY),
            metadata.get(DATE_TIME_METADATA_KEY)
        );
    }
}
