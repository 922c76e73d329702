//! Routes: where a topic's queues are, asked once (`GetRoute`) or watched (`WatchRoutes`, on the
//! leader only, pushed again whenever a route changes).

use super::*;

/// What `WatchRoutes` streams.
pub(super) type RouteUpdates = ReceiverStream<Result<pb::RouteUpdate, Status>>;

impl ControllerService {
    pub(super) fn routes(&self, topics: &[String]) -> Vec<pb::TopicRoute> {
        let alive = |g: &str, id: u64| self.alive(g, id);
        self.state.read(|data| {
            topics
                .iter()
                .map(|topic| topic_route(&data.state, topic, &alive))
                .collect()
        })
    }

    pub(super) async fn get_route(
        &self,
        request: Request<pb::GetRouteRequest>,
    ) -> Result<Response<pb::TopicRoute>, Status> {
        read_at_leader!(self, request, get_route);
        let topic = request.into_inner().topic;
        let route = self.routes(std::slice::from_ref(&topic)).remove(0);
        if route.groups.is_empty() {
            return Err(error(
                ErrorCode::TopicNotFound,
                format!("topic {} does not exist", proto::Echo(&topic)),
            ));
        }
        Ok(Response::new(route))
    }

    pub(super) async fn watch_routes(
        &self,
        request: Request<pb::WatchRoutesRequest>,
    ) -> Result<Response<RouteUpdates>, Status> {
        if !self.is_leader() {
            return Err(self.not_leader("watch routes"));
        }
        let topics = request.into_inner().topics;
        let (tx, rx) = mpsc::channel(4);
        let mut state_changes = self.state.changes();
        let mut liveness_changes = self.liveness.changes();
        let mut metrics = self.raft.metrics();
        let state = self.state.clone();
        let liveness = self.liveness.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                if metrics.borrow_and_update().state != ServerState::Leader {
                    let _ = tx
                        .send(Err(unavailable("this controller is no longer the leader")))
                        .await;
                    return;
                }
                let alive = |g: &str, id: u64| liveness.is_alive(g, id);
                let routes: Vec<_> = state.read(|data| {
                    topics
                        .iter()
                        .map(|t| topic_route(&data.state, t, &alive))
                        .collect()
                });
                if last.as_ref() != Some(&routes) {
                    let update = pb::RouteUpdate {
                        routes: routes.clone(),
                    };
                    if tx.send(Ok(update)).await.is_err() {
                        return; // the watcher went away
                    }
                    last = Some(routes);
                }
                tokio::select! {
                    changed = state_changes.changed() => if changed.is_err() { return },
                    changed = liveness_changes.changed() => if changed.is_err() { return },
                    changed = metrics.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
