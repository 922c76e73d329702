//! Users and their policies (the ACL): created, changed, deleted and listed through Raft by
//! admins, and fed whole to brokers (`WatchAcl`, members only, on the leader).
//!
//! A secret key arrives in clear (TLS protects it on the wire) and is sealed here, on the
//! leader, with the cluster key before it is proposed: the Raft log, snapshots and every answer
//! hold it sealed or not at all. Input is checked here for a clear answer and again by the state
//! machine (`acl.rs`), which refuses without changing anything.

use std::sync::Mutex as StdMutex;

use auth::acl::{check_secret_key, AclError, Effect, Policy, ResourcePattern};

use super::*;
use crate::acl::AclCommand;

/// What `WatchAcl` streams.
pub(super) type AclUpdates = ReceiverStream<Result<pb::AclUpdate, Status>>;

fn bad_request(err: AclError) -> Status {
    error(ErrorCode::BadRequest, err.to_string())
}

/// A policy from its wire form: every word checked.
fn policy_from_wire(policy: &pb::AclPolicy) -> Result<Policy, AclError> {
    let resource: ResourcePattern = policy.resource.parse()?;
    let actions = policy
        .actions
        .iter()
        .map(|action| action.parse())
        .collect::<Result<_, _>>()?;
    let effect = if policy.effect.is_empty() {
        Effect::Allow
    } else {
        policy.effect.parse()?
    };
    let policy = Policy {
        resource,
        actions,
        effect,
    };
    policy.validate()?;
    Ok(policy)
}

fn policy_to_wire(user: &str, policy: &Policy) -> pb::AclPolicy {
    pb::AclPolicy {
        user: user.to_owned(),
        resource: policy.resource.to_string(),
        actions: policy.actions.iter().map(|a| a.to_string()).collect(),
        effect: policy.effect.to_string(),
    }
}

impl ControllerService {
    /// Proposes an ACL change and answers whether it changed anything, with the revision after.
    async fn write_acl(
        &self,
        command: AclCommand,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        let user = command.user().to_owned();
        let changed = self.write(Command::Acl(command)).await?;
        let revision = self.state.read(|data| data.state.acl.snapshot.revision);
        tracing::info!(user = %user, changed, revision, "ACL changed");
        Ok(Response::new(pb::AclChangeResponse { changed, revision }))
    }

    /// Checks a secret key and seals it for `user` (the key itself is never echoed).
    fn seal(&self, user: &str, secret_key: &str) -> Result<auth::Sealed, Status> {
        check_secret_key(secret_key).map_err(bad_request)?;
        Ok(self.key.seal(user, secret_key))
    }

    pub(super) async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        write_at_leader!(self, request, create_user);
        let req = request.into_inner();
        auth::acl::check_user_name(&req.name).map_err(bad_request)?;
        let secret = self.seal(&req.name, &req.secret_key)?;
        self.write_acl(AclCommand::CreateUser {
            name: req.name,
            secret,
            admin: req.admin,
        })
        .await
    }

    pub(super) async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        write_at_leader!(self, request, update_user);
        let req = request.into_inner();
        auth::acl::check_user_name(&req.name).map_err(bad_request)?;
        let secret = match &req.secret_key {
            Some(secret_key) => Some(self.seal(&req.name, secret_key)?),
            None => None,
        };
        self.write_acl(AclCommand::UpdateUser {
            name: req.name,
            secret,
            admin: req.admin,
        })
        .await
    }

    pub(super) async fn delete_user(
        &self,
        request: Request<pb::DeleteUserRequest>,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        write_at_leader!(self, request, delete_user);
        let name = request.into_inner().name;
        self.write_acl(AclCommand::DeleteUser { name }).await
    }

    pub(super) async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        read_at_leader!(self, request, list_users);
        let answer = self.state.read(|data| {
            let acl = &data.state.acl;
            let users = acl
                .snapshot
                .users
                .values()
                .map(|user| pb::UserInfo {
                    name: user.name.clone(),
                    admin: user.admin,
                    built_in: acl.built_in_admin.as_deref() == Some(user.name.as_str()),
                    policy_count: acl
                        .snapshot
                        .policies
                        .get(&user.name)
                        .map_or(0, |policies| policies.len() as u32),
                })
                .collect();
            pb::ListUsersResponse {
                users,
                revision: acl.snapshot.revision,
            }
        });
        Ok(Response::new(answer))
    }

    /// `CreateAcl` (`replace: false`) and `UpdateAcl` (`replace: true`).
    pub(super) async fn put_acl(
        &self,
        request: Request<pb::AclPolicyRequest>,
        replace: bool,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        if replace {
            write_at_leader!(self, request, update_acl);
        } else {
            write_at_leader!(self, request, create_acl);
        }
        let Some(wire) = request.into_inner().policy else {
            return Err(error(ErrorCode::BadRequest, "policy is required"));
        };
        auth::acl::check_user_name(&wire.user).map_err(bad_request)?;
        let policy = policy_from_wire(&wire).map_err(bad_request)?;
        let user = wire.user;
        self.write_acl(if replace {
            AclCommand::UpdatePolicy { user, policy }
        } else {
            AclCommand::CreatePolicy { user, policy }
        })
        .await
    }

    pub(super) async fn delete_acl(
        &self,
        request: Request<pb::DeleteAclRequest>,
    ) -> Result<Response<pb::AclChangeResponse>, Status> {
        write_at_leader!(self, request, delete_acl);
        let req = request.into_inner();
        let resource = req.resource.parse().map_err(bad_request)?;
        self.write_acl(AclCommand::DeletePolicy {
            user: req.user,
            resource,
        })
        .await
    }

    pub(super) async fn list_acls(
        &self,
        request: Request<pb::ListAclsRequest>,
    ) -> Result<Response<pb::ListAclsResponse>, Status> {
        read_at_leader!(self, request, list_acls);
        let only = request.into_inner().user;
        let answer = self.state.read(|data| {
            let snapshot = &data.state.acl.snapshot;
            let policies = snapshot
                .policies
                .iter()
                .filter(|(user, _)| only.is_empty() || **user == only)
                .flat_map(|(user, policies)| {
                    policies
                        .iter()
                        .map(move |policy| policy_to_wire(user, policy))
                })
                .collect();
            pb::ListAclsResponse {
                policies,
                revision: snapshot.revision,
            }
        });
        Ok(Response::new(answer))
    }

    /// Streams the whole ACL to a member on the leader: now, then at each change. Encoded once
    /// per revision, however many state changes happen between ACL changes.
    pub(super) async fn watch_acl(
        &self,
        _request: Request<pb::WatchAclRequest>,
    ) -> Result<Response<AclUpdates>, Status> {
        if !self.is_leader() {
            return Err(self.not_leader("watch the ACL"));
        }
        let state = self.state.clone();
        let encoded: StdMutex<Option<pb::AclUpdate>> = StdMutex::new(None);
        let updates = self.watch_while_leader(None, move || {
            let revision = state.read(|data| data.state.acl.snapshot.revision);
            let mut cached = encoded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(update) = cached.as_ref().filter(|u| u.revision == revision) {
                return Some(update.clone());
            }
            let json = state.read(|data| serde_json::to_vec(&data.state.acl.snapshot));
            match json {
                Ok(json) => {
                    let update = pb::AclUpdate {
                        revision,
                        snapshot_json: json.into(),
                    };
                    *cached = Some(update.clone());
                    Some(update)
                }
                Err(err) => {
                    tracing::error!(error = %err, "the ACL cannot be encoded; brokers keep the last one");
                    None
                }
            }
        });
        Ok(Response::new(updates))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auth::acl::Action;

    #[test]
    fn policies_convert_both_ways_and_bad_words_are_refused() {
        let wire = pb::AclPolicy {
            user: "app".into(),
            resource: "topic:orders*".into(),
            actions: vec!["send".into(), "CONSUME".into()],
            effect: String::new(),
        };
        let policy = policy_from_wire(&wire).unwrap();
        assert_eq!(policy.effect, Effect::Allow);
        assert_eq!(
            policy.actions,
            [Action::Send, Action::Consume].into_iter().collect()
        );
        let back = policy_to_wire("app", &policy);
        assert_eq!(back.actions, vec!["send", "consume"]);
        assert_eq!(back.effect, "allow");
        for bad in [
            pb::AclPolicy {
                actions: vec!["publish".into()],
                ..wire.clone()
            },
            pb::AclPolicy {
                effect: "maybe".into(),
                ..wire.clone()
            },
            pb::AclPolicy {
                resource: "queue:x".into(),
                ..wire.clone()
            },
            pb::AclPolicy {
                actions: vec![],
                ..wire.clone()
            },
        ] {
            assert!(policy_from_wire(&bad).is_err(), "{bad:?}");
        }
    }
}
