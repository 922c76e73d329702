//! Users' credentials against real broker processes with `acl_enabled` (standalone brokers:
//! `tests/acl.rs` of the broker crate fills an ACL by hand and covers every RPC and the allowed
//! paths in one process; here the real binaries, cluster-cli and the official Python client).
//!
//! The attacker: anyone who reaches the broker's ports. First without credentials (cluster-cli,
//! the Rust client, the official Python client), then with signatures that cannot verify: an
//! access key the broker does not know, a guessed secret, a signature captured an hour ago and
//! sent again. Invariants: each is refused with 40100 (`UNAUTHORIZED`), the refusals are counted
//! in `auth_refusals_total{reason}`, and nothing changes: the broker, restarted without the ACL
//! on the same store, shows the same queue offsets, the same committed offset and no new topic.
//! Bad credentials input to cluster-cli is a clear error, not a panic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use auth::Credentials;
use cluster_tests::v5::{finish, start_script_as};
use cluster_tests::{wait_until, workspace_binary, BrokerProcess};
use proto::client as wire;
use proto::client::broker_client::BrokerClient;
use proto::client::consumer_groups_client::ConsumerGroupsClient;
use proto::common::ErrorCode;

const TOPIC: &str = "orders";
const GROUP: &str = "g1";
const SECRET: &str = "0123456789abcdef0123";

/// The broker on `store`, its ACL enforced or not, with its metrics and v5 API on.
fn broker(store: &Path, acl_enabled: bool) -> BrokerProcess {
    let acl = format!("acl_enabled={acl_enabled}");
    let secret = format!("cluster_secret={SECRET:?}");
    BrokerProcess::start(
        store,
        &[
            "--set",
            &acl,
            "--set",
            &secret,
            "--set",
            "metrics_listen=\"127.0.0.1:0\"",
            "--set",
            "v5_listen=\"127.0.0.1:0\"",
        ],
    )
}

/// `cluster-cli ARGS` with `env` added (and no credentials inherited): exit code, stdout and
/// stderr.
fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(workspace_binary("cluster-cli", "cluster-cli"));
    for name in [
        "CLUSTER_ACCESS_KEY",
        "CLUSTER_SECRET_KEY",
        "CLUSTER_CREDENTIALS",
    ] {
        command.env_remove(name);
    }
    let output = command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run cluster-cli");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// What a refused request must leave as it was: every queue's max offset of the topic, the
/// group's committed offset on queue 0, and the topics there are (read anonymously: the ACL off).
fn state(addr: &str) -> (Vec<u64>, Option<u64>, Vec<String>) {
    runtime().block_on(async {
        let channel = channel(addr).await;
        let topics = BrokerClient::new(channel.clone())
            .list_topics(wire::ListTopicsRequest {})
            .await
            .unwrap()
            .into_inner()
            .topics;
        let offsets = topics
            .iter()
            .filter(|t| t.topic == TOPIC)
            .flat_map(|t| t.queues.iter().map(|q| q.max_queue_offset))
            .collect();
        let committed = ConsumerGroupsClient::new(channel)
            .query_offset(wire::QueryOffsetRequest {
                group: GROUP.into(),
                topic: TOPIC.into(),
                queue_id: 0,
            })
            .await
            .unwrap()
            .into_inner();
        let names = topics
            .into_iter()
            .map(|t| t.topic)
            .filter(|t| !t.starts_with('%'))
            .collect();
        (
            offsets,
            committed.found.then_some(committed.queue_offset),
            names,
        )
    })
}

/// The sum of `auth_refusals_total{reason=REASON}` on the `/metrics` endpoint at `addr`.
fn refusals(addr: &str, reason: &str) -> f64 {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let label = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|line| line.starts_with("auth_refusals_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn code<T: std::fmt::Debug>(answer: Result<T, tonic::Status>) -> ErrorCode {
    let status = answer.unwrap_err();
    proto::status::error_code(&status).unwrap_or_else(|| panic!("no error code: {status:?}"))
}

fn send_request() -> wire::SendRequest {
    wire::SendRequest {
        topic: TOPIC.into(),
        queue_id: 0,
        messages: vec![wire::Message {
            body: bytes::Bytes::from_static(b"stolen"),
            message_id: "forged-1".into(),
            born_timestamp_ms: 1_700_000_000_000,
            ..Default::default()
        }],
    }
}

/// Sends, pulls, commits and creates a topic with the native API, without credentials and
/// with signatures that cannot verify: every one refused with 40100.
fn native_attacks(addr: &str) {
    runtime().block_on(async {
        let channel = channel(addr).await;
        let mut broker = BrokerClient::new(channel.clone());
        assert_eq!(
            code(broker.send(send_request()).await),
            ErrorCode::Unauthorized
        );
        let pull = wire::PullRequest {
            topic: TOPIC.into(),
            queue_id: 0,
            max_messages: 1,
            ..Default::default()
        };
        assert_eq!(code(broker.pull(pull).await), ErrorCode::Unauthorized);
        let create = wire::CreateTopicRequest {
            topic: "stolen".into(),
            queue_count: 1,
        };
        assert_eq!(
            code(broker.create_topic(create).await),
            ErrorCode::Unauthorized
        );
        let commit = wire::CommitOffsetRequest {
            group: GROUP.into(),
            topic: TOPIC.into(),
            queue_id: 0,
            queue_offset: 3,
        };
        assert_eq!(
            code(
                ConsumerGroupsClient::new(channel)
                    .commit_offset(commit)
                    .await
            ),
            ErrorCode::Unauthorized
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for (forger, signed_at) in [
            (Credentials::new("ghost", "ghost-secret-key").unwrap(), now),
            (Credentials::new("admin", "guessed-secret").unwrap(), now),
            (
                Credentials::new("admin", "admin-secret-key").unwrap(),
                now - 3600,
            ),
        ] {
            let mut request = tonic::Request::new(send_request());
            let headers = forger.sign(signed_at);
            let metadata = request.metadata_mut();
            metadata.insert("authorization", headers.authorization.parse().unwrap());
            metadata.insert("x-mq-date-time", headers.date_time.parse().unwrap());
            assert_eq!(
                code(broker.send(request).await),
                ErrorCode::Unauthorized,
                "{forger:?} signed at {signed_at}"
            );
        }
    });
}

/// cluster-cli without credentials, with unknown ones, and with bad input.
fn cli_attacks(addr: &str, dir: &Path) {
    let send = [
        "--broker", addr, "send", "--topic", TOPIC, "--count", "2", "--size", "8",
    ];
    let create = [
        "--broker", addr, "topic", "create", "stolen", "--queues", "1",
    ];
    for env in [
        &[][..],
        &[
            ("CLUSTER_ACCESS_KEY", "ghost"),
            ("CLUSTER_SECRET_KEY", "ghost-secret-key"),
        ][..],
    ] {
        for args in [&send[..], &create[..]] {
            let (code, stdout, stderr) = cli(args, env);
            assert_ne!(code, 0, "{args:?} {env:?}: {stdout}");
            let said = format!("{stdout}{stderr}");
            assert!(
                said.contains("40100") || said.contains("UNAUTHORIZED"),
                "{args:?} {env:?} says why: {said}"
            );
        }
    }
    // Bad credentials input: a clear error before anything is sent, exit code 2, no panic.
    let missing = dir.join("no-such-credentials");
    let garbage = dir.join("garbage-credentials");
    std::fs::write(&garbage, "user=admin\n").unwrap();
    for (env, expected) in [
        (
            vec![("CLUSTER_ACCESS_KEY", "admin")],
            "must be set together",
        ),
        (
            vec![("CLUSTER_CREDENTIALS", missing.to_str().unwrap())],
            "no-such-credentials",
        ),
        (
            vec![("CLUSTER_CREDENTIALS", garbage.to_str().unwrap())],
            "access_key and secret_key",
        ),
    ] {
        let (code, _, stderr) = cli(&send, &env);
        assert_eq!(code, 2, "{env:?}: {stderr}");
        assert!(
            stderr.contains(expected) && !stderr.contains("panicked"),
            "{env:?}: {stderr}"
        );
    }
}

/// The official Python client's producer and SimpleConsumer, without credentials and with a
/// wrong secret: refused (the broker counts each refusal by its reason), and they fail rather
/// than retry forever. The client turns the route's refusal into "failed to fetch topic route"
/// for the application (the 40100 and its message are in its own log,
/// ~/logs/rocketmq_python/rocketmq_client.log).
fn python_attacks(endpoint: &str, metrics: &str, dir: &Path) {
    for (credentials, reason) in [
        (None, "unauthenticated"),
        (Some(("admin", "wrong-secret-key")), "unknown_access_key"),
    ] {
        let counted = refusals(metrics, reason);
        let out = dir.join("python-receipts.jsonl");
        let summary = finish(start_script_as(
            "v5_produce.py",
            &[endpoint, TOPIC, "2", out.to_str().unwrap()],
            credentials,
        ));
        assert_eq!(summary["ok"], 0, "{credentials:?}: {summary}");
        assert_eq!(summary["failed"], 2, "{credentials:?}: {summary}");
        assert_ne!(summary["errors"], serde_json::json!([]), "{summary}");
        let out = dir.join("python-consumed.jsonl");
        let summary = finish(start_script_as(
            "v5_consume.py",
            &[endpoint, TOPIC, GROUP, "1", out.to_str().unwrap()],
            credentials,
        ));
        assert_eq!(summary["received"], 0, "{credentials:?}: {summary}");
        assert_ne!(summary["errors"], serde_json::json!([]), "{summary}");
        assert!(
            refusals(metrics, reason) > counted,
            "{credentials:?}: the broker refused them as {reason}"
        );
    }
}

#[test]
fn a_broker_with_acl_enabled_refuses_strangers_and_forgers_and_its_store_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // Before: the ACL off, a topic with three messages and a committed offset.
    let mut open = broker(&store, false);
    let addr = open.addr().to_owned();
    let (code, out, err) = cli(
        &["--broker", &addr, "topic", "create", TOPIC, "--queues", "2"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(
        &[
            "--broker", &addr, "send", "--topic", TOPIC, "--count", "3", "--size", "8",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    runtime().block_on(async {
        ConsumerGroupsClient::new(channel(&addr).await)
            .commit_offset(wire::CommitOffsetRequest {
                group: GROUP.into(),
                topic: TOPIC.into(),
                queue_id: 0,
                queue_offset: 0,
            })
            .await
            .unwrap();
    });
    let mut before = state(&addr);
    assert!(
        wait_until(Duration::from_secs(10), || {
            before = state(&addr);
            before.0.iter().sum::<u64>() == 3
        }),
        "{before:?}"
    );
    open.stop();

    // The attacks, against the same store with the ACL on.
    let mut guarded = broker(&store, true);
    let addr = guarded.addr().to_owned();
    let metrics = guarded.metrics_addr().expect("metrics on").to_owned();
    native_attacks(&addr);
    cli_attacks(&addr, dir.path());
    python_attacks(guarded.v5_addr().expect("v5 on"), &metrics, dir.path());
    assert!(
        refusals(&metrics, "unauthenticated") >= 6.0,
        "anonymous requests counted"
    );
    assert!(
        refusals(&metrics, "unknown_access_key") >= 5.0,
        "signatures of unknown users counted"
    );
    guarded.stop();

    // After: the ACL off again, the store as it was.
    let open = broker(&store, false);
    assert_eq!(
        state(open.addr()),
        before,
        "the refused requests changed nothing"
    );
}

/// The built-in admin of the quorum [`a_user_made_on_the_controller_sends_and_consumes_through_any_member`]
/// starts.
const ADMIN_SECRET: &str = "admin-secret-1";

/// Runs cluster-cli against `controllers` as the built-in admin; panics unless it succeeds.
fn as_admin(controllers: &str, args: &[&str]) {
    let mut all = vec!["--controller", controllers];
    all.extend_from_slice(args);
    let (code, out, err) = cli(
        &all,
        &[
            ("CLUSTER_ACCESS_KEY", "admin"),
            ("CLUSTER_SECRET_KEY", ADMIN_SECRET),
        ],
    );
    assert_eq!(code, 0, "{all:?}: {out}{err}");
}

/// Makes user `app` (secret `app-secret-key`) on the controller quorum, allowed to send to and
/// consume [`TOPIC`] as [`GROUP`], and returns its credentials file.
fn make_user(controllers: &str, dir: &Path) -> std::path::PathBuf {
    let file = dir.join("app.credentials");
    let secret = dir.join("app.secret");
    std::fs::write(&secret, "app-secret-key\n").unwrap();
    let topic = format!("topic:{TOPIC}");
    let group = format!("group:{GROUP}");
    let steps: [&[&str]; 3] = [
        &[
            "user",
            "create",
            "app",
            "--secret-key-file",
            secret.to_str().unwrap(),
        ],
        &[
            "acl",
            "create",
            "--user",
            "app",
            "--resource",
            &topic,
            "--actions",
            "send,consume",
        ],
        &[
            "acl",
            "create",
            "--user",
            "app",
            "--resource",
            &group,
            "--actions",
            "consume",
        ],
    ];
    for step in steps {
        as_admin(controllers, step);
    }
    std::fs::write(&file, "access_key=app\nsecret_key=app-secret-key\n").unwrap();
    file
}

/// A user created through the controller sends and consumes, through a slave's v5 endpoint
/// (its sends handed to the master with the user's signature) and with cluster-cli; a user
/// that does not exist is still refused. The controller's users reach the brokers by the ACL
/// feed.
#[test]
fn a_user_made_on_the_controller_sends_and_consumes_through_any_member() {
    use cluster_tests::failover::{broker_with, BROKERS};
    use cluster_tests::v5::V5_LISTEN;
    let dir = tempfile::tempdir().unwrap();
    let admin_secret = format!("admin_secret_key={ADMIN_SECRET:?}");
    let quorum = cluster_tests::ControllerQuorum::start(
        dir.path(),
        1,
        &["--set", "acl_enabled=true", "--set", &admin_secret],
    );
    let controllers = quorum.addrs();
    let mut extra = V5_LISTEN.to_vec();
    extra.extend_from_slice(&["--set", "acl_enabled=true"]);
    let brokers: Vec<BrokerProcess> = (0..BROKERS)
        .map(|id| broker_with(dir.path(), id, &controllers, &extra))
        .collect();
    let ready = wait_until(Duration::from_secs(30), || {
        cli(
            &[
                "--controller",
                &controllers,
                "topic",
                "create",
                TOPIC,
                "--queues",
                "4",
            ],
            &[
                ("CLUSTER_ACCESS_KEY", "admin"),
                ("CLUSTER_SECRET_KEY", ADMIN_SECRET),
            ],
        )
        .0 == 0
    });
    assert!(ready, "the admin creates the topic");
    // `cluster list` is the admin's, so the group's state is read as the admin.
    let mut master = None;
    let in_sync = wait_until(Duration::from_secs(30), || {
        let (code, out, _) = cli(
            &["--controller", &controllers, "--json", "cluster", "list"],
            &[
                ("CLUSTER_ACCESS_KEY", "admin"),
                ("CLUSTER_SECRET_KEY", ADMIN_SECRET),
            ],
        );
        let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let group = &list["groups"][0];
        master = group["master_id"].as_u64();
        code == 0 && master.is_some() && group["in_sync_set"].as_array().map(Vec::len) == Some(3)
    });
    assert!(in_sync, "the group gets a master with every broker in sync");
    let master = master.expect("a master");
    let slave = (0..brokers.len() as u64)
        .find(|id| *id != master)
        .expect("a slave");
    let endpoint = brokers[slave as usize].v5_addr().expect("v5 on").to_owned();
    let credentials = make_user(&controllers, dir.path());
    // The feed reaches every broker within moments of the change.
    let out = dir.path().join("receipts.jsonl");
    let mut summary = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(20), || {
            summary = finish(start_script_as(
                "v5_produce.py",
                &[&endpoint, TOPIC, "20", out.to_str().unwrap()],
                Some(("app", "app-secret-key")),
            ));
            summary["ok"] == 20
        }),
        "the user sends through a slave: {summary}"
    );
    let consumed = dir.path().join("consumed.jsonl");
    let summary = finish(start_script_as(
        "v5_consume.py",
        &[&endpoint, TOPIC, GROUP, "20", consumed.to_str().unwrap()],
        Some(("app", "app-secret-key")),
    ));
    assert_eq!(summary["acked_ids"], 20, "{summary}");
    let file = credentials.to_str().unwrap();
    let (code, out, err) = cli(
        &[
            "--controller",
            &controllers,
            "--credentials",
            file,
            "send",
            "--topic",
            TOPIC,
            "--count",
            "5",
        ],
        &[],
    );
    assert_eq!(code, 0, "cluster-cli sends as the user: {out}{err}");
    let ghost_out = dir.path().join("ghost.jsonl");
    let refused = finish(start_script_as(
        "v5_produce.py",
        &[&endpoint, TOPIC, "1", ghost_out.to_str().unwrap()],
        Some(("ghost", "ghost-secret-key")),
    ));
    assert_eq!(refused["ok"], 0, "{refused}");
}
