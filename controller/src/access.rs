//! The controller's side of users' access, outside the state machine: its own copy of the ACL
//! for its gate ([`follow_directory`]), and the built-in admin the leader keeps in the state
//! ([`keep_built_in_admin`]).
//!
//! Why the leader proposes the built-in admin rather than each controller installing it
//! locally: the ACL must be the same on every controller and every broker, so the admin is a
//! replicated user like any other, written through Raft; the configuration only says who it
//! must be. A leader that finds it missing, demoted, or with a sealed secret that does not open
//! to the configured one (the secret was changed in the configuration, or another cluster key
//! sealed it) proposes `EnsureBuiltInAdmin`; one that finds it as configured proposes nothing,
//! so a restart or a leader change writes nothing.

use std::time::Duration;

use auth::{ClusterKey, Directory};
use openraft::ServerState;

use crate::acl::{AclCommand, AclState};
use crate::state::Command;
use crate::store::SharedState;
use crate::Raft;

/// Pause before proposing the built-in admin again after a failed proposal.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Keeps `directory` at the applied state's ACL: now, and after every applied change (a
/// command or an installed snapshot). Ends when the state machine goes away.
pub async fn follow_directory(state: SharedState, directory: Directory) {
    let mut changes = state.changes();
    let mut installed: Option<u64> = None;
    loop {
        let revision = state.read(|data| data.state.acl.snapshot.revision);
        if installed != Some(revision) {
            let snapshot = state.read(|data| data.state.acl.snapshot.clone());
            directory.replace(snapshot);
            installed = Some(revision);
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The built-in admin as configured: `admin_access_key` and `admin_secret_key`.
#[derive(Clone)]
pub struct BuiltInAdmin {
    pub name: String,
    pub secret_key: String,
}

impl std::fmt::Debug for BuiltInAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltInAdmin")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl BuiltInAdmin {
    /// Whether `acl` holds this admin as configured.
    pub fn is_in(&self, acl: &AclState, key: &ClusterKey) -> bool {
        let Some(user) = acl.snapshot.users.get(&self.name) else {
            return false;
        };
        acl.built_in_admin.as_deref() == Some(self.name.as_str())
            && user.admin
            && key
                .open(&self.name, &user.secret)
                .is_ok_and(|secret| secret == self.secret_key)
    }
}

/// While this controller leads, makes sure the state holds `admin` as configured (see the
/// module documentation). Looks again at every leadership or state change.
pub async fn keep_built_in_admin(
    raft: Raft,
    state: SharedState,
    key: ClusterKey,
    admin: BuiltInAdmin,
) {
    let mut metrics = raft.metrics();
    let mut changes = state.changes();
    loop {
        let leading = metrics.borrow_and_update().state == ServerState::Leader;
        let missing = leading && !state.read(|data| admin.is_in(&data.state.acl, &key));
        if missing {
            let command = Command::Acl(AclCommand::EnsureBuiltInAdmin {
                name: admin.name.clone(),
                secret: key.seal(&admin.name, &admin.secret_key),
            });
            match raft.client_write(command).await {
                Ok(response) => match response.data.into_result() {
                    Ok(_) => {
                        tracing::info!(user = %admin.name, "built-in admin written to the ACL")
                    }
                    Err(err) => {
                        tracing::error!(user = %admin.name, error = %err, "the built-in admin was refused");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                },
                Err(err) => {
                    tracing::debug!(error = %err, "could not propose the built-in admin; trying again");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_admin_is_found_only_as_configured() {
        let key = ClusterKey::new("access-test-secret-1").unwrap();
        let admin = BuiltInAdmin {
            name: "admin".into(),
            secret_key: "admin-secret-1".into(),
        };
        let mut acl = AclState::default();
        assert!(!admin.is_in(&acl, &key));
        let ensure = |secret: &str| AclCommand::EnsureBuiltInAdmin {
            name: "admin".into(),
            secret: key.seal("admin", secret),
        };
        acl.apply(&ensure("admin-secret-1")).unwrap();
        assert!(admin.is_in(&acl, &key));
        assert!(!admin.is_in(&acl, &ClusterKey::new("another-cluster-key").unwrap()));
        acl.apply(&ensure("admin-secret-2")).unwrap();
        assert!(!admin.is_in(&acl, &key), "the configured secret changed");
        assert!(!format!("{admin:?}").contains("admin-secret-1"));
    }
}
