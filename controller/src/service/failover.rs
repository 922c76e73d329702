//! Planned switchovers (`cluster-cli cluster elect`): the request checked against the state and
//! liveness, the switchover recorded for the election loop, and the wait for its election.

use super::*;
use crate::switchover;

impl ControllerService {
    /// Checks a planned switchover request against the state and liveness
    /// ([`switchover::plan`]); answers the plan.
    pub(super) fn switchover_plan(
        &self,
        req: &pb::ElectMasterRequest,
    ) -> Result<SwitchoverPlan, Status> {
        let seen = self.liveness.seen_group(&req.group);
        let request = switchover::SwitchoverRequest {
            group: &req.group,
            target: req.broker_id,
            unclean: req.unclean,
        };
        self.state
            .read(|data| {
                switchover::plan(
                    data.state.groups.get(&req.group),
                    &seen,
                    request,
                    Instant::now(),
                    &self.election.timing,
                )
            })
            .map_err(|refusal| error(refusal.code(), refusal.to_string()))
    }

    pub(super) async fn elect_master(
        &self,
        request: Request<pb::ElectMasterRequest>,
    ) -> Result<Response<pb::ElectMasterResponse>, Status> {
        write_at_leader!(self, request, elect_master);
        self.switch_over(request.into_inner()).await
    }

    /// A master's own handover (members only): a clean switchover of its group.
    pub(super) async fn hand_over(
        &self,
        request: Request<pb::ElectMasterRequest>,
    ) -> Result<Response<pb::ElectMasterResponse>, Status> {
        write_at_leader!(self, request, hand_over);
        let req = request.into_inner();
        if req.unclean {
            return Err(error(
                ErrorCode::BadRequest,
                "a handover is never unclean: an unclean election is an admin's (ElectMaster)",
            ));
        }
        self.switch_over(req).await
    }

    /// Runs a planned switchover on the leader and waits for its election.
    async fn switch_over(
        &self,
        req: pb::ElectMasterRequest,
    ) -> Result<Response<pb::ElectMasterResponse>, Status> {
        if req.group.is_empty() {
            return Err(error(ErrorCode::BadRequest, "group is required"));
        }
        if req.unclean && req.broker_id.is_none() {
            return Err(error(
                ErrorCode::BadRequest,
                "an unclean election needs broker_id: the controller never picks a broker that \
                 may lack acknowledged messages by itself",
            ));
        }
        // Judge the request against the latest state, confirmed by a quorum.
        self.raft
            .ensure_linearizable()
            .await
            .map_err(|err| unavailable(format!("cannot confirm leadership: {err}")))?;
        let plan = self.switchover_plan(&req)?;
        let target = plan.target;
        let from_epoch = plan.master_epoch;
        let (id, outcome) = self
            .election
            .leases
            .start_switchover(&req.group, plan)
            .map_err(|running| {
                error(
                    ErrorCode::Conflict,
                    format!(
                        "a switchover of broker group {:?} to broker {} is already running \
                         (started {} ms ago); wait for it to end",
                        req.group,
                        running.target,
                        running.started.elapsed().as_millis()
                    ),
                )
            })?;
        tracing::info!(group = %req.group, target, unclean = req.unclean, master_epoch = from_epoch, "planned switchover started; asking the master to resign");
        self.election.wake.notify_one();
        let end = match tokio::time::timeout(SWITCHOVER_WAIT_MAX, outcome).await {
            Ok(Ok(end)) => end,
            Ok(Err(_)) => SwitchoverEnd::Abandoned {
                reason: "the controller stopped leading before the election".to_owned(),
            },
            Err(_) => {
                let reason = format!(
                    "broker {target} was not elected within {} s",
                    SWITCHOVER_WAIT_MAX.as_secs()
                );
                self.election.leases.end_switchover(
                    &req.group,
                    id,
                    SwitchoverEnd::Abandoned {
                        reason: reason.clone(),
                    },
                );
                SwitchoverEnd::Abandoned { reason }
            }
        };
        let (view, master_now) = self.state.read(|data| {
            let group = data.state.groups.get(&req.group);
            (
                group_view(&data.state, &req.group),
                group.map(|g| (g.master_id, g.master_epoch)),
            )
        });
        match end {
            SwitchoverEnd::Elected {
                possibly_lost_bytes,
                ..
            } => Ok(Response::new(pb::ElectMasterResponse {
                group: view,
                possibly_lost_bytes,
            })),
            // The loop gave up or we stopped waiting; but the target may have been elected just
            // then: the state says.
            SwitchoverEnd::Abandoned { .. }
                if master_now.is_some_and(|(m, e)| m == Some(target) && e > from_epoch) =>
            {
                Ok(Response::new(pb::ElectMasterResponse {
                    group: view,
                    possibly_lost_bytes: 0,
                }))
            }
            SwitchoverEnd::Abandoned { reason } => {
                let (master, epoch) = master_now.unwrap_or((None, 0));
                let now = match master {
                    Some(id) => format!("broker {id} is master at master epoch {epoch}"),
                    None => format!("the group has no master (master epoch {epoch})"),
                };
                Err(error(
                    ErrorCode::RequestTimeout,
                    format!(
                        "switchover of broker group {:?} to broker {target} did not happen: \
                         {reason}; {now}",
                        req.group
                    ),
                ))
            }
        }
    }
}
