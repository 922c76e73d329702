//! The administration and routing calls every caller makes: typed wrappers around
//! [`ControllerConnection::call`] (routes, topics, drains, cluster list, quorum status and
//! membership).

use crate::error::ControllerError;
use crate::quorum::ControllerConnection;
use crate::wire;

impl ControllerConnection {
    /// The route of a topic.
    pub async fn route(&self, topic: &str) -> Result<wire::TopicRoute, ControllerError> {
        let request = wire::GetRouteRequest {
            topic: topic.to_owned(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.get_route(request).await }
        })
        .await
    }

    /// The route of a topic, asked as a member (`RouteForBroker`): for a broker answering its
    /// clients' route queries, which checks their permission itself. Needs a member's
    /// connection ([`ControllerConnection::member`]).
    pub async fn route_for_broker(&self, topic: &str) -> Result<wire::TopicRoute, ControllerError> {
        let request = wire::GetRouteRequest {
            topic: topic.to_owned(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.route_for_broker(request).await }
        })
        .await
    }

    /// Creates a topic with `queues_per_group` queues on each of `groups` (empty: every group).
    pub async fn create_topic(
        &self,
        topic: &str,
        queues_per_group: u32,
        groups: &[String],
    ) -> Result<wire::CreateTopicResponse, ControllerError> {
        let request = wire::CreateTopicRequest {
            topic: topic.to_owned(),
            queues_per_group,
            groups: groups.to_vec(),
            perm: 0,
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.create_topic(request).await }
        })
        .await
    }

    pub async fn list_topics(&self) -> Result<wire::ListTopicsResponse, ControllerError> {
        self.call(|mut c| async move { c.list_topics(wire::ListTopicsRequest {}).await })
            .await
    }

    /// Drains (`true`) or undrains a broker group: whether that changed it, and whether the
    /// group's master applied it before the answer.
    pub async fn set_group_drained(
        &self,
        group: &str,
        drained: bool,
    ) -> Result<wire::SetGroupDrainedResponse, ControllerError> {
        let request = wire::SetGroupDrainedRequest {
            group: group.to_owned(),
            drained,
        };
        let answer = self
            .call(|mut c| {
                let request = request.clone();
                async move { c.set_group_drained(request).await }
            })
            .await?;
        Ok(answer)
    }

    pub async fn cluster_list(&self) -> Result<wire::ClusterListResponse, ControllerError> {
        self.call(|mut c| async move { c.cluster_list(wire::ClusterListRequest {}).await })
            .await
    }

    pub async fn status(&self) -> Result<wire::ControllerStatusResponse, ControllerError> {
        self.call(|mut c| async move { c.status(wire::ControllerStatusRequest {}).await })
            .await
    }

    pub async fn add_controller(&self, id: u64, addr: &str) -> Result<(), ControllerError> {
        let request = wire::AddControllerRequest {
            id,
            addr: addr.to_owned(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.add_controller(request).await }
        })
        .await
        .map(|_| ())
    }

    pub async fn remove_controller(&self, id: u64) -> Result<(), ControllerError> {
        self.call(|mut c| async move {
            c.remove_controller(wire::RemoveControllerRequest { id })
                .await
        })
        .await
        .map(|_| ())
    }

    /// A consumer group's settings (the defaults when none were set).
    pub async fn group_settings(
        &self,
        group: &str,
    ) -> Result<wire::GroupSettings, ControllerError> {
        let request = wire::GetGroupSettingsRequest {
            group: group.to_owned(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.get_group_settings(request).await }
        })
        .await
    }

    /// Sets a consumer group's settings, replicated by the quorum; every broker applies them at
    /// its next heartbeat.
    pub async fn set_group_settings(
        &self,
        settings: wire::GroupSettings,
    ) -> Result<(), ControllerError> {
        let request = wire::SetGroupSettingsRequest {
            settings: Some(settings),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.set_group_settings(request).await }
        })
        .await
        .map(|_| ())
    }
}
