//! The `ConsumerGroups` gRPC service (`broker.client.v1.ConsumerGroups`) over the consumer
//! groups' state (`groups.rs`): offsets, membership, send-back. Each RPC is checked against
//! the ACL before it touches anything (`crate::access`): consume on the topic and the group, or
//! on the group alone for a heartbeat, so that a refused commit commits nothing and a refused
//! heartbeat registers no member.

use std::sync::Arc;

use proto::client::{self as wire, consumer_groups_server::ConsumerGroups};
use replication::ship::ReplicaWait;
use tonic::{Request, Response, Status};

use auth::{Action, Gate, Resource};

use crate::access::check_consume;
use crate::error::BrokerError;
use crate::groups::{check_group, ConsumerGroupState};

/// The `ConsumerGroups` gRPC service.
pub struct ConsumerGroupService {
    state: Arc<ConsumerGroupState>,
    retry: Arc<crate::retry::RetryState>,
    role: Arc<crate::role::RoleCell>,
    gate: Gate,
}

impl ConsumerGroupService {
    pub fn new(
        state: Arc<ConsumerGroupState>,
        retry: Arc<crate::retry::RetryState>,
        role: Arc<crate::role::RoleCell>,
        gate: Gate,
    ) -> Self {
        ConsumerGroupService {
            state,
            retry,
            role,
            gate,
        }
    }
}

#[tonic::async_trait]
impl ConsumerGroups for ConsumerGroupService {
    async fn commit_offset(
        &self,
        request: Request<wire::CommitOffsetRequest>,
    ) -> Result<Response<wire::CommitOffsetResponse>, Status> {
        let r = request.get_ref();
        check_consume(&self.gate, request.extensions(), &r.topic, &r.group)?;
        let r = request.into_inner();
        let role = self.role.current();
        let written = self
            .state
            .commit(&r.group, &r.topic, r.queue_id, r.queue_offset)
            .await?;
        // Under SYNC_MASTER a commit is answered, like a send, once the in-sync set holds it:
        // a failover then never rewinds a consumer past a commit it was told succeeded.
        if let Some(end_offset) = written {
            match role.wait_replicated(end_offset).await {
                ReplicaWait::Replicated => {}
                ReplicaWait::Timeout => {
                    return Err(BrokerError::NotReplicated {
                        reason: "the in-sync set did not hold it within slave_timeout_ms",
                    }
                    .into())
                }
                ReplicaWait::NotEnoughReplicas => {
                    return Err(BrokerError::NotReplicated {
                        reason: "fewer in-sync replicas than min_in_sync_replicas",
                    }
                    .into())
                }
                ReplicaWait::Deposed => {
                    return Err(BrokerError::CannotAcknowledge {
                        reason: "another master was elected while the commit waited".into(),
                    }
                    .into())
                }
            }
        }
        Ok(Response::new(wire::CommitOffsetResponse {}))
    }

    async fn query_offset(
        &self,
        request: Request<wire::QueryOffsetRequest>,
    ) -> Result<Response<wire::QueryOffsetResponse>, Status> {
        let r = request.get_ref();
        check_consume(&self.gate, request.extensions(), &r.topic, &r.group)?;
        let r = request.into_inner();
        check_group(&r.group)?;
        let found = self.state.query(&r.group, &r.topic, r.queue_id).await;
        Ok(Response::new(wire::QueryOffsetResponse {
            found: found.is_some(),
            queue_offset: found.unwrap_or(0),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<wire::HeartbeatRequest>,
    ) -> Result<Response<wire::HeartbeatResponse>, Status> {
        let group = Resource::Group(&request.get_ref().group);
        self.gate
            .check(request.extensions(), Action::Consume, group)?;
        let r = request.into_inner();
        let members = self.state.heartbeat(&r.group, &r.client_id)?;
        Ok(Response::new(wire::HeartbeatResponse { members }))
    }

    async fn send_back(
        &self,
        request: Request<wire::SendBackRequest>,
    ) -> Result<Response<wire::SendBackResponse>, Status> {
        let r = request.get_ref();
        check_consume(&self.gate, request.extensions(), &r.topic, &r.group)?;
        let r = request.into_inner();
        let (dead_lettered, retry_count) = self
            .retry
            .send_back(&r.group, r.commit_log_offset, &r.topic, r.queue_offset)
            .await?;
        Ok(Response::new(wire::SendBackResponse {
            dead_lettered,
            retry_count,
        }))
    }
}
