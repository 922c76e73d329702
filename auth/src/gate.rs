//! The ACL as a node holds it ([`Directory`]), who a request comes from ([`Caller`], which
//! [`UserGuard`](crate::UserGuard) puts in its extensions), and the check a service makes before
//! it touches a resource ([`Gate::check`]).
//!
//! Refusals change nothing: a service checks before it reads or writes. They are answered with
//! upstream's codes, `UNAUTHORIZED` (40100) when the caller is not known to be anyone and
//! `FORBIDDEN` (40300) when it is someone without the permission; each is logged with the
//! identity, the action and the resource (at most once a second at warn, so that a flood cannot
//! fill the disk) and counted in `auth_refusals_total{reason}`.

use crate::warn_limit::WarnLimit;
use std::sync::{Arc, RwLock};

use proto::common::ErrorCode;

use crate::acl::{AclSnapshot, Action, Decision, Resource};
use crate::key::ClusterKey;

/// Counter by `reason`: user requests refused (`unauthenticated`, `forbidden`, and the ways a
/// signature fails).
pub const USER_REFUSALS_METRIC: &str = "auth_refusals_total";

/// Who a request comes from, as the server's guard established it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No credentials (or an empty access key).
    Anonymous,
    /// A user whose signature verified.
    User(Arc<str>),
}

impl Caller {
    pub fn name(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::User(name) => name,
        }
    }
}

/// The ACL a node decides with: the controller's applied state, or a broker's copy of it. Cheap
/// to clone (one shared snapshot); replaced whole at every change.
#[derive(Clone, Debug)]
pub struct Directory {
    current: Arc<RwLock<Arc<AclSnapshot>>>,
    key: Option<ClusterKey>,
}

impl Directory {
    /// `key` opens users' sealed secrets; a node without one knows no user's secret, so every
    /// signature fails on it.
    pub fn new(key: Option<ClusterKey>) -> Directory {
        Directory {
            current: Arc::default(),
            key,
        }
    }

    pub fn current(&self) -> Arc<AclSnapshot> {
        self.current
            .read()
            .map(|current| Arc::clone(&current))
            .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()))
    }

    /// Installs `snapshot` unless it is older than the one held (a late answer from a deposed
    /// controller must not bring a deleted user back). Returns whether it was installed.
    pub fn replace(&self, snapshot: AclSnapshot) -> bool {
        let mut current = match self.current.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if snapshot.revision < current.revision {
            return false;
        }
        *current = Arc::new(snapshot);
        true
    }

    /// `user`'s secret key, opened; `None` when there is no such user or it does not open.
    pub(crate) fn secret_of(&self, user: &str) -> Option<String> {
        let snapshot = self.current();
        let found = snapshot.user(user)?;
        let key = self.key.as_ref()?;
        match key.open(user, &found.secret) {
            Ok(secret) => Some(secret),
            Err(err) => {
                tracing::error!(user, error = %err, "a user's sealed secret does not open with this node's cluster key");
                None
            }
        }
    }
}

/// The check every service makes: off (development, every request allowed), or the ACL.
#[derive(Clone, Debug)]
pub struct Gate {
    directory: Directory,
    enforced: bool,
    warn_limit: WarnLimit,
}

impl Gate {
    /// `enforced: false` allows everything (the node warns at start that it does).
    pub fn new(directory: Directory, enforced: bool) -> Gate {
        Gate {
            directory,
            enforced,
            warn_limit: WarnLimit::default(),
        }
    }

    /// A gate that allows everything: a standalone node, or a test.
    pub fn open() -> Gate {
        Gate::new(Directory::new(None), false)
    }

    pub fn enforced(&self) -> bool {
        self.enforced
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Whether the request whose extensions are `extensions` may do `action` on `resource`.
    pub fn check(
        &self,
        extensions: &http::Extensions,
        action: Action,
        resource: Resource<'_>,
    ) -> Result<(), tonic::Status> {
        if !self.enforced {
            return Ok(());
        }
        let caller = extensions.get::<Caller>().unwrap_or(&Caller::Anonymous);
        let Caller::User(user) = caller else {
            return Err(self.refuse(
                caller,
                &Need::To(action, resource),
                Refused::Unauthenticated,
            ));
        };
        match self.directory.current().decide(user, action, resource) {
            Decision::Allow => Ok(()),
            Decision::UnknownUser => {
                Err(self.refuse(caller, &Need::To(action, resource), Refused::UnknownUser))
            }
            Decision::Deny => {
                Err(self.refuse(caller, &Need::To(action, resource), Refused::Forbidden))
            }
        }
    }

    /// Whether [`Gate::check`] would admit the request, without counting or logging a refusal:
    /// for answers filtered to what the caller may see, and for a request that needs one of
    /// several permissions (checked loudly for the last).
    pub fn allows(
        &self,
        extensions: &http::Extensions,
        action: Action,
        resource: Resource<'_>,
    ) -> bool {
        if !self.enforced {
            return true;
        }
        match extensions.get::<Caller>() {
            Some(Caller::User(user)) => {
                self.directory.current().decide(user, action, resource) == Decision::Allow
            }
            _ => false,
        }
    }

    /// Whether the request comes from a user the ACL knows, whatever its permissions: for calls
    /// that touch no resource of anyone's (a client's settings stream, its goodbye) but must
    /// still not be open to strangers.
    pub fn check_user(&self, extensions: &http::Extensions) -> Result<(), tonic::Status> {
        if !self.enforced {
            return Ok(());
        }
        let caller = extensions.get::<Caller>().unwrap_or(&Caller::Anonymous);
        let Caller::User(user) = caller else {
            return Err(self.refuse(caller, &Need::Known, Refused::Unauthenticated));
        };
        if self.directory.current().user(user).is_none() {
            return Err(self.refuse(caller, &Need::Known, Refused::UnknownUser));
        }
        Ok(())
    }

    /// [`Gate::check`] for every resource in turn (a consume needs the topic and the group).
    pub fn check_all(
        &self,
        extensions: &http::Extensions,
        action: Action,
        resources: &[Resource<'_>],
    ) -> Result<(), tonic::Status> {
        resources
            .iter()
            .try_for_each(|resource| self.check(extensions, action, *resource))
    }

    fn refuse(&self, caller: &Caller, need: &Need<'_>, refused: Refused) -> tonic::Status {
        metrics::counter!(USER_REFUSALS_METRIC, "reason" => refused.label()).increment(1);
        let user = caller.name();
        if self.warn_limit.allows() {
            tracing::warn!(user, %need, reason = refused.label(), "request refused");
        } else {
            tracing::debug!(user, %need, reason = refused.label(), "request refused");
        }
        let (code, message) = match refused {
            Refused::Unauthenticated => (
                ErrorCode::Unauthorized,
                format!("{need} needs credentials: sign the request with an access key"),
            ),
            Refused::UnknownUser => (
                ErrorCode::Unauthorized,
                format!("user {user:?} does not exist"),
            ),
            Refused::Forbidden => (
                ErrorCode::Forbidden,
                format!("user {user:?} may not {need}"),
            ),
        };
        proto::error_status(code, message)
    }
}

/// What a refused request needed, for its message and log line.
enum Need<'a> {
    /// An action on a resource ([`Gate::check`]).
    To(Action, Resource<'a>),
    /// Only a user the ACL knows ([`Gate::check_user`]).
    Known,
}

impl std::fmt::Display for Need<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::To(action, resource) => write!(f, "{action} on {resource}"),
            Need::Known => f.write_str("this call"),
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Refused {
    Unauthenticated,
    UnknownUser,
    Forbidden,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Unauthenticated => "unauthenticated",
            Refused::UnknownUser => "unknown_user",
            Refused::Forbidden => "forbidden",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::{Effect, Policy, User};

    fn gate() -> Gate {
        let key = ClusterKey::new("0123456789abcdef").unwrap();
        let directory = Directory::new(Some(key.clone()));
        let mut acl = AclSnapshot {
            revision: 2,
            ..AclSnapshot::default()
        };
        acl.users.insert(
            "app".into(),
            User {
                name: "app".into(),
                secret: key.seal("app", "secret-key-1"),
                admin: false,
            },
        );
        acl.policies.insert(
            "app".into(),
            vec![Policy {
                resource: "topic:orders".parse().unwrap(),
                actions: [Action::Send].into(),
                effect: Effect::Allow,
            }],
        );
        assert!(directory.replace(acl));
        Gate::new(directory, true)
    }

    fn code(result: Result<(), tonic::Status>) -> Option<ErrorCode> {
        result
            .err()
            .and_then(|status| proto::status::error_code(&status))
    }

    #[test]
    fn anonymous_unknown_and_unpermitted_callers_get_their_own_codes() {
        let gate = gate();
        let mut extensions = http::Extensions::new();
        let send = |extensions: &http::Extensions, topic| {
            gate.check(extensions, Action::Send, Resource::Topic(topic))
        };
        assert_eq!(
            code(send(&extensions, "orders")),
            Some(ErrorCode::Unauthorized)
        );
        extensions.insert(Caller::User("ghost".into()));
        assert_eq!(
            code(send(&extensions, "orders")),
            Some(ErrorCode::Unauthorized)
        );
        extensions.insert(Caller::User("app".into()));
        assert!(send(&extensions, "orders").is_ok());
        assert_eq!(
            code(send(&extensions, "payments")),
            Some(ErrorCode::Forbidden)
        );
        assert!(Gate::open()
            .check(&http::Extensions::new(), Action::Admin, Resource::Cluster)
            .is_ok());
    }

    #[test]
    fn silent_checks_and_known_user_checks_agree_with_the_acl() {
        let gate = gate();
        let mut extensions = http::Extensions::new();
        assert!(!gate.allows(&extensions, Action::Send, Resource::Topic("orders")));
        assert_eq!(
            code(gate.check_user(&extensions)),
            Some(ErrorCode::Unauthorized)
        );
        extensions.insert(Caller::User("ghost".into()));
        assert_eq!(
            code(gate.check_user(&extensions)),
            Some(ErrorCode::Unauthorized)
        );
        extensions.insert(Caller::User("app".into()));
        assert!(gate.check_user(&extensions).is_ok());
        assert!(gate.allows(&extensions, Action::Send, Resource::Topic("orders")));
        assert!(!gate.allows(&extensions, Action::Consume, Resource::Topic("orders")));
        let open = Gate::open();
        assert!(open.allows(&http::Extensions::new(), Action::Admin, Resource::Cluster));
        assert!(open.check_user(&http::Extensions::new()).is_ok());
    }

    #[test]
    fn secrets_open_and_older_snapshots_are_ignored() {
        let gate = gate();
        assert_eq!(
            gate.directory().secret_of("app").as_deref(),
            Some("secret-key-1")
        );
        assert_eq!(gate.directory().secret_of("ghost"), None);
        assert!(!gate.directory().replace(AclSnapshot::default()));
        assert!(gate.directory().current().user("app").is_some());
    }
}
