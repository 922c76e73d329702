//! Connections to brokers by address, shared by a client's producer or consumer: one HTTP/2
//! channel per broker address, opened on first use and kept.
//!
//! A routed client talks to every broker group's master; which address that is comes from the
//! route and changes with failover, so connections are made lazily from addresses, never up
//! front. A broker that is down costs a failed request (connection refused, or the connect
//! timeout when it does not answer at all), not a stuck client.
//!
//! Every call on these channels is signed with the client's credentials, when it has some
//! (`auth::Signed::with_user`: upstream's `authorization` and `x-mq-date-time` headers), so a
//! broker with `acl_enabled` knows the user; without credentials the calls are anonymous.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use auth::{Credentials, SignedChannel};
use proto::client::broker_client::BrokerClient;
use proto::client::consumer_groups_client::ConsumerGroupsClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;
use crate::producer::RESPONSE_BYTES_MAX;

/// Longest wait for a TCP connection to a broker. A partitioned broker (packets dropped) costs
/// this much per attempt; a stopped one answers "refused" at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The channels of one client, by broker address, signed as its user.
#[derive(Default)]
pub(crate) struct BrokerChannels {
    channels: Mutex<HashMap<String, SignedChannel>>,
    credentials: Option<Credentials>,
}

/// `channel`, every call signed with `credentials` (none: anonymous).
pub(crate) fn signed(channel: Channel, credentials: Option<&Credentials>) -> SignedChannel {
    auth::Signed::unsigned(channel).with_user(credentials.cloned())
}

impl BrokerChannels {
    pub fn new(credentials: Option<Credentials>) -> BrokerChannels {
        BrokerChannels {
            channels: Mutex::default(),
            credentials,
        }
    }

    /// Connects to `addr` now (so that a wrong address fails at once) and keeps the channel.
    pub async fn connect(&self, addr: &str) -> Result<SignedChannel, ClientError> {
        let channel = signed(endpoint(addr)?.connect().await?, self.credentials.as_ref());
        self.channels
            .lock()
            .expect("broker channels lock")
            .insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    /// The channel to `addr`, made (lazily: nothing is sent yet) on first use.
    pub fn get(&self, addr: &str) -> Result<SignedChannel, ClientError> {
        let mut channels = self.channels.lock().expect("broker channels lock");
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = signed(endpoint(addr)?.connect_lazy(), self.credentials.as_ref());
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    pub fn broker(&self, addr: &str) -> Result<BrokerClient<SignedChannel>, ClientError> {
        Ok(BrokerClient::new(self.get(addr)?).max_decoding_message_size(RESPONSE_BYTES_MAX))
    }

    pub fn consumer_groups(
        &self,
        addr: &str,
    ) -> Result<ConsumerGroupsClient<SignedChannel>, ClientError> {
        Ok(ConsumerGroupsClient::new(self.get(addr)?))
    }
}

/// The endpoint of a broker at `addr`, through `proto::dial` (TCP settings, the process's TLS).
pub(crate) fn endpoint(addr: &str) -> Result<Endpoint, ClientError> {
    proto::dial::endpoint(addr, CONNECT_TIMEOUT).map_err(|_| ClientError::Invalid {
        reason: "broker address is not host:port",
    })
}
