//! Users and their permissions on the controller quorum: the typed admin calls behind
//! `cluster-cli user` and `cluster-cli acl`, and [`follow_acl`], which keeps a broker's copy of
//! the ACL (an `auth::Directory`) at the quorum's.
//!
//! The feed: `WatchAcl` (members only, served by the leader) sends the whole ACL as
//! `auth::AclSnapshot` JSON at subscribe and at every change; secrets in it are sealed with the
//! cluster key, which the broker holds. A snapshot older than the one held (a deposed leader's)
//! is ignored by the directory itself.

use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use crate::error::ControllerError;
use crate::quorum::ControllerConnection;
use crate::wire;

/// Longest the opening of the ACL watch may take at one controller.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause after every controller refused or ended the watch; doubles up to
/// [`REWATCH_PAUSE_MAX`].
const REWATCH_PAUSE_MIN: Duration = Duration::from_millis(100);
const REWATCH_PAUSE_MAX: Duration = Duration::from_secs(2);
/// Length of a secret key [`generate_secret_key`] makes: 32 characters of 62, about 190 bits.
pub const GENERATED_SECRET_KEY_CHARS: usize = 32;

/// A fresh random secret key for a new user: letters and digits, so that it survives files,
/// environment variables and command lines unchanged.
pub fn generate_secret_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..GENERATED_SECRET_KEY_CHARS)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// A policy in the words `cluster-cli acl` takes (`topic:orders*`, `send,consume`, `deny`).
pub fn policy(user: &str, resource: &str, actions: &[String], deny: bool) -> wire::AclPolicy {
    wire::AclPolicy {
        user: user.to_owned(),
        resource: resource.to_owned(),
        actions: actions.to_vec(),
        effect: if deny { "deny" } else { "allow" }.to_owned(),
    }
}

impl ControllerConnection {
    /// Creates a user with `secret_key` (sent once, sealed by the leader).
    pub async fn create_user(
        &self,
        name: &str,
        secret_key: &str,
        admin: bool,
    ) -> Result<wire::AclChangeResponse, ControllerError> {
        let request = wire::CreateUserRequest {
            name: name.to_owned(),
            secret_key: secret_key.to_owned(),
            admin,
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.create_user(request).await }
        })
        .await
    }

    /// Changes a user's secret key and/or admin flag (`None`: unchanged).
    pub async fn update_user(
        &self,
        name: &str,
        secret_key: Option<&str>,
        admin: Option<bool>,
    ) -> Result<wire::AclChangeResponse, ControllerError> {
        let request = wire::UpdateUserRequest {
            name: name.to_owned(),
            secret_key: secret_key.map(str::to_owned),
            admin,
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.update_user(request).await }
        })
        .await
    }

    /// Deletes a user and its policies.
    pub async fn delete_user(
        &self,
        name: &str,
    ) -> Result<wire::AclChangeResponse, ControllerError> {
        let request = wire::DeleteUserRequest {
            name: name.to_owned(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.delete_user(request).await }
        })
        .await
    }

    /// Every user, without secrets.
    pub async fn list_users(&self) -> Result<wire::ListUsersResponse, ControllerError> {
        self.call(|mut c| async move { c.list_users(wire::ListUsersRequest {}).await })
            .await
    }

    /// Creates (`replace: false`) or replaces (`replace: true`) the policy of its user on its
    /// resource.
    pub async fn put_acl(
        &self,
        policy: wire::AclPolicy,
        replace: bool,
    ) -> Result<wire::AclChangeResponse, ControllerError> {
        let request = wire::AclPolicyRequest {
            policy: Some(policy),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move {
                if replace {
                    c.update_acl(request).await
                } else {
                    c.create_acl(request).await
                }
            }
        })
        .await
    }

    pub async fn delete_acl(
        &self,
        user: &str,
        resource: &str,
    ) -> Result<wire::AclChangeResponse, ControllerError> {
        let request = wire::DeleteAclRequest {
            user: user.to_owned(),
            resource: resource.to_owned(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.delete_acl(request).await }
        })
        .await
    }

    /// Every policy, or `user`'s only.
    pub async fn list_acls(
        &self,
        user: Option<&str>,
    ) -> Result<wire::ListAclsResponse, ControllerError> {
        let request = wire::ListAclsRequest {
            user: user.unwrap_or_default().to_owned(),
        };
        self.call(|mut c| {
            let request = request.clone();
            async move { c.list_acls(request).await }
        })
        .await
    }
}

/// Keeps `directory` at the quorum's ACL until `stop` turns true (or its sender goes away): a
/// `WatchAcl` stream held open on the leader (any controller is tried; followers refuse), each
/// snapshot it sends installed with `directory.replace`, reopened with a backoff (doubling from
/// 100 ms to 2 s) when it ends. `connection` must be a member's
/// ([`ControllerConnection::member`]): the watch is member-only.
pub async fn follow_acl(
    connection: ControllerConnection,
    directory: auth::Directory,
    mut stop: watch::Receiver<bool>,
) {
    let mut pause = REWATCH_PAUSE_MIN;
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        let followed = tokio::select! {
            followed = follow_once(&connection, &directory) => followed,
            _ = stop.changed() => return,
        };
        pause = if followed {
            REWATCH_PAUSE_MIN
        } else {
            (pause * 2).min(REWATCH_PAUSE_MAX)
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}

/// One pass over the controllers: follows the first that serves the watch until its stream
/// ends. Whether any snapshot was received (then the next attempt comes soon).
async fn follow_once(connection: &ControllerConnection, directory: &auth::Directory) -> bool {
    for (addr, mut client) in connection.clients() {
        let opened = tokio::time::timeout(OPEN_TIMEOUT, client.watch_acl(wire::WatchAclRequest {}));
        let mut stream = match opened.await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => {
                tracing::debug!(controller = %addr, error = %status.message(), "ACL watch refused");
                continue;
            }
            Err(_) => continue,
        };
        let mut received = false;
        while let Ok(Some(update)) = stream.message().await {
            match serde_json::from_slice::<auth::AclSnapshot>(&update.snapshot_json) {
                Ok(snapshot) => {
                    received = true;
                    if directory.replace(snapshot) {
                        tracing::info!(revision = update.revision, "ACL updated");
                    }
                }
                Err(err) => {
                    tracing::error!(controller = %addr, error = %err, "an ACL update does not decode; keeping the last one");
                }
            }
        }
        return received;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_keys_are_valid_and_differ() {
        let one = generate_secret_key();
        assert_eq!(one.len(), GENERATED_SECRET_KEY_CHARS);
        assert!(auth::acl::check_secret_key(&one).is_ok());
        assert_ne!(one, generate_secret_key());
    }

    #[tokio::test]
    async fn follow_acl_ends_when_told_to_stop() {
        let connection = ControllerConnection::new("127.0.0.1:1").unwrap();
        let (tx, rx) = watch::channel(false);
        let follower = tokio::spawn(follow_acl(connection, auth::Directory::new(None), rx));
        tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), follower)
            .await
            .expect("follow_acl stops")
            .unwrap();
    }
}
