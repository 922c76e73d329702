//! `user create|update|delete|list` and `acl create|update|delete|list`: users and their
//! policies on the controller quorum (RocketMQ 5's `mqadmin createUser`, `createAcl`, ...).
//! Every command needs an admin's credentials (`CLUSTER_ACCESS_KEY`, `CLUSTER_SECRET_KEY`) once
//! the controllers run with `acl_enabled`.
//!
//! A new user's secret key comes from `--secret-key-file` (a file holding the key alone, or a
//! credentials file), or is generated: then it is written to `--credentials-out` (mode 0600,
//! never over an existing file) in the format `auth::Credentials::from_file` reads, or printed
//! once. It is never printed otherwise, and `user list` shows none.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use client::controller::acl::{generate_secret_key, policy};
use client::controller::{wire, ControllerConnection, Credentials};
use serde_json::json;

/// Largest secret key file read.
const SECRET_FILE_BYTES_MAX: u64 = 64 << 10;

#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user: its secret key from --secret-key-file, or generated (written to
    /// --credentials-out, or printed once).
    Create {
        /// The user's name: its access key.
        name: String,
        #[command(flatten)]
        secret: SecretArgs,
        /// May do everything, policies or not.
        #[arg(long)]
        admin: bool,
    },
    /// Change a user's secret key (--secret-key-file, or --new-secret-key to generate one)
    /// and/or its admin flag.
    Update {
        name: String,
        #[arg(long)]
        secret_key_file: Option<PathBuf>,
        /// Generate a new secret key (written to --credentials-out, or printed once).
        #[arg(long, conflicts_with = "secret_key_file")]
        new_secret_key: bool,
        /// Where a generated secret key goes, as a credentials file (mode 0600, not overwritten).
        #[arg(long)]
        credentials_out: Option<PathBuf>,
        #[arg(long)]
        admin: Option<bool>,
    },
    /// Delete a user and its policies.
    Delete { name: String },
    /// Every user (no secret is ever shown).
    List,
}

#[derive(clap::Args, Debug)]
pub struct SecretArgs {
    /// A file holding the secret key alone, or a credentials file (access_key=/secret_key=).
    #[arg(long)]
    secret_key_file: Option<PathBuf>,
    /// Where a generated secret key goes, as a credentials file (mode 0600, not overwritten).
    #[arg(long, conflicts_with = "secret_key_file")]
    credentials_out: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum AclCommand {
    /// Give a user a policy on a resource (one per user and resource).
    Create(PolicyArgs),
    /// Replace a user's policy on a resource.
    Update(PolicyArgs),
    /// Remove a user's policy on a resource.
    Delete {
        #[arg(long)]
        user: String,
        #[arg(long)]
        resource: String,
    },
    /// Every policy, or one user's.
    List {
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    #[arg(long)]
    user: String,
    /// topic:NAME, topic:PREFIX*, topic:*, the same with group:, or cluster.
    #[arg(long)]
    resource: String,
    /// send, consume, admin; comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    actions: Vec<String>,
    /// Deny these actions (a deny wins over every allow); default: allow.
    #[arg(long)]
    deny: bool,
}

/// The secret key in `path`: a credentials file's `secret_key`, or the file's text trimmed.
fn read_secret_key(path: &Path) -> Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(SECRET_FILE_BYTES_MAX).read_to_string(&mut text))
        .with_context(|| format!("read {}", path.display()))?;
    if text.contains("secret_key=") {
        return Ok(Credentials::from_file(path)?.secret_key().to_owned());
    }
    Ok(text.trim().to_owned())
}

/// Writes a credentials file readable by its owner only; refuses to replace an existing file.
fn write_credentials(path: &Path, name: &str, secret_key: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(format!("access_key={name}\nsecret_key={secret_key}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// Hands a generated secret key over: into the credentials file, or printed once.
fn hand_over(
    name: &str,
    secret_key: &str,
    out: Option<&Path>,
    json_out: bool,
) -> Result<Option<String>> {
    match out {
        Some(path) => {
            write_credentials(path, name, secret_key)?;
            if !json_out {
                out!("credentials of {name} written to {}", path.display());
            }
            Ok(None)
        }
        None => Ok(Some(secret_key.to_owned())),
    }
}

fn changed_line(
    what: &str,
    answer: &wire::AclChangeResponse,
    json_out: bool,
    extra: serde_json::Value,
) {
    if json_out {
        let mut object = json!({ "changed": answer.changed, "revision": answer.revision });
        if let (Some(object), Some(extra)) = (object.as_object_mut(), extra.as_object()) {
            object.extend(extra.clone());
        }
        out!("{object}");
    } else {
        let how = if answer.changed { "done" } else { "already so" };
        out!("{what}: {how} (ACL revision {})", answer.revision);
    }
}

pub async fn user(
    conn: &ControllerConnection,
    json_out: bool,
    command: UserCommand,
) -> Result<ExitCode> {
    match command {
        UserCommand::Create {
            name,
            secret,
            admin,
        } => {
            let (secret_key, generated) = match &secret.secret_key_file {
                Some(path) => (read_secret_key(path)?, false),
                None => (generate_secret_key(), true),
            };
            let answer = conn.create_user(&name, &secret_key, admin).await?;
            let shown = if generated {
                hand_over(
                    &name,
                    &secret_key,
                    secret.credentials_out.as_deref(),
                    json_out,
                )?
            } else {
                None
            };
            report_user(&format!("user {name} created"), &answer, json_out, shown);
        }
        UserCommand::Update {
            name,
            secret_key_file,
            new_secret_key,
            credentials_out,
            admin,
        } => {
            let secret_key = match (&secret_key_file, new_secret_key) {
                (Some(path), _) => Some(read_secret_key(path)?),
                (None, true) => Some(generate_secret_key()),
                (None, false) => None,
            };
            let answer = conn
                .update_user(&name, secret_key.as_deref(), admin)
                .await?;
            let shown = match (&secret_key, new_secret_key) {
                (Some(secret_key), true) => {
                    hand_over(&name, secret_key, credentials_out.as_deref(), json_out)?
                }
                _ => None,
            };
            report_user(&format!("user {name} updated"), &answer, json_out, shown);
        }
        UserCommand::Delete { name } => {
            let answer = conn.delete_user(&name).await?;
            changed_line(
                &format!("user {name} deleted"),
                &answer,
                json_out,
                json!({}),
            );
        }
        UserCommand::List => {
            let list = conn.list_users().await?;
            if json_out {
                let users: Vec<_> = list
                    .users
                    .iter()
                    .map(|u| json!({ "name": u.name, "admin": u.admin, "built_in": u.built_in, "policies": u.policy_count }))
                    .collect();
                out!("{}", json!({ "users": users, "revision": list.revision }));
            } else {
                out!(
                    "{:<32} {:>6} {:>9} {:>9}",
                    "USER",
                    "ADMIN",
                    "BUILT-IN",
                    "POLICIES"
                );
                for u in &list.users {
                    out!(
                        "{:<32} {:>6} {:>9} {:>9}",
                        u.name,
                        u.admin,
                        u.built_in,
                        u.policy_count
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A user change's answer, with a generated secret key shown this once when it went nowhere
/// else.
fn report_user(
    what: &str,
    answer: &wire::AclChangeResponse,
    json_out: bool,
    shown: Option<String>,
) {
    match shown {
        Some(secret_key) if json_out => {
            changed_line(what, answer, json_out, json!({ "secret_key": secret_key }));
        }
        Some(secret_key) => {
            changed_line(what, answer, json_out, json!({}));
            out!("secret key (shown this once; keep it): {secret_key}");
        }
        None => changed_line(what, answer, json_out, json!({})),
    }
}

pub async fn acl(
    conn: &ControllerConnection,
    json_out: bool,
    command: AclCommand,
) -> Result<ExitCode> {
    match command {
        AclCommand::Create(args) => put(conn, json_out, args, false).await?,
        AclCommand::Update(args) => put(conn, json_out, args, true).await?,
        AclCommand::Delete { user, resource } => {
            let answer = conn.delete_acl(&user, &resource).await?;
            changed_line(
                &format!("policy of {user} on {resource} deleted"),
                &answer,
                json_out,
                json!({}),
            );
        }
        AclCommand::List { user } => {
            let list = conn.list_acls(user.as_deref()).await?;
            if json_out {
                let policies: Vec<_> = list
                    .policies
                    .iter()
                    .map(|p| json!({ "user": p.user, "resource": p.resource, "actions": p.actions, "effect": p.effect }))
                    .collect();
                out!(
                    "{}",
                    json!({ "policies": policies, "revision": list.revision })
                );
            } else {
                out!(
                    "{:<24} {:<32} {:<22} {:<6}",
                    "USER",
                    "RESOURCE",
                    "ACTIONS",
                    "EFFECT"
                );
                for p in &list.policies {
                    out!(
                        "{:<24} {:<32} {:<22} {:<6}",
                        p.user,
                        p.resource,
                        p.actions.join(","),
                        p.effect
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn put(
    conn: &ControllerConnection,
    json_out: bool,
    args: PolicyArgs,
    replace: bool,
) -> Result<()> {
    let wire = policy(&args.user, &args.resource, &args.actions, args.deny);
    let answer = conn.put_acl(wire, replace).await?;
    let verb = if replace { "updated" } else { "created" };
    changed_line(
        &format!("policy of {} on {} {verb}", args.user, args.resource),
        &answer,
        json_out,
        json!({}),
    );
    Ok(())
}
