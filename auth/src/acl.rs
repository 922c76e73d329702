//! Who may do what: users, the policies that grant or deny them actions on resources, and the
//! decision for one request. Pure data and pure functions: the controller quorum keeps an
//! [`AclSnapshot`] in its replicated state, brokers hold a copy, and every request is decided by
//! [`AclSnapshot::decide`] against it.
//!
//! The rules, in order (RocketMQ 5's ACL 2.0 decides the same way):
//! 1. a user that does not exist is refused;
//! 2. an admin user may do everything (the built-in admin is one);
//! 3. a policy of the user's that denies the action on a matching resource refuses it, whatever
//!    else allows it;
//! 4. a policy that allows it admits it;
//! 5. nothing matched: refused. Nothing is allowed by default.
//!
//! Which action on which resource each request needs:
//! - sending to a topic: [`Action::Send`] on the topic;
//! - consuming (pull, receive, offsets, heartbeats, send-back): [`Action::Consume`] on the topic
//!   *and* on the consumer group, so that one application cannot drain another's group;
//! - administration (topics, groups' settings, elections, drain, ACL, controller membership):
//!   [`Action::Admin`] on [`Resource::Cluster`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::seal::Sealed;

/// Longest user name: an access key.
pub const USER_NAME_BYTES_MAX: usize = 64;
/// Longest resource name in a pattern (a topic or group name is at most 127 in RocketMQ).
pub const RESOURCE_NAME_BYTES_MAX: usize = 255;
/// Most policies one user may have: the decision walks them all on every request.
pub const POLICIES_PER_USER_MAX: usize = 256;
/// Shortest and longest secret key a user may be given.
pub const SECRET_KEY_BYTES_MIN: usize = 8;
pub const SECRET_KEY_BYTES_MAX: usize = 256;

/// What a request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    Send,
    Consume,
    Admin,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Send, Action::Consume, Action::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Consume => "consume",
            Action::Admin => "admin",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = AclError;

    fn from_str(text: &str) -> Result<Action, AclError> {
        Action::ALL
            .into_iter()
            .find(|action| action.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| AclError::UnknownAction(text.to_owned()))
    }
}

/// What a request touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    Topic(&'a str),
    Group(&'a str),
    /// The cluster itself: its topics' existence, groups' settings, masters, ACL, controllers.
    Cluster,
}

impl fmt::Display for Resource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Topic(name) => write!(f, "topic:{}", proto::Echo(name)),
            Resource::Group(name) => write!(f, "group:{}", proto::Echo(name)),
            Resource::Cluster => f.write_str("cluster"),
        }
    }
}

/// Which kind of resource a pattern names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    Topic,
    Group,
    Cluster,
}

/// Which names of its kind a pattern matches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NamePattern {
    /// `*`: every name.
    Any,
    /// `orders-*`: every name that starts with the prefix.
    Prefix(String),
    /// `orders`: that name alone.
    Exact(String),
}

impl NamePattern {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Any => true,
            NamePattern::Prefix(prefix) => name.starts_with(prefix.as_str()),
            NamePattern::Exact(exact) => name == exact,
        }
    }
}

/// A set of resources: `topic:NAME`, `topic:PREFIX*`, `topic:*`, the same for `group:`, or
/// `cluster`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourcePattern {
    pub kind: ResourceKind,
    pub name: NamePattern,
}

impl ResourcePattern {
    pub fn matches(&self, resource: Resource<'_>) -> bool {
        match (self.kind, resource) {
            (ResourceKind::Topic, Resource::Topic(name))
            | (ResourceKind::Group, Resource::Group(name)) => self.name.matches(name),
            (ResourceKind::Cluster, Resource::Cluster) => true,
            _ => false,
        }
    }
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ResourceKind::Topic => "topic",
            ResourceKind::Group => "group",
            ResourceKind::Cluster => return f.write_str("cluster"),
        };
        match &self.name {
            NamePattern::Any => write!(f, "{kind}:*"),
            NamePattern::Prefix(prefix) => write!(f, "{kind}:{prefix}*"),
            NamePattern::Exact(name) => write!(f, "{kind}:{name}"),
        }
    }
}

impl FromStr for ResourcePattern {
    type Err = AclError;

    fn from_str(text: &str) -> Result<ResourcePattern, AclError> {
        let bad = || AclError::BadResource(text.to_owned());
        let text = text.trim();
        if text == "cluster" {
            return Ok(ResourcePattern {
                kind: ResourceKind::Cluster,
                name: NamePattern::Any,
            });
        }
        let (kind, name) = text.split_once(':').ok_or_else(bad)?;
        let kind = match kind {
            "topic" => ResourceKind::Topic,
            "group" => ResourceKind::Group,
            _ => return Err(bad()),
        };
        let name = match name.strip_suffix('*') {
            Some("") => NamePattern::Any,
            Some(prefix) => NamePattern::Prefix(prefix.to_owned()),
            None => NamePattern::Exact(name.to_owned()),
        };
        let literal = match &name {
            NamePattern::Any => "",
            NamePattern::Prefix(text) | NamePattern::Exact(text) => text,
        };
        // A name pattern is a resource name, or its start: the characters topic and group
        // names allow, and no second `*` (only a trailing one means "any suffix").
        let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'%' | b'|');
        if literal.len() > RESOURCE_NAME_BYTES_MAX || !literal.bytes().all(allowed) {
            return Err(bad());
        }
        if matches!(name, NamePattern::Exact(ref exact) if exact.is_empty()) {
            return Err(bad());
        }
        Ok(ResourcePattern { kind, name })
    }
}

/// Whether a policy grants or refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Effect {
    Allow,
    Deny,
}

impl FromStr for Effect {
    type Err = AclError;

    fn from_str(text: &str) -> Result<Effect, AclError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "allow" => Ok(Effect::Allow),
            "deny" => Ok(Effect::Deny),
            _ => Err(AclError::UnknownEffect(text.to_owned())),
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        })
    }
}

/// One rule of a user's: these actions on these resources are allowed, or denied.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Policy {
    pub resource: ResourcePattern,
    pub actions: BTreeSet<Action>,
    pub effect: Effect,
}

impl Policy {
    /// Refuses a policy that could never match anything, so that a typo is an error rather than
    /// a rule that silently grants nothing: no actions, or an action that never applies to the
    /// resource's kind (sending to a group, administering a topic).
    pub fn validate(&self) -> Result<(), AclError> {
        if self.actions.is_empty() {
            return Err(AclError::NoActions);
        }
        for action in &self.actions {
            let fits = match (action, self.resource.kind) {
                (Action::Send, kind) => kind == ResourceKind::Topic,
                (Action::Consume, kind) => kind != ResourceKind::Cluster,
                (Action::Admin, kind) => kind == ResourceKind::Cluster,
            };
            if !fits {
                return Err(AclError::ActionDoesNotApply {
                    action: *action,
                    resource: self.resource.to_string(),
                });
            }
        }
        Ok(())
    }

    fn applies(&self, action: Action, resource: Resource<'_>) -> bool {
        self.actions.contains(&action) && self.resource.matches(resource)
    }
}

/// Someone who signs requests: the name is the access key; the secret key is kept sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// The secret key, sealed with the cluster key (never stored or sent in clear).
    pub secret: Sealed,
    /// May do everything, policies or not.
    pub admin: bool,
}

/// Every user and every policy, as of one revision of the controller's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclSnapshot {
    /// Rises with every change: a broker keeps the highest it has seen.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    /// Each user's policies, by user name. A user without an entry has none.
    pub policies: BTreeMap<String, Vec<Policy>>,
}

/// The answer for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No such user.
    UnknownUser,
    /// A policy denies it, or none allows it.
    Deny,
}

impl AclSnapshot {
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// The rules in this module's header.
    pub fn decide(&self, user: &str, action: Action, resource: Resource<'_>) -> Decision {
        let Some(found) = self.users.get(user) else {
            return Decision::UnknownUser;
        };
        if found.admin {
            return Decision::Allow;
        }
        let policies = self.policies.get(user).map(Vec::as_slice).unwrap_or(&[]);
        let matching = || {
            policies
                .iter()
                .filter(move |policy| policy.applies(action, resource))
        };
        if matching().any(|policy| policy.effect == Effect::Deny) {
            return Decision::Deny;
        }
        if matching().any(|policy| policy.effect == Effect::Allow) {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }
}

/// Checks a user name: 1 to 64 of `[A-Za-z0-9_.-]`, since it travels in a header and a log.
pub fn check_user_name(name: &str) -> Result<(), AclError> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if name.is_empty() || name.len() > USER_NAME_BYTES_MAX || !name.bytes().all(allowed) {
        return Err(AclError::BadUserName(name.to_owned()));
    }
    Ok(())
}

/// Checks a secret key before it is sealed: 8 to 256 printable ASCII characters, no spaces, so
/// that it survives files, environment variables and command lines unchanged.
pub fn check_secret_key(secret: &str) -> Result<(), AclError> {
    let printable = |b: u8| b.is_ascii_graphic();
    if secret.len() < SECRET_KEY_BYTES_MIN
        || secret.len() > SECRET_KEY_BYTES_MAX
        || !secret.bytes().all(printable)
    {
        return Err(AclError::BadSecretKey);
    }
    Ok(())
}

/// Bad input to the ACL: a user, a policy or a part of one. Serializable, because the
/// controller's state machine answers it through Raft.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AclError {
    #[error("{} is not an action: send, consume or admin", proto::Echo(.0))]
    UnknownAction(String),
    #[error("{} is not an effect: allow or deny", proto::Echo(.0))]
    UnknownEffect(String),
    #[error(
        "{} is not a resource: topic:NAME, topic:PREFIX*, topic:*, the same with group:, or cluster",
        proto::Echo(.0)
    )]
    BadResource(String),
    #[error("a policy needs at least one action")]
    NoActions,
    #[error("{action} does not apply to {resource} (send: topics; consume: topics and groups; admin: cluster)")]
    ActionDoesNotApply { action: Action, resource: String },
    #[error("{} is not a user name: 1 to {USER_NAME_BYTES_MAX} of A-Z a-z 0-9 _ . -", proto::Echo(.0))]
    BadUserName(String),
    #[error(
        "a secret key is {SECRET_KEY_BYTES_MIN} to {SECRET_KEY_BYTES_MAX} printable ASCII characters without spaces"
    )]
    BadSecretKey,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(resource: &str, actions: &[Action], effect: Effect) -> Policy {
        Policy {
            resource: resource.parse().unwrap(),
            actions: actions.iter().copied().collect(),
            effect,
        }
    }

    fn snapshot(admin: bool, policies: Vec<Policy>) -> AclSnapshot {
        let mut acl = AclSnapshot::default();
        acl.users.insert(
            "app".into(),
            User {
                name: "app".into(),
                secret: Sealed::for_tests(),
                admin,
            },
        );
        acl.policies.insert("app".into(), policies);
        acl
    }

    #[test]
    fn nothing_is_allowed_by_default_and_unknown_users_are_told_apart() {
        let acl = snapshot(false, vec![]);
        assert_eq!(
            acl.decide("app", Action::Send, Resource::Topic("t")),
            Decision::Deny
        );
        assert_eq!(
            acl.decide("nobody", Action::Send, Resource::Topic("t")),
            Decision::UnknownUser
        );
    }

    #[test]
    fn admins_may_do_everything() {
        let acl = snapshot(true, vec![]);
        for action in Action::ALL {
            assert_eq!(
                acl.decide("app", action, Resource::Cluster),
                Decision::Allow
            );
        }
    }

    #[test]
    fn allow_matches_by_kind_and_name_and_deny_wins() {
        let acl = snapshot(
            false,
            vec![
                policy("topic:orders-*", &[Action::Send], Effect::Allow),
                policy("topic:orders-secret", &[Action::Send], Effect::Deny),
                policy("group:*", &[Action::Consume], Effect::Allow),
            ],
        );
        let send = |topic| acl.decide("app", Action::Send, Resource::Topic(topic));
        assert_eq!(send("orders-eu"), Decision::Allow);
        assert_eq!(send("orders-secret"), Decision::Deny);
        assert_eq!(send("payments"), Decision::Deny);
        assert_eq!(
            acl.decide("app", Action::Consume, Resource::Topic("orders-eu")),
            Decision::Deny,
            "consume was granted on groups only"
        );
        assert_eq!(
            acl.decide("app", Action::Consume, Resource::Group("g")),
            Decision::Allow
        );
        assert_eq!(
            acl.decide("app", Action::Send, Resource::Group("orders-eu")),
            Decision::Deny,
            "a topic pattern never matches a group"
        );
        assert_eq!(
            acl.decide("app", Action::Admin, Resource::Cluster),
            Decision::Deny
        );
    }

    #[test]
    fn resource_patterns_parse_print_and_refuse_garbage() {
        for text in [
            "topic:orders",
            "topic:orders*",
            "topic:*",
            "group:g-1",
            "cluster",
        ] {
            let pattern: ResourcePattern = text.parse().unwrap();
            assert_eq!(pattern.to_string(), text);
        }
        for bad in [
            "",
            "topic",
            "topic:",
            "queue:x",
            "topic:a*b*",
            "topic:a b",
            "topic:**",
            "cluster:x",
        ] {
            assert!(bad.parse::<ResourcePattern>().is_err(), "{bad:?}");
        }
        let long = format!("topic:{}", "x".repeat(300));
        assert!(long.parse::<ResourcePattern>().is_err());
    }

    #[test]
    fn policies_that_could_never_match_are_refused() {
        assert_eq!(
            policy("topic:t", &[], Effect::Allow).validate(),
            Err(AclError::NoActions)
        );
        assert!(policy("group:g", &[Action::Send], Effect::Allow)
            .validate()
            .is_err());
        assert!(policy("topic:t", &[Action::Admin], Effect::Allow)
            .validate()
            .is_err());
        assert!(policy("cluster", &[Action::Consume], Effect::Allow)
            .validate()
            .is_err());
        assert!(policy("cluster", &[Action::Admin], Effect::Allow)
            .validate()
            .is_ok());
        assert!(
            policy("topic:t", &[Action::Send, Action::Consume], Effect::Deny)
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn names_keys_and_words_are_checked() {
        assert!(check_user_name("app-1.eu_west").is_ok());
        for bad in ["", "a b", "a:b", &"x".repeat(65), "é"] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_secret_key("12345678").is_ok());
        for bad in ["1234567", "with space1", &"x".repeat(257), "tab\there1"] {
            assert!(check_secret_key(bad).is_err(), "{bad:?}");
        }
        assert_eq!("SEND".parse::<Action>(), Ok(Action::Send));
        assert!("publish".parse::<Action>().is_err());
        assert_eq!("Deny".parse::<Effect>(), Ok(Effect::Deny));
    }
}
