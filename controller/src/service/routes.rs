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
        self.route_of(request.into_inner().topic)
    }

    /// `GetRoute` for a broker (members only): the same answer, forwarded as a member's call.
    pub(super) async fn route_for_broker(
        &self,
        request: Request<pb::GetRouteRequest>,
    ) -> Result<Response<pb::TopicRoute>, Status> {
        read_at_leader!(self, request, route_for_broker);
        self.route_of(request.into_inner().topic)
    }

    fn route_of(&self, topic: String) -> Result<Response<pb::TopicRoute>, Status> {
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
        let state = self.state.clone();
        let liveness = self.liveness.clone();
        let updates = self.watch_while_leader(Some(self.liveness.changes()), move || {
            let alive = |g: &str, id: u64| liveness.is_alive(g, id);
            let routes = state.read(|data| {
                topics
                    .iter()
                    .map(|t| topic_route(&data.state, t, &alive))
                    .collect()
            });
            Some(pb::RouteUpdate { routes })
        });
        Ok(Response::new(updates))
    }
}
