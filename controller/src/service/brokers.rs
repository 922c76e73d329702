//! The brokers' internal calls: registration, heartbeats and the lease their answers grant,
//! the topics a broker must hold, and the master's in-sync set changes. Only members make them
//! (the `auth` guard refuses the rest before they get here).

use super::*;
use crate::gone::GoneReport;
use crate::lease::lease_eligible_epoch;

/// What `WatchGroup` streams.
pub(super) type GroupViews = ReceiverStream<Result<pb::GroupView, Status>>;

impl ControllerService {
    /// NOT_FOUND unless broker `broker_id` of `group` is registered: it must register first.
    fn require_registered(&self, group: &str, broker_id: u64) -> Result<(), Status> {
        let known = self.state.read(|data| {
            data.state
                .groups
                .get(group)
                .is_some_and(|g| g.brokers.contains_key(&broker_id))
        });
        if known {
            return Ok(());
        }
        Err(error(
            ErrorCode::NotFound,
            format!(
                "broker {broker_id} of group {} is not registered; register first",
                proto::Echo(group)
            ),
        ))
    }

    /// Streams a broker's group view on the leader: now, then at each change, until the broker
    /// goes away or this node stops leading (the stream then ends with UNAVAILABLE, and the
    /// broker watches on the new leader).
    pub(super) async fn watch_group(
        &self,
        request: Request<pb::WatchGroupRequest>,
    ) -> Result<Response<GroupViews>, Status> {
        if !self.is_leader() {
            return Err(self.not_leader("watch the group"));
        }
        let req = request.into_inner();
        self.require_registered(&req.group, req.broker_id)?;
        let state = self.state.clone();
        let views = self.watch_while_leader(None, move || {
            state.read(|data| group_view(&data.state, &req.group))
        });
        Ok(Response::new(views))
    }

    /// The heartbeat answer: the group view, and the lease that goes with it. A lease is granted
    /// only to the master of a controlled group at the incarnation it was elected with (and which
    /// is its registered one), and only after a quorum confirmed this node still leads and its
    /// state is the latest: a deposed leader that has not noticed yet must not promise a lease
    /// its successor does not know of. The view answered is the one the lease was decided on.
    pub(super) async fn lease_answer(
        &self,
        group: &str,
        broker_id: u64,
        incarnation: u64,
        received_at: Instant,
    ) -> pb::BrokerHeartbeatResponse {
        let leased_epoch =
            |state: &ClusterState| lease_eligible_epoch(state, group, broker_id, incarnation);
        let read = |state: &ClusterState| pb::BrokerHeartbeatResponse {
            metadata_revision: state.metadata_revision,
            group: group_view(state, group),
            ..Default::default()
        };
        if self.state.read(|data| leased_epoch(&data.state)).is_none() {
            return self.state.read(|data| read(&data.state));
        }
        if let Err(err) = self.raft.ensure_linearizable().await {
            tracing::debug!(group, broker_id, error = %err, "leadership not confirmed; no lease");
            return self.state.read(|data| read(&data.state));
        }
        let (mut answer, epoch) = self
            .state
            .read(|data| (read(&data.state), leased_epoch(&data.state)));
        if let Some(epoch) = epoch {
            match self.election.leases.grant(group, epoch, received_at) {
                GrantDecision::Granted => {
                    answer.lease_ms = self.election.timing.broker_lease.as_millis() as u64;
                }
                GrantDecision::Resign => answer.resign = true,
                GrantDecision::Fenced => {}
            }
        }
        answer
    }

    pub(super) async fn register_broker(
        &self,
        request: Request<pb::RegisterBrokerRequest>,
    ) -> Result<Response<pb::RegisterBrokerResponse>, Status> {
        let received_at = Instant::now();
        write_at_leader!(self, request, register_broker);
        let req = request.into_inner();
        let role = match pb::BrokerRole::try_from(req.role) {
            Ok(pb::BrokerRole::Master) => ConfiguredRole::Master,
            Ok(pb::BrokerRole::Slave) => ConfiguredRole::Slave,
            Ok(pb::BrokerRole::Controlled) => ConfiguredRole::Controlled,
            _ => {
                return Err(error(
                    ErrorCode::BadRequest,
                    "role must be MASTER, SLAVE or CONTROLLED",
                ))
            }
        };
        let replication = replication_from_wire(req.replication);
        self.refuse_replication_clash(&req.group, req.broker_id, replication)?;
        self.write(Command::RegisterBroker {
            cluster: req.cluster,
            group: req.group.clone(),
            broker: BrokerInfo {
                id: req.broker_id,
                addr: req.addr,
                configured_role: role,
                incarnation: req.incarnation,
                election_priority: req.election_priority,
                replication,
                v5_addr: req.v5_addr,
            },
        })
        .await?;
        // Counts as a heartbeat, so that the broker is an election candidate at once. Not synced
        // yet: the broker syncs right after registering and reports it.
        self.liveness.beat(
            &req.group,
            req.broker_id,
            Heartbeat {
                max_offset: req.max_offset,
                incarnation: req.incarnation,
                log_epoch: req.log_epoch,
                ..Heartbeat::default()
            },
            received_at,
        );
        self.election.wake.notify_one();
        let group = self.state.read(|data| group_view(&data.state, &req.group));
        Ok(Response::new(pb::RegisterBrokerResponse { group }))
    }

    /// Refuses (CONFLICT, which the broker does not retry) a registration whose replication
    /// mode differs from an alive broker's of the same group: the mode is the group's
    /// (`BrokerGroup::replication_clash`).
    fn refuse_replication_clash(
        &self,
        group: &str,
        broker_id: u64,
        mode: ReplicationMode,
    ) -> Result<(), Status> {
        let clash = self.state.read(|data| {
            data.state.groups.get(group).and_then(|g| {
                g.replication_clash(broker_id, mode, |id| self.liveness.is_alive(group, id))
                    .map(|other| (other.id, other.replication))
            })
        });
        match clash {
            None => Ok(()),
            Some((other, theirs)) => Err(error(
                ErrorCode::Conflict,
                format!(
                    "broker group {} replicates as {} (alive broker {other} registered it);                      broker {broker_id} registers {}: give every broker of a group the same                      replication_mode (to change a group's mode, stop all its brokers, then                      start them with the new one)",
                    proto::Echo(group),
                    theirs.setting_name(),
                    mode.setting_name()
                ),
            )),
        }
    }

    pub(super) async fn broker_heartbeat(
        &self,
        request: Request<pb::BrokerHeartbeatRequest>,
    ) -> Result<Response<pb::BrokerHeartbeatResponse>, Status> {
        // Before anything else: the lease is recorded as granted at this instant, which must not
        // be earlier than the broker sent the heartbeat (it cannot be) and should be as early as
        // possible (later only delays a successor).
        let received_at = Instant::now();
        write_at_leader!(self, request, broker_heartbeat);
        let req = request.into_inner();
        self.require_registered(&req.group, req.broker_id)?;
        if req.stopping {
            // Its last word: not alive from now on. No lease, and nothing else it says counts.
            tracing::info!(group = %req.group, broker_id = req.broker_id, incarnation = req.incarnation, "broker stopping");
            self.liveness
                .stopped(&req.group, req.broker_id, req.incarnation);
            let answer = self.state.read(|data| pb::BrokerHeartbeatResponse {
                metadata_revision: data.state.metadata_revision,
                group: group_view(&data.state, &req.group),
                ..Default::default()
            });
            return Ok(Response::new(answer));
        }
        self.liveness.beat(
            &req.group,
            req.broker_id,
            Heartbeat {
                max_offset: req.max_offset,
                synced_revision: req.synced_revision,
                confirm_offset: req.confirm_offset,
                replicas: req.replicas,
                incarnation: req.incarnation,
                log_epoch: req.log_epoch,
                master_epoch: req.master_epoch,
                resigned: req.resigned,
                store: StoreReport::from_wire(req.store.as_ref()),
                master_gone: GoneReport::from_wire(req.master_gone.as_ref()),
            },
            received_at,
        );
        if req.resigned || req.master_gone.is_some() {
            // A planned switchover, or a failover of a master known gone, may elect now rather
            // than at the next tick.
            self.election.wake.notify_one();
        }
        let answer = self
            .lease_answer(&req.group, req.broker_id, req.incarnation, received_at)
            .await;
        Ok(Response::new(answer))
    }

    pub(super) async fn group_topics(
        &self,
        request: Request<pb::GroupTopicsRequest>,
    ) -> Result<Response<pb::GroupTopicsResponse>, Status> {
        read_at_leader!(self, request, group_topics);
        let group = request.into_inner().group;
        Ok(Response::new(self.state.read(|data| {
            pb::GroupTopicsResponse {
                metadata_revision: data.state.metadata_revision,
                topics: data
                    .state
                    .topics_of_group(&group)
                    .into_iter()
                    .map(|(topic, queue_count, perm)| pb::GroupTopic {
                        topic,
                        queue_count,
                        perm,
                    })
                    .collect(),
                consumer_groups: data
                    .state
                    .consumer_groups
                    .iter()
                    .map(|(name, settings)| settings_to_wire(name, settings))
                    .collect(),
            }
        })))
    }

    pub(super) async fn alter_in_sync_set(
        &self,
        request: Request<pb::AlterInSyncSetRequest>,
    ) -> Result<Response<pb::AlterInSyncSetResponse>, Status> {
        write_at_leader!(self, request, alter_in_sync_set);
        let req = request.into_inner();
        if req.group.is_empty() {
            return Err(error(ErrorCode::BadRequest, "group is required"));
        }
        if req.in_sync_set.is_empty() {
            return Err(error(
                ErrorCode::BadRequest,
                "the in-sync set must name at least the master",
            ));
        }
        if req.in_sync_set.len() > IN_SYNC_SET_MAX {
            return Err(error(
                ErrorCode::BadRequest,
                format!(
                    "an in-sync set names at most {IN_SYNC_SET_MAX} brokers, not {}",
                    req.in_sync_set.len()
                ),
            ));
        }
        let in_sync_set: BTreeSet<u64> = req.in_sync_set.iter().copied().collect();
        // For the log line only: the set this proposal replaces, if the state read here is the
        // one the command will be checked against (the epoch says so).
        let replaced = self.state.read(|data| {
            data.state
                .groups
                .get(&req.group)
                .filter(|g| g.in_sync_set_epoch == req.in_sync_set_epoch)
                .map(|g| g.in_sync_set.clone())
        });
        let changed = self
            .write(Command::AlterInSyncSet {
                group: req.group.clone(),
                master_id: req.master_id,
                master_epoch: req.master_epoch,
                in_sync_set_epoch: req.in_sync_set_epoch,
                in_sync_set: in_sync_set.clone(),
            })
            .await?;
        let group = self.state.read(|data| group_view(&data.state, &req.group));
        if changed {
            tracing::info!(
                group = %req.group,
                master_id = req.master_id,
                master_epoch = req.master_epoch,
                old_in_sync_set = ?replaced,
                in_sync_set = ?in_sync_set,
                in_sync_set_epoch = req.in_sync_set_epoch + 1,
                "in-sync set changed"
            );
        }
        Ok(Response::new(pb::AlterInSyncSetResponse { group }))
    }
}
