//! Users and the ACL on the controller quorum, with real `controller` processes and `cluster-cli`.
//!
//! Invariant: with `acl_enabled`, nobody without credentials, nobody with a wrong secret key, and
//! no user without the permission reads routes, writes topics or changes the cluster: each is
//! refused (40100 UNAUTHORIZED, 40300 FORBIDDEN) before anything is read or changed, and the
//! state is the same afterwards. The ACL is replicated: it survives the controller leader's
//! kill -9. Every attempt at an audited action is in the audit log.
//!
//! The attackers, in order: someone who reaches a controller with no credentials; someone who
//! knows the admin's access key but not its secret key; an application's user (created by the
//! admin, with send and consume on its topics) trying an unclean election, an ACL change and a
//! topic deletion.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cluster_tests::{member_channel, wait_until, workspace_binary, ControllerQuorum};
use proto::common::ErrorCode;
use proto::controller as pb;
use proto::controller::controller_client::ControllerClient;
use serde_json::Value;

const ADMIN_SECRET: &str = "admin-secret-1";
const ACL_ARGS: &[&str] = &[
    "--set",
    "acl_enabled=true",
    "--set",
    "admin_secret_key=\"admin-secret-1\"",
    // A registered broker that never heartbeats is dead after this: topic creation does not
    // wait longer for it to sync.
    "--set",
    "broker_heartbeat_timeout_ms=700",
];

/// Whose credentials a `cluster-cli` run carries.
#[derive(Clone, Copy)]
enum As<'a> {
    Nobody,
    User(&'a str, &'a str),
}

/// `cluster-cli --controller CONTROLLERS ARGS` as `who`: exit code, stdout, stderr.
fn cli(controllers: &str, who: As<'_>, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(workspace_binary("cluster-cli", "cluster-cli"));
    command
        .args(["--controller", controllers])
        .args(args)
        .env_remove("CLUSTER_ACCESS_KEY")
        .env_remove("CLUSTER_SECRET_KEY");
    if let As::User(access_key, secret_key) = who {
        command
            .env("CLUSTER_ACCESS_KEY", access_key)
            .env("CLUSTER_SECRET_KEY", secret_key);
    }
    let output = command.output().expect("run cluster-cli");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

const ADMIN: As<'static> = As::User("admin", ADMIN_SECRET);

/// `cli` with `--json`, which must succeed; its output parsed.
fn json_ok(controllers: &str, who: As<'_>, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = cli(controllers, who, &all);
    assert_eq!(code, 0, "{args:?} failed: {stderr}");
    serde_json::from_str(stdout.trim()).expect("JSON output")
}

/// Asserts that `args` as `who` was refused with `code` (named as ControllerError prints it).
/// The admin creates user `name` with its secret key given in a file of `secret_file_text` in
/// `dir`, as an operator does.
fn create_user(controllers: &str, dir: &Path, name: &str, secret_file_text: &str) {
    let secret_file = dir.join(format!("{name}.secret"));
    std::fs::write(&secret_file, secret_file_text).unwrap();
    json_ok(
        controllers,
        ADMIN,
        &[
            "user",
            "create",
            name,
            "--secret-key-file",
            secret_file.to_str().unwrap(),
        ],
    );
}

fn refused(controllers: &str, who: As<'_>, args: &[&str], code: &str) {
    let (exit, stdout, stderr) = cli(controllers, who, args);
    assert_ne!(exit, 0, "{args:?} was not refused: {stdout}");
    assert!(
        stderr.contains(code),
        "{args:?}: expected {code}, got {stderr}"
    );
}

/// Waits until the admin's calls work on every controller: the quorum has a leader, it wrote
/// the built-in admin, and each controller applied it (a follower that has not yet refuses the
/// admin's signature as an unknown access key).
fn wait_for_admin(quorum: &ControllerQuorum) {
    for member in &quorum.members {
        let ready = wait_until(Duration::from_secs(20), || {
            cli(&member.addr, ADMIN, &["user", "list"]).0 == 0
        });
        assert!(
            ready,
            "the built-in admin never worked on controller {}",
            member.id
        );
    }
}

fn user_names(controllers: &str) -> Vec<String> {
    json_ok(controllers, ADMIN, &["user", "list"])["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A controller client whose calls are signed as `access_key`/`secret_key`.
fn signed_client(
    addr: &str,
    access_key: &str,
    secret_key: &str,
) -> ControllerClient<auth::SignedChannel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let credentials = auth::Credentials::new(access_key, secret_key).unwrap();
    ControllerClient::new(auth::SignedChannel::unsigned(channel).with_user(Some(credentials)))
}

fn code_of(status: &tonic::Status) -> Option<ErrorCode> {
    proto::status::error_code(status)
}

/// Registers broker 0 of `group` as a static master (as a broker would, signed as a member).
fn register_static_master(runtime: &tokio::runtime::Runtime, controller: &str, group: &str) {
    runtime.block_on(async {
        let mut client = ControllerClient::new(member_channel(controller));
        client
            .register_broker(pb::RegisterBrokerRequest {
                cluster: "DefaultCluster".to_owned(),
                group: group.to_owned(),
                broker_id: 0,
                addr: "127.0.0.1:30911".to_owned(),
                role: pb::BrokerRole::Master as i32,
                ..Default::default()
            })
            .await
            .expect("register the broker");
    });
}

fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

#[test]
fn strangers_and_unpermitted_users_change_nothing_and_the_admin_manages_users() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = ControllerQuorum::start(dir.path(), 1, ACL_ARGS);
    let c = quorum.addrs();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    wait_for_admin(&quorum);
    register_static_master(&runtime, &c, "g1");
    // Exit 1: created, but the group's (fake) master never synced it.
    let (code, _, stderr) = cli(&c, ADMIN, &["topic", "create", "orders", "--queues", "2"]);
    assert!(code == 0 || code == 1, "{stderr}");
    let topics = |c: &str| {
        json_ok(c, ADMIN, &["topic", "list"])["topics"]
            .as_array()
            .unwrap()
            .len()
    };
    // Exit 1: the fake broker is not alive; the JSON is there.
    let master = |c: &str| {
        let (_, stdout, stderr) = cli(c, ADMIN, &["--json", "cluster", "list"]);
        let list: Value = serde_json::from_str(stdout.trim()).expect(&stderr);
        list["groups"][0]["master_id"].clone()
    };
    let master_before = master(&c);
    assert_eq!(master_before, 0);

    // (a) No credentials: refused with UNAUTHORIZED, nothing changed.
    refused(
        &c,
        As::Nobody,
        &["topic", "create", "other"],
        "Unauthorized",
    );
    refused(
        &c,
        As::Nobody,
        &["user", "create", "mallory"],
        "Unauthorized",
    );
    refused(
        &c,
        As::Nobody,
        &[
            "cluster",
            "elect",
            "g1",
            "--broker-id",
            "0",
            "--unclean",
            "--yes",
        ],
        "Unauthorized",
    );
    refused(
        &c,
        As::Nobody,
        &["topic", "route", "orders"],
        "Unauthorized",
    );
    // (b) The admin's access key with a wrong secret key: the signature does not verify.
    let forger = As::User("admin", "not-the-secret");
    refused(&c, forger, &["topic", "create", "other"], "Unauthorized");
    refused(&c, forger, &["user", "create", "mallory"], "Unauthorized");
    assert_eq!(topics(&c), 1);
    assert_eq!(user_names(&c), vec!["admin"]);

    // (d) The admin creates a user (secret generated into a 0600 credentials file) and a policy.
    let credentials = dir.path().join("app1.credentials");
    let created = json_ok(
        &c,
        ADMIN,
        &[
            "user",
            "create",
            "app1",
            "--credentials-out",
            credentials.to_str().unwrap(),
        ],
    );
    assert_eq!(created["changed"], true);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&credentials)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let app = auth::Credentials::from_file(&credentials).unwrap();
    assert_eq!(app.access_key, "app1");
    let app_secret = app.secret_key().to_owned();
    assert!(
        !created.to_string().contains(&app_secret),
        "a secret written to a file is not printed"
    );
    let app1 = As::User("app1", &app_secret);
    json_ok(
        &c,
        ADMIN,
        &[
            "acl",
            "create",
            "--user",
            "app1",
            "--resource",
            "topic:orders*",
            "--actions",
            "send,consume",
        ],
    );
    let listed = cli(&c, ADMIN, &["--json", "user", "list"]).1;
    assert!(
        !listed.contains(&app_secret) && !listed.contains("secret"),
        "{listed}"
    );
    let users = json_ok(&c, ADMIN, &["user", "list"]);
    let app_entry = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "app1")
        .unwrap()
        .clone();
    assert_eq!(app_entry["admin"], false);
    assert_eq!(app_entry["policies"], 1);
    let admin_entry = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "admin")
        .unwrap()
        .clone();
    assert_eq!(admin_entry["built_in"], true);

    // The user may read its topic's route...
    assert_eq!(cli(&c, app1, &["topic", "route", "orders"]).0, 0);
    // (c) ...but not administer: elections, the ACL, users, topics.
    let acl_before = json_ok(&c, ADMIN, &["acl", "list"]);
    refused(
        &c,
        app1,
        &[
            "cluster",
            "elect",
            "g1",
            "--broker-id",
            "0",
            "--unclean",
            "--yes",
        ],
        "Forbidden",
    );
    refused(
        &c,
        app1,
        &[
            "acl",
            "create",
            "--user",
            "app1",
            "--resource",
            "topic:*",
            "--actions",
            "send",
        ],
        "Forbidden",
    );
    refused(
        &c,
        app1,
        &["user", "update", "app1", "--admin", "true"],
        "Forbidden",
    );
    refused(&c, app1, &["topic", "create", "other"], "Forbidden");
    runtime.block_on(async {
        let mut client = signed_client(&c, "app1", &app_secret);
        let elect = client
            .elect_master(pb::ElectMasterRequest {
                group: "g1".into(),
                broker_id: Some(0),
                unclean: true,
            })
            .await
            .unwrap_err();
        assert_eq!(code_of(&elect), Some(ErrorCode::Forbidden));
        let delete = client
            .delete_topic(pb::DeleteTopicRequest {
                topic: "orders".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(code_of(&delete), Some(ErrorCode::Forbidden));
        let mut anonymous = ControllerClient::connect(format!("http://{c}"))
            .await
            .unwrap();
        let delete = anonymous
            .delete_topic(pb::DeleteTopicRequest {
                topic: "orders".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(code_of(&delete), Some(ErrorCode::Unauthorized));
    });
    assert_eq!(topics(&c), 1, "the topic is still there");
    assert_eq!(
        json_ok(&c, ADMIN, &["acl", "list"]),
        acl_before,
        "the ACL is unchanged"
    );
    assert_eq!(master(&c), master_before, "the master is unchanged");
    assert!(!json_ok(&c, ADMIN, &["user", "list"])["users"][1]["admin"]
        .as_bool()
        .unwrap());

    // (d) continued: update, delete; the built-in admin cannot be deleted.
    json_ok(
        &c,
        ADMIN,
        &[
            "acl",
            "update",
            "--user",
            "app1",
            "--resource",
            "topic:orders*",
            "--actions",
            "consume",
            "--deny",
        ],
    );
    let policies = json_ok(&c, ADMIN, &["acl", "list", "--user", "app1"]);
    assert_eq!(policies["policies"][0]["effect"], "deny");
    refused(&c, app1, &["topic", "route", "orders"], "Forbidden");
    refused(&c, ADMIN, &["user", "delete", "admin"], "Conflict");
    refused(
        &c,
        ADMIN,
        &[
            "acl",
            "create",
            "--user",
            "ghost",
            "--resource",
            "topic:t",
            "--actions",
            "send",
        ],
        "NotFound",
    );
    refused(
        &c,
        ADMIN,
        &[
            "acl",
            "create",
            "--user",
            "app1",
            "--resource",
            "group:g",
            "--actions",
            "send",
        ],
        "BadRequest",
    );
    json_ok(
        &c,
        ADMIN,
        &[
            "acl",
            "delete",
            "--user",
            "app1",
            "--resource",
            "topic:orders*",
        ],
    );
    json_ok(&c, ADMIN, &["user", "delete", "app1"]);
    assert_eq!(user_names(&c), vec!["admin"]);
    refused(&c, app1, &["topic", "route", "orders"], "Unauthorized");

    // (f) The audit log has each attempt at an audited action, allowed or refused.
    let audit = audit_lines(&dir.path().join("controller-1").join("audit.log"));
    let has = |user: &str, action: &str, outcome: &str, code: Option<i64>| {
        audit.iter().any(|line| {
            line["user"] == user
                && line["action"] == action
                && line["outcome"] == outcome
                && line["code"].as_i64() == code
        })
    };
    assert!(
        has("anonymous", "user.create", "refused", Some(40100)),
        "{audit:#?}"
    );
    assert!(has("admin", "user.create", "done", None));
    assert!(has("admin", "acl.create", "done", None));
    assert!(has("app1", "acl.create", "refused", Some(40300)));
    assert!(has("app1", "cluster.elect_unclean", "refused", Some(40300)));
    assert!(has("app1", "topic.delete", "refused", Some(40300)));
    assert!(has("anonymous", "topic.delete", "refused", Some(40100)));
    assert!(has("admin", "user.delete", "refused", Some(40900)));
    assert!(has("admin", "user.delete", "done", None));
    let text = std::fs::read_to_string(dir.path().join("controller-1").join("audit.log")).unwrap();
    assert!(
        !text.contains(&app_secret) && !text.contains(ADMIN_SECRET),
        "no secret in the audit log"
    );
}

#[test]
fn the_acl_survives_a_controller_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let mut quorum = ControllerQuorum::start(dir.path(), 3, ACL_ARGS);
    let c = quorum.addrs();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    wait_for_admin(&quorum);
    create_user(&c, dir.path(), "app1", "app1-secret-key\n");
    json_ok(
        &c,
        ADMIN,
        &[
            "acl",
            "create",
            "--user",
            "app1",
            "--resource",
            "topic:orders",
            "--actions",
            "send",
        ],
    );
    let app1 = As::User("app1", "app1-secret-key");
    // Permitted: the gate lets it through, and the topic does not exist. Refused: the gate.
    let decisions = |addr: &str| {
        runtime.block_on(async {
            let mut client = signed_client(addr, "app1", "app1-secret-key");
            let route = |topic: &str| pb::GetRouteRequest {
                topic: topic.into(),
            };
            let orders = client.get_route(route("orders")).await.unwrap_err();
            let payments = client.get_route(route("payments")).await.unwrap_err();
            (code_of(&orders), code_of(&payments))
        })
    };
    let leader = json_ok(&c, ADMIN, &["controller", "status"])["leader_id"]
        .as_u64()
        .unwrap();
    assert_eq!(
        decisions(&quorum.member(1).addr.clone()),
        (Some(ErrorCode::TopicNotFound), Some(ErrorCode::Forbidden))
    );

    quorum.kill(leader, libc::SIGKILL);
    let survivors: Vec<String> = quorum
        .members
        .iter()
        .filter(|m| m.id != leader)
        .map(|m| m.addr.clone())
        .collect();
    let survivors = survivors.join(",");
    let new_leader = wait_until(Duration::from_secs(20), || {
        // Exit 1 while the killed controller is listed unreachable: the JSON is there.
        let (_, stdout, _) = cli(&survivors, ADMIN, &["--json", "controller", "status"]);
        serde_json::from_str::<Value>(stdout.trim())
            .ok()
            .and_then(|status| status["leader_id"].as_u64())
            .is_some_and(|id| id != leader)
    });
    assert!(new_leader, "no new controller leader");
    assert_eq!(user_names(&survivors), vec!["admin", "app1"]);
    let policies = json_ok(&survivors, ADMIN, &["acl", "list"]);
    assert_eq!(policies["policies"][0]["resource"], "topic:orders");
    for member in quorum.members.iter().filter(|m| m.id != leader) {
        assert_eq!(
            decisions(&member.addr),
            (Some(ErrorCode::TopicNotFound), Some(ErrorCode::Forbidden)),
            "controller {} decides as before",
            member.id
        );
    }
    refused(&survivors, app1, &["user", "list"], "Forbidden");
    refused(&survivors, As::Nobody, &["user", "list"], "Unauthorized");
}

/// The feed brokers follow: a member's `follow_acl` holds the ACL at subscribe and after each
/// change; someone who is not a member gets no ACL (the sealed secrets stay with members). A
/// member's own calls (handover, routes for its clients) need no user.
#[test]
fn members_follow_the_acl_and_strangers_cannot_watch_it() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = ControllerQuorum::start(dir.path(), 1, ACL_ARGS);
    let c = quorum.addrs();
    wait_for_admin(&quorum);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let key = auth::ClusterKey::new(cluster_tests::TEST_CLUSTER_SECRET).unwrap();
    let directory = auth::Directory::new(Some(key.clone()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Its channels connect lazily, inside the runtime.
    let _entered = runtime.enter();
    let connection = controller_client::ControllerConnection::member(&c, key).unwrap();
    let follower = runtime.spawn(controller_client::acl::follow_acl(
        connection,
        directory.clone(),
        stopped,
    ));
    let has = |name: &str| directory.current().user(name).is_some();
    assert!(wait_until(Duration::from_secs(10), || has("admin")));
    let revision = directory.current().revision;
    create_user(&c, dir.path(), "app1", "app1-secret-key");
    assert!(wait_until(Duration::from_secs(10), || has("app1")));
    assert!(directory.current().revision > revision);
    json_ok(&c, ADMIN, &["user", "delete", "app1"]);
    assert!(wait_until(Duration::from_secs(10), || !has("app1")));
    stop.send_replace(true);
    runtime
        .block_on(tokio::time::timeout(Duration::from_secs(5), follower))
        .expect("follow_acl stops when told")
        .unwrap();

    runtime.block_on(async {
        let mut stranger = ControllerClient::connect(format!("http://{c}"))
            .await
            .unwrap();
        let refused = stranger
            .watch_acl(pb::WatchAclRequest {})
            .await
            .unwrap_err();
        assert_eq!(code_of(&refused), Some(ErrorCode::Unauthorized));
        // Even the admin is not a member.
        let mut admin = signed_client(&c, "admin", ADMIN_SECRET);
        let refused = admin.watch_acl(pb::WatchAclRequest {}).await.unwrap_err();
        assert_eq!(code_of(&refused), Some(ErrorCode::Unauthorized));
        let route = pb::GetRouteRequest {
            topic: "nope".into(),
        };
        let refused = stranger.route_for_broker(route.clone()).await.unwrap_err();
        assert_eq!(code_of(&refused), Some(ErrorCode::Unauthorized));
        // A member acts for itself without a user: its calls reach the service.
        let mut member = ControllerClient::new(member_channel(&c));
        let answer = member.route_for_broker(route).await.unwrap_err();
        assert_eq!(code_of(&answer), Some(ErrorCode::TopicNotFound));
        let unclean = pb::ElectMasterRequest {
            group: "g1".into(),
            broker_id: Some(0),
            unclean: true,
        };
        let answer = member.hand_over(unclean).await.unwrap_err();
        assert_eq!(code_of(&answer), Some(ErrorCode::BadRequest));
    });
}
