//! Topics and consumer-group settings: created, deleted, listed, changed through Raft; a change
//! is answered once the groups' masters applied it (`wait_for_sync`), so that what a caller was
//! told exists is served.

use super::*;

impl ControllerService {
    /// Waits until the live master of each of `groups` reports having applied `revision` (at
    /// most [`SYNC_WAIT_MAX`] or one broker heartbeat timeout, the shorter); returns the groups
    /// that did not, and those with no live master (not waited for). So that a producer started
    /// once a topic's creation is acknowledged finds it on the brokers, not only in the route.
    pub(super) async fn wait_for_sync(&self, groups: &[String], revision: u64) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + self.liveness.timeout().min(SYNC_WAIT_MAX);
        let synced = |group: &str, id: u64| {
            self.liveness
                .seen(group, id)
                .is_some_and(|seen| seen.synced_revision >= revision)
        };
        loop {
            let masters: Vec<(String, Option<u64>)> = self.state.read(|data| {
                groups
                    .iter()
                    .map(|g| {
                        let master = data.state.groups.get(g).and_then(|group| group.master_id);
                        (g.clone(), master.filter(|id| self.alive(g, *id)))
                    })
                    .collect()
            });
            let syncing = masters
                .iter()
                .any(|(group, master)| master.is_some_and(|id| !synced(group, id)));
            if !syncing || tokio::time::Instant::now() >= deadline {
                return masters
                    .into_iter()
                    .filter(|(group, master)| !master.is_some_and(|id| synced(group, id)))
                    .map(|(group, _)| group)
                    .collect();
            }
            tokio::time::sleep(SYNC_POLL).await;
        }
    }

    pub(super) async fn create_topic(
        &self,
        request: Request<pb::CreateTopicRequest>,
    ) -> Result<Response<pb::CreateTopicResponse>, Status> {
        write_at_leader!(self, request, create_topic);
        let req = request.into_inner();
        let groups: BTreeSet<String> = if req.groups.is_empty() {
            self.state
                .read(|data| data.state.groups.keys().cloned().collect())
        } else {
            req.groups.iter().cloned().collect()
        };
        if groups.is_empty() {
            return Err(error(
                ErrorCode::BrokerGroupNotFound,
                "no broker group is registered yet",
            ));
        }
        let queues: BTreeMap<String, u32> = groups
            .into_iter()
            .map(|g| (g, req.queues_per_group))
            .collect();
        let perm = if req.perm == 0 {
            PERM_READ | PERM_WRITE
        } else {
            req.perm
        };
        let groups: Vec<String> = queues.keys().cloned().collect();
        let created = self
            .write(Command::CreateTopic {
                name: req.topic.clone(),
                queues,
                perm,
            })
            .await?;
        let revision = self.state.read(|data| data.state.metadata_revision);
        let unsynced_groups = self.wait_for_sync(&groups, revision).await;
        let route = self.routes(std::slice::from_ref(&req.topic)).remove(0);
        Ok(Response::new(pb::CreateTopicResponse {
            created,
            route: Some(route),
            unsynced_groups,
        }))
    }

    pub(super) async fn delete_topic(
        &self,
        request: Request<pb::DeleteTopicRequest>,
    ) -> Result<Response<pb::DeleteTopicResponse>, Status> {
        write_at_leader!(self, request, delete_topic);
        self.write(Command::DeleteTopic {
            name: request.into_inner().topic,
        })
        .await?;
        Ok(Response::new(pb::DeleteTopicResponse {}))
    }

    pub(super) async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        read_at_leader!(self, request, list_topics);
        let names: Vec<String> = self
            .state
            .read(|data| data.state.topics.keys().cloned().collect());
        Ok(Response::new(pb::ListTopicsResponse {
            topics: self.routes(&names),
        }))
    }

    pub(super) async fn set_group_settings(
        &self,
        request: Request<pb::SetGroupSettingsRequest>,
    ) -> Result<Response<pb::SetGroupSettingsResponse>, Status> {
        write_at_leader!(self, request, set_group_settings);
        let Some(settings) = request.into_inner().settings else {
            return Err(error(ErrorCode::BadRequest, "settings are required"));
        };
        let model = match pb::MessageModel::try_from(settings.message_model) {
            Ok(pb::MessageModel::Clustering) | Ok(pb::MessageModel::Unspecified) => {
                MessageModel::Clustering
            }
            Ok(pb::MessageModel::Broadcasting) => MessageModel::Broadcasting,
            Err(_) => return Err(error(ErrorCode::BadRequest, "unknown message model")),
        };
        self.write(Command::SetGroupSettings {
            group: settings.group,
            settings: GroupSettings {
                max_retries: settings.max_retries,
                message_model: model,
                fifo: settings.fifo,
            },
        })
        .await?;
        Ok(Response::new(pb::SetGroupSettingsResponse {}))
    }

    pub(super) async fn set_group_drained(
        &self,
        request: Request<pb::SetGroupDrainedRequest>,
    ) -> Result<Response<pb::SetGroupDrainedResponse>, Status> {
        write_at_leader!(self, request, set_group_drained);
        let req = request.into_inner();
        let changed = self
            .write(Command::SetGroupDrained {
                group: req.group.clone(),
                drained: req.drained,
            })
            .await?;
        if changed {
            tracing::warn!(group = %req.group, drained = req.drained, "broker group drain changed");
        }
        // The master applies the group view of a heartbeat answer before it reports that
        // answer's revision as synced (`link`): once it has, it refuses or takes sends as told.
        let revision = self.state.read(|data| data.state.metadata_revision);
        let master_informed = self
            .wait_for_sync(std::slice::from_ref(&req.group), revision)
            .await
            .is_empty();
        Ok(Response::new(pb::SetGroupDrainedResponse {
            changed,
            master_informed,
        }))
    }

    pub(super) async fn get_group_settings(
        &self,
        request: Request<pb::GetGroupSettingsRequest>,
    ) -> Result<Response<pb::GroupSettings>, Status> {
        read_at_leader!(self, request, get_group_settings);
        let group = request.into_inner().group;
        let settings = self.state.read(|data| {
            data.state
                .consumer_groups
                .get(&group)
                .copied()
                .unwrap_or_default()
        });
        Ok(Response::new(settings_to_wire(&group, &settings)))
    }
}
