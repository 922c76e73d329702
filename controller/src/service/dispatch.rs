//! The `Controller` gRPC trait: each RPC's permission checked by the gate before anything is
//! read or changed, the audited ones recorded, then handed to the inherent method of the same
//! name in its family's file (an inherent method is found before the trait's when called by
//! path).
//!
//! What each RPC needs, when the ACL is on (`acl_enabled`):
//! - member-only RPCs (registration, heartbeats, a group's topics, in-sync set changes, the
//!   group and ACL watches, a master's handover, routes for a broker's clients): nothing here,
//!   the `MemberGuard` admitted a member already;
//! - routes (`GetRoute`, `WatchRoutes`), which producers and consumers read: `send` or
//!   `consume` on each topic;
//! - a consumer group's settings (`GetGroupSettings`): `consume` on the group, or `admin`;
//! - everything else, changes and operators' views alike (topics created, deleted, listed;
//!   groups' settings and drains; elections; cluster list; quorum status and membership; users
//!   and the ACL): `admin` on the cluster. The cluster list and status name every broker and
//!   controller address, which an application has no need of.
//!
//! Audited (`audit.rs`), allowed or refused: unclean elections, topic deletions, and every
//! change to users or policies.

use std::future::Future;

use auth::{Action, Caller, Resource};
use serde_json::{json, Value};

use super::*;
use crate::audit::{Outcome, Record};

/// The caller's name as the guard established it (`anonymous` without one).
fn caller_name<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Caller>()
        .map(Caller::name)
        .unwrap_or("anonymous")
        .to_owned()
}

impl ControllerService {
    /// `admin` on the cluster.
    fn admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.gate
            .check(request.extensions(), Action::Admin, Resource::Cluster)
    }

    /// Route reads: someone who may send to or consume from every one of `topics` (a known user
    /// at least, so that nobody holds a watch stream open anonymously by naming no topic).
    fn topic_user<T>(&self, request: &Request<T>, topics: &[String]) -> Result<(), Status> {
        if topics.is_empty() {
            return self.gate.check_user(request.extensions());
        }
        for topic in topics {
            if !self
                .gate
                .allows(request.extensions(), Action::Send, Resource::Topic(topic))
            {
                self.gate.check(
                    request.extensions(),
                    Action::Consume,
                    Resource::Topic(topic),
                )?;
            }
        }
        Ok(())
    }

    /// A consumer group's settings: its consumers, or an admin.
    fn group_reader<T>(&self, request: &Request<T>, group: &str) -> Result<(), Status> {
        if self
            .gate
            .allows(request.extensions(), Action::Admin, Resource::Cluster)
        {
            return Ok(());
        }
        self.gate.check(
            request.extensions(),
            Action::Consume,
            Resource::Group(group),
        )
    }

    /// Checks `admin`, runs `call`, and records the attempt in the audit log: a refusal by the
    /// gate here, the outcome where the call is carried out (on the leader, or here when this
    /// controller answers itself), not on a follower that only forwards it (the leader records
    /// it), so that each attempt is recorded once.
    async fn audited<T, R, Fut>(
        &self,
        request: Request<T>,
        action: &str,
        arguments: Value,
        call: impl FnOnce(Request<T>) -> Fut,
    ) -> Result<Response<R>, Status>
    where
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        let user = caller_name(&request);
        let remote = request.remote_addr();
        let record = |outcome| {
            self.audit.record(Record {
                user: &user,
                remote,
                action,
                arguments: arguments.clone(),
                outcome,
            })
        };
        if let Err(refused) = self.admin(&request) {
            record(Outcome::of::<()>(&Err(refused.clone())));
            return Err(refused);
        }
        let here = self.is_leader() || request.metadata().contains_key(FORWARDED_METADATA_KEY);
        let result = call(request).await;
        if here {
            record(Outcome::of(&result));
        }
        result
    }
}

/// The arguments of a policy change as the audit log shows them.
fn policy_arguments(policy: Option<&pb::AclPolicy>) -> Value {
    match policy {
        Some(policy) => json!({
            "user": policy.user,
            "resource": policy.resource,
            "actions": policy.actions,
            "effect": policy.effect,
        }),
        None => Value::Null,
    }
}

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    type WatchRoutesStream = routes::RouteUpdates;
    type WatchGroupStream = brokers::GroupViews;
    type WatchAclStream = users::AclUpdates;

    async fn register_broker(
        &self,
        request: Request<pb::RegisterBrokerRequest>,
    ) -> Result<Response<pb::RegisterBrokerResponse>, Status> {
        ControllerService::register_broker(self, request).await
    }

    async fn broker_heartbeat(
        &self,
        request: Request<pb::BrokerHeartbeatRequest>,
    ) -> Result<Response<pb::BrokerHeartbeatResponse>, Status> {
        ControllerService::broker_heartbeat(self, request).await
    }

    async fn elect_master(
        &self,
        request: Request<pb::ElectMasterRequest>,
    ) -> Result<Response<pb::ElectMasterResponse>, Status> {
        let req = request.get_ref();
        if !req.unclean {
            self.admin(&request)?;
            return ControllerService::elect_master(self, request).await;
        }
        let arguments = json!({ "group": req.group, "broker_id": req.broker_id });
        self.audited(request, "cluster.elect_unclean", arguments, |request| {
            ControllerService::elect_master(self, request)
        })
        .await
    }

    async fn group_topics(
        &self,
        request: Request<pb::GroupTopicsRequest>,
    ) -> Result<Response<pb::GroupTopicsResponse>, Status> {
        ControllerService::group_topics(self, request).await
    }

    async fn watch_group(
        &self,
        request: Request<pb::WatchGroupRequest>,
    ) -> Result<Response<Self::WatchGroupStream>, Status> {
        ControllerService::watch_group(self, request).await
    }

    async fn alter_in_sync_set(
        &self,
        request: Request<pb::AlterInSyncSetRequest>,
    ) -> Result<Response<pb::AlterInSyncSetResponse>, Status> {
        ControllerService::alter_in_sync_set(self, request).await
    }

    async fn get_route(
        &self,
        request: Request<pb::GetRouteRequest>,
    ) -> Result<Response<pb::TopicRoute>, Status> {
        self.topic_user(&request, std::slice::from_ref(&request.get_ref().topic))?;
        ControllerService::get_route(self, request).await
    }

    async fn watch_routes(
        &self,
        request: Request<pb::WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        self.topic_user(&request, &request.get_ref().topics)?;
        ControllerService::watch_routes(self, request).await
    }

    async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        self.admin(&request)?;
        ControllerService::create_topic(self, request).await
    }

    async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        let arguments = json!({ "topic": request.get_ref().topic });
        self.audited(request, "topic.delete", arguments, |request| {
            ControllerService::delete_topic(self, request)
        })
        .await
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        self.admin(&request)?;
        ControllerService::list_topics(self, request).await
    }

    async fn set_group_settings(
        &self,
        request: Request<pb::SetGroupSettingsRequest>,
    ) -> Result<Response<pb::SetGroupSettingsResponse>, Status> {
        self.admin(&request)?;
        ControllerService::set_group_settings(self, request).await
    }

    async fn set_group_drained(
        &self,
        request: Request<pb::SetGroupDrainedRequest>,
    ) -> Result<Response<pb::SetGroupDrainedResponse>, Status> {
        self.admin(&request)?;
        ControllerService::set_group_drained(self, request).await
    }

    async fn get_group_settings(
        &self,
        request: Request<pb::GetGroupSettingsRequest>,
    ) -> Result<Response<pb::GroupSettings>, Status> {
        self.group_reader(&request, &request.get_ref().group)?;
        ControllerService::get_group_settings(self, request).await
    }

    async fn cluster_list(
        &self,
        request: Request<pb::ClusterListRequest>,
    ) -> Result<Response<pb::ClusterListResponse>, Status> {
        self.admin(&request)?;
        ControllerService::cluster_list(self, request).await
    }

    async fn status(
        &self,
        request: Request<pb::ControllerStatusRequest>,
    ) -> Result<Response<pb::ControllerStatusResponse>, Status> {
        self.admin(&request)?;
        ControllerService::status(self, request).await
    }

    async fn node_status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::ControllerNodeStatus>, Status> {
        self.admin(&request)?;
        ControllerService::node_status(self, request).await
    }

    async fn add_controller(
        &self,
        request: Request<pb::AddControllerRequest>,
    ) -> Result<Response<pb::AddControllerResponse>, Status> {
        self.admin(&request)?;
        ControllerService::add_controller(self, request).await
    }

    async fn remove_controller(
        &self,
        request: Request<pb::RemoveControllerRequest>,
    ) -> Result<Response<pb::RemoveControllerResponse>, Status> {
        self.admin(&request)?;
        ControllerService::remove_controller(self, request).await
    }

    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        let req = request.get_ref();
        let arguments = json!({ "name": req.name, "admin": req.admin, "secret_key": "set" });
        self.audited(request, "user.create", arguments, |request| {
            ControllerService::create_user(self, request)
        })
        .await
    }

    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        let req = request.get_ref();
        let secret = if req.secret_key.is_some() {
            "set"
        } else {
            "unchanged"
        };
        let arguments = json!({ "name": req.name, "admin": req.admin, "secret_key": secret });
        self.audited(request, "user.update", arguments, |request| {
            ControllerService::update_user(self, request)
        })
        .await
    }

    async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        let arguments = json!({ "name": request.get_ref().name });
        self.audited(request, "user.delete", arguments, |request| {
            ControllerService::delete_user(self, request)
        })
        .await
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.admin(&request)?;
        ControllerService::list_users(self, request).await
    }

    async fn create_acl(
        &self,
        request: Request<pb::AclPolicyRequest>,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        let arguments = policy_arguments(request.get_ref().policy.as_ref());
        self.audited(request, "acl.create", arguments, |request| {
            ControllerService::put_acl(self, request, false)
        })
        .await
    }

    async fn update_acl(
        &self,
        request: Request<pb::AclPolicyRequest>,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        let arguments = policy_arguments(request.get_ref().policy.as_ref());
        self.audited(request, "acl.update", arguments, |request| {
            ControllerService::put_acl(self, request, true)
        })
        .await
    }

    async fn delete_acl(
        &self,
        request: Request<pb::DeleteAclRequest>,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        let req = request.get_ref();
        let arguments = json!({ "user": req.user, "resource": req.resource });
        self.audited(request, "acl.delete", arguments, |request| {
            ControllerService::delete_acl(self, request)
        })
        .await
    }

    async fn list_acls(
        &self,
        request: Request<pb::ListAclsRequest>,
    ) -> Result<Response<pb::ListAclsResponse>, Status> {
        self.admin(&request)?;
        ControllerService::list_acls(self, request).await
    }

    async fn hand_over(
        &self,
        request: Request<pb::ElectMasterRequest>,
    ) -> Result<Response<pb::ElectMasterResponse>, Status> {
        ControllerService::hand_over(self, request).await
    }

    async fn route_for_broker(
        &self,
        request: Request<pb::GetRouteRequest>,
    ) -> Result<Response<pb::TopicRoute>, Status> {
        ControllerService::route_for_broker(self, request).await
    }

    async fn watch_acl(
        &self,
        request: Request<pb::WatchAclRequest>,
    ) -> Result<Response<Self::WatchAclStream>, Status> {
        ControllerService::watch_acl(self, request).await
    }
}
