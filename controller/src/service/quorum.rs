//! The cluster and the quorum as operators see them: cluster list, controller status (each
//! member's own view, its Raft health included), and membership changes.

use super::*;

impl ControllerService {
    pub(super) fn own_node_status(&self) -> pb::ControllerNodeStatus {
        let metrics = self.raft.metrics();
        // The core holds the sending side: a closed channel means it is gone.
        let core_running = metrics.has_changed().is_ok();
        let metrics = metrics.borrow();
        pb::ControllerNodeStatus {
            problem: admission::health(&metrics, core_running).unwrap_or_default(),
            id: self.id,
            state: state_name(metrics.state).to_owned(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|id| id.index),
            snapshot_index: metrics.snapshot.map(|id| id.index),
        }
    }

    /// One group of cluster list. Only the leader has heard heartbeats: elsewhere the offsets
    /// and lags are 0 and absent.
    pub(super) fn group_detail(
        &self,
        name: &str,
        group: &BrokerGroup,
        leader: bool,
    ) -> pb::GroupDetail {
        let seen = |id: u64| leader.then(|| self.liveness.seen(name, id)).flatten();
        let master_seen = group.master_id.and_then(seen);
        let brokers = group
            .brokers
            .values()
            .map(|b| {
                let seen = seen(b.id);
                let lag = replica_lag(group, b.id, seen.as_ref(), master_seen.as_ref());
                pb::BrokerView {
                    broker_id: b.id,
                    addr: b.addr.clone(),
                    role: if group.master_id == Some(b.id) {
                        pb::BrokerRole::Master as i32
                    } else {
                        pb::BrokerRole::Slave as i32
                    },
                    configured_role: role_to_wire(b.configured_role) as i32,
                    alive: self.alive(name, b.id),
                    last_heartbeat_ms_ago: seen.as_ref().map(|s| s.at.elapsed().as_millis() as u64),
                    max_offset: seen.as_ref().map(|s| s.max_offset).unwrap_or(0),
                    in_sync: group.in_sync_set.contains(&b.id),
                    confirm_offset: seen.as_ref().map(|s| s.confirm_offset).unwrap_or(0),
                    lag_bytes: lag.lag_bytes,
                    lag_ms: lag.lag_ms,
                    replica_connected: lag.connected,
                    log_epoch: seen.as_ref().map(|s| s.log_epoch).unwrap_or(0),
                    election_priority: b.election_priority,
                    incarnation: b.incarnation,
                    store: seen.as_ref().map(|s| s.store.to_wire()),
                }
            })
            .collect();
        pb::GroupDetail {
            name: name.to_owned(),
            cluster: group.cluster.clone(),
            master_id: group.master_id,
            master_epoch: group.master_epoch,
            in_sync_set: group.in_sync_set.iter().copied().collect(),
            in_sync_set_epoch: group.in_sync_set_epoch,
            brokers,
            replication: group_replication(group) as i32,
            drained: group.drained,
        }
    }

    pub(super) async fn cluster_list(
        &self,
        request: Request<pb::ClusterListRequest>,
    ) -> Result<Response<pb::ClusterListResponse>, Status> {
        read_at_leader!(self, request, cluster_list);
        let leader = self.is_leader();
        let groups = self.state.read(|data| {
            data.state
                .groups
                .iter()
                .map(|(name, group)| self.group_detail(name, group, leader))
                .collect()
        });
        Ok(Response::new(pb::ClusterListResponse { groups }))
    }

    pub(super) async fn status(
        &self,
        request: Request<pb::ControllerStatusRequest>,
    ) -> Result<Response<pb::ControllerStatusResponse>, Status> {
        read_at_leader!(self, request, status);
        // Each peer's NodeStatus is gated like this call: it goes as this caller.
        let identity = Identity::of(&request);
        let (leader_id, term, nodes, voters, replication) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            let membership = metrics.membership_config.membership();
            let nodes: Vec<(NodeId, String)> = membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            (
                metrics.current_leader,
                metrics.current_term,
                nodes,
                voters,
                metrics.replication.clone(),
            )
        };
        let leader_addr = leader_id
            .and_then(|id| nodes.iter().find(|(n, _)| *n == id))
            .map(|(_, addr)| addr.clone())
            .unwrap_or_default();
        let mut members = Vec::new();
        for (id, addr) in nodes {
            let status = if id == self.id {
                Some(self.own_node_status())
            } else {
                match self.peer(&addr) {
                    Ok(mut client) => tokio::time::timeout(
                        NODE_STATUS_TIMEOUT,
                        client.node_status(forwarded(&identity, pb::NodeStatusRequest {})),
                    )
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .map(|r| r.into_inner()),
                    Err(_) => None,
                }
            };
            members.push(pb::ControllerMember {
                id,
                addr,
                voter: voters.contains(&id),
                reachable: status.is_some(),
                status,
                matched_index: replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .map(|log_id| log_id.index),
            });
        }
        Ok(Response::new(pb::ControllerStatusResponse {
            leader_id,
            leader_addr,
            term,
            members,
        }))
    }

    pub(super) async fn node_status(
        &self,
        _request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::ControllerNodeStatus>, Status> {
        Ok(Response::new(self.own_node_status()))
    }

    pub(super) async fn add_controller(
        &self,
        request: Request<pb::AddControllerRequest>,
    ) -> Result<Response<pb::AddControllerResponse>, Status> {
        write_at_leader!(self, request, add_controller);
        let req = request.into_inner();
        let _serial = self.membership_lock.lock().await;
        let admission =
            membership::admit(&self.members(), req.id, &req.addr).map_err(membership_error)?;
        if admission == Admission::AlreadyVoter {
            return Ok(Response::new(pb::AddControllerResponse {}));
        }
        // Before anything changes: a controller that is not running would be a learner the
        // leader replicates to in vain, and the request would wait out the whole catch-up.
        membership::probe(req.id, &req.addr)
            .await
            .map_err(membership_error)?;
        if admission == Admission::New {
            // A learner first: it receives the log (or a snapshot) without counting in the quorum.
            let added = self
                .raft
                .add_learner(req.id, BasicNode::new(req.addr.clone()), false);
            match tokio::time::timeout(membership::CHANGE_COMMIT_TIMEOUT, added).await {
                Err(_) => return Err(unavailable("adding the learner timed out")),
                Ok(Err(err)) => {
                    return Err(unavailable(format!("adding the learner failed: {err}")))
                }
                Ok(Ok(_)) => {}
            }
        }
        // Promote only once it holds the log up to now: a voter that is far behind would count
        // toward the quorum without being able to serve it.
        if let Err(reason) = self.wait_caught_up(req.id).await {
            // Nothing changed, as for every other refusal: the learner goes again (also one an
            // earlier request left), so that the leader stops replicating to it.
            let removed =
                self.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([req.id])));
            if let Err(err) = removed.await {
                tracing::warn!(id = req.id, addr = %req.addr, error = %err, "could not remove a learner that did not catch up");
            }
            return Err(membership_error(MembershipError::CatchUpFailed {
                id: req.id,
                addr: req.addr,
                reason,
            }));
        }
        self.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])))
            .await
            .map_err(|err| unavailable(format!("promoting to voter failed: {err}")))?;
        Ok(Response::new(pb::AddControllerResponse {}))
    }

    pub(super) async fn remove_controller(
        &self,
        request: Request<pb::RemoveControllerRequest>,
    ) -> Result<Response<pb::RemoveControllerResponse>, Status> {
        write_at_leader!(self, request, remove_controller);
        let id = request.into_inner().id;
        let _serial = self.membership_lock.lock().await;
        let members = self.members();
        membership::check_removal(&members, id).map_err(membership_error)?;
        let change = if members.voters.contains(&id) {
            // retain = false below: the node leaves entirely, it does not stay a learner.
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        match self.change_membership(change).await {
            Ok(()) => Ok(Response::new(pb::RemoveControllerResponse {})),
            Err(err) => Err(unavailable(format!(
                "removing controller {id} failed: {err}"
            ))),
        }
    }

    /// The membership as this controller sees it now.
    pub(super) fn members(&self) -> Members {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        Members {
            nodes: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
            voters: membership.voter_ids().collect(),
        }
    }

    /// One membership change (never keeping removed voters as learners), committed within
    /// [`membership::CHANGE_COMMIT_TIMEOUT`].
    pub(super) async fn change_membership(
        &self,
        change: ChangeMembers<NodeId, BasicNode>,
    ) -> Result<(), String> {
        match tokio::time::timeout(
            membership::CHANGE_COMMIT_TIMEOUT,
            self.raft.change_membership(change, false),
        )
        .await
        {
            Err(_) => Err(format!(
                "not committed within {} ms",
                membership::CHANGE_COMMIT_TIMEOUT.as_millis()
            )),
            Ok(Err(err)) => Err(err.to_string()),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Waits until learner `id` holds the log up to the leader's last index now; gives up (with
    /// the reason) once its replicated index has not moved for
    /// [`membership::CATCH_UP_STALL_MAX`] or [`membership::CATCH_UP_TIMEOUT`] has passed.
    pub(super) async fn wait_caught_up(&self, id: NodeId) -> Result<(), String> {
        let target = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let started = tokio::time::Instant::now();
        let deadline = started + membership::CATCH_UP_TIMEOUT;
        let mut metrics = self.raft.metrics();
        let mut last_matched = None;
        let mut moved_at = started;
        loop {
            let matched = metrics
                .borrow_and_update()
                .replication
                .as_ref()
                .and_then(|r| r.get(&id).copied().flatten())
                .map(|log_id| log_id.index);
            if matched.is_some_and(|m| m >= target) {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if matched != last_matched {
                (last_matched, moved_at) = (matched, now);
            }
            let stalled_at = moved_at + membership::CATCH_UP_STALL_MAX;
            if now >= stalled_at {
                return Err(format!(
                    "it held index {} of {target}, unchanged for {} ms",
                    matched.map_or_else(|| "none".to_owned(), |m| m.to_string()),
                    membership::CATCH_UP_STALL_MAX.as_millis()
                ));
            }
            if now >= deadline {
                return Err(format!(
                    "it held index {} of {target} after {} ms",
                    matched.map_or_else(|| "none".to_owned(), |m| m.to_string()),
                    membership::CATCH_UP_TIMEOUT.as_millis()
                ));
            }
            // Woken by any change of the metrics (replication progress among them), or at the
            // next bound.
            if let Ok(Err(_)) =
                tokio::time::timeout_at(stalled_at.min(deadline), metrics.changed()).await
            {
                return Err("this controller is stopping".to_owned());
            }
        }
    }
}

fn membership_error(err: MembershipError) -> Status {
    error(err.code(), err.to_string())
}
