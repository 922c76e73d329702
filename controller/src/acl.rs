//! The ACL part of the replicated state: users (their secret keys sealed with the cluster key),
//! the policies that grant or deny them actions, and the commands that change them. Kept apart
//! from `state.rs`, which calls [`AclState::apply`] for every [`AclCommand`], so that the ACL's
//! rules are read in one place.
//!
//! Invariants, each kept by `apply` (and checked by the tests below):
//! - a refused command changes nothing, the revision included: every check runs before the
//!   first write;
//! - `snapshot.revision` rises by one with every command that changes something, and never
//!   otherwise, so that brokers and the controller's own `auth::Directory` can refuse an older
//!   snapshot than the one they hold;
//! - no secret key is ever here in clear: commands carry it sealed (the leader seals it before
//!   it proposes), so neither the Raft log, nor snapshots, nor the sled files hold one;
//! - every policy belongs to an existing user, is valid (`Policy::validate`), and is the only
//!   one of its user on its resource pattern; a user has at most
//!   [`auth::acl::POLICIES_PER_USER_MAX`] of them and there are at most [`USERS_MAX`] users;
//! - the built-in admin (the controllers' `admin_access_key`) stays an admin: the API cannot
//!   delete or demote it. Only [`AclCommand::EnsureBuiltInAdmin`], proposed by the leader from
//!   its configuration, sets it.
//!
//! Like the rest of the state machine this is deterministic: no clock, no randomness (sealing
//! happened before the command was proposed).

use auth::acl::{
    check_user_name, AclError, AclSnapshot, Policy, ResourcePattern, User, POLICIES_PER_USER_MAX,
};
use auth::Sealed;
use serde::{Deserialize, Serialize};

/// Most users the ACL holds: the whole ACL is in the replicated state (persisted whole at every
/// apply) and sent whole to every broker at every change, so it must stay small.
pub const USERS_MAX: usize = 10_000;

/// Users and policies, as the quorum keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AclState {
    /// What brokers and the controller's gate decide with.
    pub snapshot: AclSnapshot,
    /// The built-in admin's name, as the leader last ensured it from `admin_access_key`.
    pub built_in_admin: Option<String>,
}

/// A change to the ACL, as written to the Raft log (secrets sealed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AclCommand {
    /// A new user; one of that name already there is a conflict.
    CreateUser {
        name: String,
        secret: Sealed,
        admin: bool,
    },
    /// Changes what is given (`None`: unchanged).
    UpdateUser {
        name: String,
        secret: Option<Sealed>,
        admin: Option<bool>,
    },
    /// Removes a user and all its policies.
    DeleteUser { name: String },
    /// A new policy of `user`'s on a resource pattern it has none on yet.
    CreatePolicy { user: String, policy: Policy },
    /// Replaces `user`'s policy on the same resource pattern.
    UpdatePolicy { user: String, policy: Policy },
    DeletePolicy {
        user: String,
        resource: ResourcePattern,
    },
    /// The leader makes its configured admin exist, be an admin and hold the configured secret.
    EnsureBuiltInAdmin { name: String, secret: Sealed },
}

impl AclCommand {
    /// The user the command is about, for logs and the audit log.
    pub fn user(&self) -> &str {
        match self {
            AclCommand::CreateUser { name, .. }
            | AclCommand::UpdateUser { name, .. }
            | AclCommand::DeleteUser { name }
            | AclCommand::EnsureBuiltInAdmin { name, .. } => name,
            AclCommand::CreatePolicy { user, .. }
            | AclCommand::UpdatePolicy { user, .. }
            | AclCommand::DeletePolicy { user, .. } => user,
        }
    }
}

/// Why an ACL command was refused. Refusals change nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AclCommandError {
    #[error(transparent)]
    Invalid(#[from] AclError),
    #[error("user {} already exists", proto::Echo(.0))]
    UserExists(String),
    #[error("user {} does not exist", proto::Echo(.0))]
    UserNotFound(String),
    #[error("user {} already has a policy on {resource}: update it instead", proto::Echo(.user))]
    PolicyExists { user: String, resource: String },
    #[error("user {} has no policy on {resource}", proto::Echo(.user))]
    PolicyNotFound { user: String, resource: String },
    #[error("the ACL holds at most {USERS_MAX} users")]
    TooManyUsers,
    #[error("user {} may have at most {POLICIES_PER_USER_MAX} policies", proto::Echo(.user))]
    TooManyPolicies { user: String },
    #[error(
        "{} is the built-in admin (the controllers' admin_access_key): it cannot be deleted or \
         demoted through the API",
        proto::Echo(.0)
    )]
    BuiltInAdmin(String),
}

impl AclState {
    /// Applies one command: whether it changed anything, or why it was refused (then nothing
    /// changed).
    pub fn apply(&mut self, command: &AclCommand) -> Result<bool, AclCommandError> {
        check_user_name(command.user())?;
        let changed = match command {
            AclCommand::CreateUser {
                name,
                secret,
                admin,
            } => self.create_user(name, secret, *admin)?,
            AclCommand::UpdateUser {
                name,
                secret,
                admin,
            } => self.update_user(name, secret.as_ref(), *admin)?,
            AclCommand::DeleteUser { name } => self.delete_user(name)?,
            AclCommand::CreatePolicy { user, policy } => self.put_policy(user, policy, false)?,
            AclCommand::UpdatePolicy { user, policy } => self.put_policy(user, policy, true)?,
            AclCommand::DeletePolicy { user, resource } => self.delete_policy(user, resource)?,
            AclCommand::EnsureBuiltInAdmin { name, secret } => {
                self.ensure_built_in_admin(name, secret)?
            }
        };
        if changed {
            self.snapshot.revision += 1;
        }
        Ok(changed)
    }

    fn is_built_in(&self, name: &str) -> bool {
        self.built_in_admin.as_deref() == Some(name)
    }

    fn create_user(
        &mut self,
        name: &str,
        secret: &Sealed,
        admin: bool,
    ) -> Result<bool, AclCommandError> {
        if self.snapshot.users.contains_key(name) {
            return Err(AclCommandError::UserExists(name.to_owned()));
        }
        if self.snapshot.users.len() >= USERS_MAX {
            return Err(AclCommandError::TooManyUsers);
        }
        self.snapshot.users.insert(
            name.to_owned(),
            User {
                name: name.to_owned(),
                secret: secret.clone(),
                admin,
            },
        );
        Ok(true)
    }

    fn update_user(
        &mut self,
        name: &str,
        secret: Option<&Sealed>,
        admin: Option<bool>,
    ) -> Result<bool, AclCommandError> {
        if admin == Some(false) && self.is_built_in(name) {
            return Err(AclCommandError::BuiltInAdmin(name.to_owned()));
        }
        let user = self
            .snapshot
            .users
            .get_mut(name)
            .ok_or_else(|| AclCommandError::UserNotFound(name.to_owned()))?;
        let mut changed = false;
        if let Some(secret) = secret {
            changed |= user.secret != *secret;
            user.secret = secret.clone();
        }
        if let Some(admin) = admin {
            changed |= user.admin != admin;
            user.admin = admin;
        }
        Ok(changed)
    }

    fn delete_user(&mut self, name: &str) -> Result<bool, AclCommandError> {
        if self.is_built_in(name) {
            return Err(AclCommandError::BuiltInAdmin(name.to_owned()));
        }
        if self.snapshot.users.remove(name).is_none() {
            return Err(AclCommandError::UserNotFound(name.to_owned()));
        }
        self.snapshot.policies.remove(name);
        Ok(true)
    }

    /// Creates (`replace: false`) or replaces (`replace: true`) `user`'s policy on the policy's
    /// resource pattern.
    fn put_policy(
        &mut self,
        user: &str,
        policy: &Policy,
        replace: bool,
    ) -> Result<bool, AclCommandError> {
        policy.validate()?;
        if !self.snapshot.users.contains_key(user) {
            return Err(AclCommandError::UserNotFound(user.to_owned()));
        }
        let policies = self.snapshot.policies.entry(user.to_owned()).or_default();
        let existing = policies.iter().position(|p| p.resource == policy.resource);
        let resource = || policy.resource.to_string();
        let changed = match (existing, replace) {
            (Some(_), false) => Err(AclCommandError::PolicyExists {
                user: user.to_owned(),
                resource: resource(),
            }),
            (None, true) => Err(AclCommandError::PolicyNotFound {
                user: user.to_owned(),
                resource: resource(),
            }),
            (None, false) if policies.len() >= POLICIES_PER_USER_MAX => {
                Err(AclCommandError::TooManyPolicies {
                    user: user.to_owned(),
                })
            }
            (None, false) => {
                policies.push(policy.clone());
                Ok(true)
            }
            (Some(index), true) => {
                let changed = policies[index] != *policy;
                policies[index] = policy.clone();
                Ok(changed)
            }
        };
        // The entry made above for a user without policies must not stay behind on a refusal.
        if policies.is_empty() {
            self.snapshot.policies.remove(user);
        }
        changed
    }

    fn delete_policy(
        &mut self,
        user: &str,
        resource: &ResourcePattern,
    ) -> Result<bool, AclCommandError> {
        let not_found = || AclCommandError::PolicyNotFound {
            user: user.to_owned(),
            resource: resource.to_string(),
        };
        let policies = self.snapshot.policies.get_mut(user).ok_or_else(not_found)?;
        let index = policies
            .iter()
            .position(|p| p.resource == *resource)
            .ok_or_else(not_found)?;
        policies.remove(index);
        if policies.is_empty() {
            self.snapshot.policies.remove(user);
        }
        Ok(true)
    }

    fn ensure_built_in_admin(
        &mut self,
        name: &str,
        secret: &Sealed,
    ) -> Result<bool, AclCommandError> {
        let wanted = User {
            name: name.to_owned(),
            secret: secret.clone(),
            admin: true,
        };
        let exists = self.snapshot.users.contains_key(name);
        if !exists && self.snapshot.users.len() >= USERS_MAX {
            return Err(AclCommandError::TooManyUsers);
        }
        let mut changed = self.built_in_admin.as_deref() != Some(name);
        // The previous built-in admin (admin_access_key changed) stays an ordinary user, admin
        // still: operators delete it once the new one works.
        self.built_in_admin = Some(name.to_owned());
        if self.snapshot.users.get(name) != Some(&wanted) {
            self.snapshot.users.insert(name.to_owned(), wanted);
            changed = true;
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use auth::acl::{Action, Effect};
    use auth::{ClusterKey, Resource};

    fn key() -> ClusterKey {
        ClusterKey::new("acl-state-test-secret").unwrap()
    }

    fn policy(resource: &str, actions: &[Action], effect: Effect) -> Policy {
        Policy {
            resource: resource.parse().unwrap(),
            actions: actions.iter().copied().collect(),
            effect,
        }
    }

    fn create(name: &str, admin: bool) -> AclCommand {
        AclCommand::CreateUser {
            name: name.into(),
            secret: key().seal(name, "secret-key-1"),
            admin,
        }
    }

    /// Applies `command` and checks that a refusal left the state exactly as it was.
    fn apply(acl: &mut AclState, command: AclCommand) -> Result<bool, AclCommandError> {
        let before = acl.clone();
        let result = acl.apply(&command);
        match &result {
            Err(_) => assert_eq!(*acl, before, "a refused {command:?} changed the state"),
            Ok(true) => assert_eq!(acl.snapshot.revision, before.snapshot.revision + 1),
            Ok(false) => assert_eq!(*acl, before),
        }
        result
    }

    #[test]
    fn users_are_created_updated_and_deleted_with_their_policies() {
        let mut acl = AclState::default();
        assert_eq!(apply(&mut acl, create("app", false)), Ok(true));
        assert_eq!(
            apply(&mut acl, create("app", false)),
            Err(AclCommandError::UserExists("app".into()))
        );
        let send = policy("topic:orders*", &[Action::Send], Effect::Allow);
        let put = AclCommand::CreatePolicy {
            user: "app".into(),
            policy: send.clone(),
        };
        assert_eq!(apply(&mut acl, put.clone()), Ok(true));
        assert_eq!(
            acl.snapshot
                .decide("app", Action::Send, Resource::Topic("orders-eu")),
            auth::acl::Decision::Allow
        );
        let update = AclCommand::UpdateUser {
            name: "app".into(),
            secret: Some(key().seal("app", "secret-key-2")),
            admin: None,
        };
        assert_eq!(apply(&mut acl, update), Ok(true));
        let opened = key()
            .open("app", &acl.snapshot.users["app"].secret)
            .unwrap();
        assert_eq!(opened, "secret-key-2");
        let nothing = AclCommand::UpdateUser {
            name: "app".into(),
            secret: None,
            admin: Some(false),
        };
        assert_eq!(apply(&mut acl, nothing), Ok(false));
        let delete = AclCommand::DeleteUser { name: "app".into() };
        assert_eq!(apply(&mut acl, delete.clone()), Ok(true));
        assert!(acl.snapshot.users.is_empty() && acl.snapshot.policies.is_empty());
        assert_eq!(
            apply(&mut acl, delete),
            Err(AclCommandError::UserNotFound("app".into()))
        );
        assert_eq!(
            apply(&mut acl, put),
            Err(AclCommandError::UserNotFound("app".into()))
        );
    }

    #[test]
    fn one_policy_per_user_and_resource_created_updated_deleted() {
        let mut acl = AclState::default();
        apply(&mut acl, create("app", false)).unwrap();
        let allow = policy("topic:t", &[Action::Send], Effect::Allow);
        let deny = policy("topic:t", &[Action::Send, Action::Consume], Effect::Deny);
        let with = |policy: &Policy, replace: bool| {
            let (user, policy) = ("app".to_owned(), policy.clone());
            if replace {
                AclCommand::UpdatePolicy { user, policy }
            } else {
                AclCommand::CreatePolicy { user, policy }
            }
        };
        assert_eq!(
            apply(&mut acl, with(&allow, true)),
            Err(AclCommandError::PolicyNotFound {
                user: "app".into(),
                resource: "topic:t".into()
            })
        );
        assert!(
            acl.snapshot.policies.is_empty(),
            "no empty entry left behind"
        );
        assert_eq!(apply(&mut acl, with(&allow, false)), Ok(true));
        assert!(matches!(
            apply(&mut acl, with(&deny, false)),
            Err(AclCommandError::PolicyExists { .. })
        ));
        assert_eq!(apply(&mut acl, with(&deny, true)), Ok(true));
        assert_eq!(apply(&mut acl, with(&deny, true)), Ok(false));
        assert_eq!(acl.snapshot.policies["app"], vec![deny]);
        let delete = AclCommand::DeletePolicy {
            user: "app".into(),
            resource: "topic:t".parse().unwrap(),
        };
        assert_eq!(apply(&mut acl, delete.clone()), Ok(true));
        assert!(matches!(
            apply(&mut acl, delete),
            Err(AclCommandError::PolicyNotFound { .. })
        ));
    }

    #[test]
    fn bad_input_and_limits_are_refused_and_change_nothing() {
        let mut acl = AclState::default();
        assert!(matches!(
            apply(&mut acl, create("bad name", false)),
            Err(AclCommandError::Invalid(AclError::BadUserName(_)))
        ));
        apply(&mut acl, create("app", false)).unwrap();
        let useless = AclCommand::CreatePolicy {
            user: "app".into(),
            policy: policy("group:g", &[Action::Send], Effect::Allow),
        };
        assert!(matches!(
            apply(&mut acl, useless),
            Err(AclCommandError::Invalid(
                AclError::ActionDoesNotApply { .. }
            ))
        ));
        for i in 0..POLICIES_PER_USER_MAX {
            let command = AclCommand::CreatePolicy {
                user: "app".into(),
                policy: policy(&format!("topic:t{i}"), &[Action::Send], Effect::Allow),
            };
            apply(&mut acl, command).unwrap();
        }
        let one_more = AclCommand::CreatePolicy {
            user: "app".into(),
            policy: policy("topic:last", &[Action::Send], Effect::Allow),
        };
        assert_eq!(
            apply(&mut acl, one_more),
            Err(AclCommandError::TooManyPolicies { user: "app".into() })
        );
        let mut full = AclState::default();
        for i in 0..USERS_MAX {
            let name = format!("u{i}");
            full.snapshot.users.insert(
                name.clone(),
                User {
                    name,
                    secret: key().seal("x", "secret-key-1"),
                    admin: false,
                },
            );
        }
        assert_eq!(
            apply(&mut full, create("app", false)),
            Err(AclCommandError::TooManyUsers)
        );
    }

    #[test]
    fn the_built_in_admin_is_ensured_idempotently_and_cannot_be_deleted_or_demoted() {
        let mut acl = AclState::default();
        let ensure = |secret: &str| AclCommand::EnsureBuiltInAdmin {
            name: "admin".into(),
            secret: key().seal("admin", secret),
        };
        let first = ensure("admin-secret-1");
        assert_eq!(apply(&mut acl, first.clone()), Ok(true));
        assert_eq!(apply(&mut acl, first), Ok(false), "idempotent");
        assert!(acl.snapshot.users["admin"].admin);
        assert_eq!(
            apply(
                &mut acl,
                AclCommand::DeleteUser {
                    name: "admin".into()
                }
            ),
            Err(AclCommandError::BuiltInAdmin("admin".into()))
        );
        let demote = AclCommand::UpdateUser {
            name: "admin".into(),
            secret: None,
            admin: Some(false),
        };
        assert_eq!(
            apply(&mut acl, demote),
            Err(AclCommandError::BuiltInAdmin("admin".into()))
        );
        // A user made admin by an operator, then demoted: not the built-in one, so allowed.
        apply(&mut acl, create("ops", true)).unwrap();
        let demote_ops = AclCommand::UpdateUser {
            name: "ops".into(),
            secret: None,
            admin: Some(false),
        };
        assert_eq!(apply(&mut acl, demote_ops), Ok(true));
        assert_eq!(apply(&mut acl, ensure("admin-secret-2")), Ok(true));
        let opened = key()
            .open("admin", &acl.snapshot.users["admin"].secret)
            .unwrap();
        assert_eq!(opened, "admin-secret-2");
    }

    #[test]
    fn acl_commands_go_through_the_cluster_state_and_the_log_holds_no_secret() {
        use crate::state::{ClusterState, Command, CommandError, CommandResult};
        let mut state = ClusterState::default();
        let command = Command::Acl(create("app", false));
        let logged = serde_json::to_string(&command).unwrap();
        assert!(!logged.contains("secret-key-1"), "{logged}");
        let replayed: Command = serde_json::from_str(&logged).unwrap();
        assert_eq!(
            state.apply(&replayed),
            CommandResult::Done { changed: true }
        );
        let before = state.clone();
        assert_eq!(
            state.apply(&command),
            CommandResult::Refused(CommandError::Acl(AclCommandError::UserExists("app".into())))
        );
        assert_eq!(state, before);
        // State written before the ACL existed reads as an empty ACL.
        let mut old = serde_json::to_value(ClusterState::default()).unwrap();
        old.as_object_mut().unwrap().remove("acl");
        let read: ClusterState = serde_json::from_value(old).unwrap();
        assert_eq!(read.acl, AclState::default());
    }

    #[test]
    fn the_state_round_trips_through_json_without_a_secret_in_clear() {
        let mut acl = AclState::default();
        apply(&mut acl, create("app", false)).unwrap();
        let json = serde_json::to_string(&acl).unwrap();
        assert!(!json.contains("secret-key-1"));
        assert_eq!(serde_json::from_str::<AclState>(&json).unwrap(), acl);
        assert_eq!(
            serde_json::from_str::<AclState>("{}").unwrap(),
            AclState::default()
        );
    }
}
