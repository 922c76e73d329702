//! TLS on every listener, as real processes: certificates from `cluster-cli tls generate`, a
//! controller, and a `SYNC_MASTER` group (master and slave) with the v5 API and metrics on.
//!
//! Invariants:
//! - with `tls_cert`, `tls_key`, `tls_ca` set, everything works over TLS: three controllers
//!   elect a leader (Raft over mutual TLS), the slave replicates (mutual TLS between nodes), a
//!   `SYNC_MASTER` send is `SEND_OK` and is read back, `cluster-cli` with `--tls-ca` administers;
//! - no port answers plaintext: a plaintext gRPC call to the controller, broker and v5 ports
//!   fails, and a plaintext `GET /metrics` gets no HTTP answer, while the same over TLS works;
//! - a member-only call needs a client certificate from the cluster CA besides the member
//!   signature: signed but without a certificate it is refused (`no_client_certificate`), with
//!   a certificate from another CA the handshake fails; with the cluster's it is admitted;
//! - nodes trusting a bundle of two CAs (a CA rotation's middle step) work together whichever of
//!   the two signed their certificates;
//! - a node with some of its TLS settings, or a key file that is not PEM, does not start, and
//!   says which.
//!
//! Every test of this file shares one set of certificates, because the test process dials with
//! one TLS configuration (`client::tls::trust_ca` is process-wide, as it is for applications).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use client::{Message, Producer, ProducerConfig, PullConsumer, SendStatus};
use cluster_tests::{
    cli_json, cluster_cli, group_member, wait_until, BrokerProcess, ControllerQuorum,
    TEST_CLUSTER_SECRET,
};
use proto::controller::controller_client::ControllerClient;
use tonic::transport::{Channel, Endpoint};

const TOPIC: &str = "encrypted";

/// The certificates of every test here: `DIR/cluster` (the cluster's CA and node certificate)
/// and `DIR/other` (another CA and a node certificate it signed), made once.
fn certs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        for name in ["cluster", "other"] {
            let out = dir.join(name);
            let (code, stdout) = cluster_cli(&["tls", "generate", "--dir", out.to_str().unwrap()]);
            assert_eq!(code, 0, "tls generate: {stdout}");
        }
        // The generator refuses to overwrite without --force.
        let (code, _) = cluster_cli(&[
            "tls",
            "generate",
            "--dir",
            dir.join("cluster").to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "tls generate overwrote existing files");
        client::tls::trust_ca(&dir.join("cluster/ca.pem")).expect("trust the cluster CA");
        dir
    })
}

fn ca() -> String {
    certs().join("cluster/ca.pem").display().to_string()
}

/// `--set` arguments giving a node the cluster's certificate.
fn tls_args() -> Vec<String> {
    let dir = certs().join("cluster");
    [
        ("tls_cert", "node.pem"),
        ("tls_key", "node-key.pem"),
        ("tls_ca", "ca.pem"),
    ]
    .into_iter()
    .flat_map(|(key, file)| {
        [
            "--set".to_owned(),
            format!("{key}={:?}", dir.join(file).display().to_string()),
        ]
    })
    .collect()
}

fn node_args(extra: &[&str]) -> Vec<String> {
    let mut args = tls_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `cluster-cli --tls-ca CA ARGS --json`, parsed.
fn cli(args: &[&str]) -> Option<serde_json::Value> {
    let ca = ca();
    let mut all = vec!["--tls-ca", ca.as_str(), "--json"];
    all.extend_from_slice(args);
    cli_json(&all)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A plaintext (`http://`) channel, as a client that ignores TLS would make.
fn plaintext(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
        .connect_lazy()
}

/// A TLS channel through the process's TLS (the CA, no client certificate).
fn encrypted(addr: &str) -> Channel {
    proto::dial::endpoint(addr, Duration::from_secs(2))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// A TLS channel trusting the cluster CA and presenting `cert`/`key` from `certs()/dir`.
fn presenting(addr: &str, dir: &str, name: &str) -> Channel {
    let dir = certs().join(dir);
    let tls = client::tls::DialTls::trusting(&certs().join("cluster/ca.pem"))
        .unwrap()
        .with_identity(
            std::fs::read(dir.join(format!("{name}.pem"))).unwrap(),
            std::fs::read(dir.join(format!("{name}-key.pem"))).unwrap(),
        );
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls.client_config())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// The first bytes a plaintext `GET /metrics` gets back (empty: the connection was closed).
fn plaintext_get(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ =
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// `GET /metrics` over TLS, trusting the cluster CA: the status line and body.
async fn tls_get(addr: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(certs().join("cluster/ca.pem")).unwrap();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let socket: std::net::SocketAddr = addr.parse().unwrap();
    let tcp = tokio::net::TcpStream::connect(socket).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(socket.ip().into());
    let mut stream = connector.connect(name, tcp).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn in_sync_set(controllers: &str) -> Vec<u64> {
    cli(&["--controller", controllers, "cluster", "list"])
        .and_then(|list| {
            let group = list["groups"]
                .as_array()?
                .iter()
                .find(|g| g["name"] == "broker-a")?
                .clone();
            Some(
                group["in_sync_set"]
                    .as_array()?
                    .iter()
                    .filter_map(|id| id.as_u64())
                    .collect(),
            )
        })
        .unwrap_or_default()
}

use rustls::pki_types::pem::PemObject;

#[test]
fn a_sync_group_replicates_and_serves_over_tls_and_refuses_plaintext_on_every_port() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = ["--set", "metrics_listen=\"127.0.0.1:0\""];
    let quorum = ControllerQuorum::start(dir.path(), 1, &as_strs(&node_args(&metrics)));
    let controllers = quorum.addrs();
    let broker_args = node_args(&[
        "--set",
        "metrics_listen=\"127.0.0.1:0\"",
        "--set",
        "v5_listen=\"127.0.0.1:0\"",
    ]);
    let master = group_member(
        dir.path(),
        "broker-a",
        0,
        "SYNC_MASTER",
        &controllers,
        &as_strs(&broker_args),
    );
    let _slave = group_member(
        dir.path(),
        "broker-a",
        1,
        "SLAVE",
        &controllers,
        &as_strs(&broker_args),
    );

    // Administration over TLS: the topic, and the slave in the in-sync set (it replicates over
    // mutual TLS, its acknowledgements reach the controller through the master).
    let created = wait_until(Duration::from_secs(20), || {
        cli(&[
            "--controller",
            &controllers,
            "topic",
            "create",
            TOPIC,
            "--queues",
            "2",
        ])
        .is_some()
    });
    assert!(created, "topic create over TLS failed");
    let in_sync = wait_until(Duration::from_secs(20), || {
        in_sync_set(&controllers) == [0, 1]
    });
    assert!(in_sync, "in-sync set: {:?}", in_sync_set(&controllers));

    let rt = runtime();
    rt.block_on(async {
        // SEND_OK under SYNC_MASTER: the slave holds it too.
        let producer = Producer::connect_controller(&controllers, ProducerConfig::default())
            .await
            .unwrap();
        let sent = producer
            .send(Message::new(TOPIC, Bytes::from_static(b"sealed")).with_key("k-1"))
            .await
            .unwrap();
        assert_eq!(sent.status, SendStatus::SendOk);
        // Read back over TLS, polled: the consume queue is written just after the answer.
        let consumer = PullConsumer::connect(master.addr()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let read = loop {
            let read = cluster_tests::read_queues(&consumer, TOPIC, 2).await;
            if !read.is_empty() || tokio::time::Instant::now() >= deadline {
                break read;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(read.len(), 1, "{read:?}");
        assert_eq!(&read[0].body[..], b"sealed");

        check_every_port(
            quorum.member(1).metrics_addr.as_deref(),
            &controllers,
            &master,
        )
        .await;
    });
}

/// Plaintext fails and TLS works on the controller, broker, v5 and metrics ports.
async fn check_every_port(
    controller_metrics: Option<&str>,
    controllers: &str,
    master: &BrokerProcess,
) {
    use proto::client::broker_client::BrokerClient;
    use proto::v5::messaging_service_client::MessagingServiceClient;
    let v5 = master.v5_addr().expect("v5 listening");
    let list = proto::controller::ClusterListRequest {};

    let plain = ControllerClient::new(plaintext(controllers))
        .cluster_list(list)
        .await;
    assert!(plain.is_err(), "plaintext controller call answered");
    let tls = ControllerClient::new(encrypted(controllers))
        .cluster_list(list)
        .await;
    assert!(tls.is_ok(), "{tls:?}");

    let request = proto::client::ListTopicsRequest {};
    let plain = BrokerClient::new(plaintext(master.addr()))
        .list_topics(request)
        .await;
    assert!(plain.is_err(), "plaintext broker call answered");
    let tls = BrokerClient::new(encrypted(master.addr()))
        .list_topics(request)
        .await;
    assert!(tls.is_ok(), "{tls:?}");

    let query = || {
        let mut request = tonic::Request::new(proto::v5::QueryRouteRequest::default());
        request
            .metadata_mut()
            .insert("x-mq-client-id", "tls-test".parse().unwrap());
        request
    };
    let plain = MessagingServiceClient::new(plaintext(v5))
        .query_route(query())
        .await;
    assert!(plain.is_err(), "plaintext v5 call answered");
    // Over TLS the call reaches the service (its answer, whatever it says, is a gRPC answer).
    let tls = MessagingServiceClient::new(encrypted(v5))
        .query_route(query())
        .await;
    assert!(tls.is_ok(), "{tls:?}");

    for metrics in [
        controller_metrics.expect("controller metrics"),
        master.metrics_addr().expect("broker metrics"),
    ] {
        let addr = metrics.to_owned();
        let plain = tokio::task::spawn_blocking(move || plaintext_get(&addr))
            .await
            .unwrap();
        assert!(
            !plain.starts_with("HTTP/"),
            "plaintext /metrics answered: {plain:.80}"
        );
        let tls = tls_get(metrics).await;
        assert!(tls.starts_with("HTTP/1.1 200"), "{tls:.200}");
        assert!(tls.contains("# TYPE"), "{tls:.200}");
    }
}

#[test]
fn member_only_calls_need_a_certificate_from_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    // Three controllers: Raft between them is member-only, so a leader with every member
    // healthy shows that nodes present their certificates to each other.
    let quorum = ControllerQuorum::start(dir.path(), 3, &as_strs(&tls_args()));
    let ca = ca();
    let mut status = (0, String::new());
    let healthy = wait_until(Duration::from_secs(20), || {
        status = cluster_cli(&[
            "--tls-ca",
            &ca,
            "--controller",
            &quorum.addrs(),
            "controller",
            "status",
        ]);
        status.0 == 0
    });
    assert!(healthy, "the quorum over TLS: {status:?}");
    let controller = quorum.member(1).addr.clone();
    // A standalone broker with the cluster secret: its log stream is member-only.
    let secret = format!("cluster_secret={TEST_CLUSTER_SECRET:?}");
    let broker = BrokerProcess::start(
        &dir.path().join("broker"),
        &as_strs(&node_args(&["--set", &secret])),
    );
    let key = auth::ClusterKey::new(TEST_CLUSTER_SECRET).unwrap();
    let heartbeat = || proto::controller::BrokerHeartbeatRequest {
        group: "broker-a".into(),
        broker_id: 99,
        ..Default::default()
    };
    let rt = runtime();
    rt.block_on(async {
        // Signed, no client certificate: refused before the service.
        let signed = auth::SignedChannel::new(encrypted(&controller), key.clone());
        let status = ControllerClient::new(signed)
            .broker_heartbeat(heartbeat())
            .await
            .expect_err("a member-only call without a certificate was served");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("client certificate"),
            "{status:?}"
        );

        // Signed, with a certificate of another CA: the handshake fails.
        let other = auth::SignedChannel::new(presenting(&controller, "other", "node"), key.clone());
        let refused = ControllerClient::new(other)
            .broker_heartbeat(heartbeat())
            .await;
        match &refused {
            Ok(_) => panic!("a certificate of another CA was admitted"),
            Err(status) => assert_ne!(status.code(), tonic::Code::Ok),
        }

        // Signed, with the cluster's certificate: admitted (the controller answers on the
        // merits: no such broker).
        let member =
            auth::SignedChannel::new(presenting(&controller, "cluster", "node"), key.clone());
        let answer = ControllerClient::new(member)
            .broker_heartbeat(heartbeat())
            .await;
        if let Err(status) = &answer {
            assert_ne!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
            assert_ne!(status.code(), tonic::Code::Unavailable, "{status:?}");
        }

        // The broker's log stream: signed without a certificate is refused too.
        use proto::replication::log_shipping_client::LogShippingClient;
        let signed = auth::SignedChannel::new(encrypted(broker.addr()), key.clone());
        let status = LogShippingClient::new(signed)
            .replicate(tokio_stream::iter(
                Vec::<proto::replication::ReplicaMessage>::new(),
            ))
            .await
            .expect_err("a log stream without a certificate was opened");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("client certificate"),
            "{status:?}"
        );
    });
}

#[test]
fn a_node_with_half_its_tls_settings_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let cert = certs().join("cluster/node.pem");
    let output = std::process::Command::new(cluster_tests::workspace_binary("broker", "broker"))
        .arg("--store-path")
        .arg(dir.path().join("store"))
        .args(["--listen", "127.0.0.1:0", "--set"])
        .arg(format!("tls_cert={:?}", cert.display().to_string()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tls_key"), "{stderr}");

    // All three, but the key file is not PEM: the error names it.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let output = std::process::Command::new(cluster_tests::workspace_binary("broker", "broker"))
        .arg("--store-path")
        .arg(dir.path().join("store"))
        .args(["--listen", "127.0.0.1:0"])
        .args([
            "--set",
            &format!("tls_cert={:?}", cert.display().to_string()),
        ])
        .args([
            "--set",
            &format!("tls_key={:?}", garbage.display().to_string()),
        ])
        .args(["--set", &format!("tls_ca={:?}", ca())])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("garbage.pem"), "{stderr}");
}

/// A CA rotation's middle step (docs/OPERATIONS.md, "TLS"): every node trusts a bundle of the old
/// and the new CA, one node already has a certificate of the new one. They still work together:
/// the broker (new CA) registers and heartbeats with the controller (old CA), and a client that
/// trusts the bundle creates a topic and sends.
#[test]
fn nodes_trusting_both_cas_work_together_during_a_ca_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (certs().join("cluster"), certs().join("other"));
    let bundle = dir.path().join("ca-bundle.pem");
    let mut pem = std::fs::read(old.join("ca.pem")).unwrap();
    pem.extend(std::fs::read(new.join("ca.pem")).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let node = |certs: &Path| -> Vec<String> {
        [
            ("tls_cert", certs.join("node.pem")),
            ("tls_key", certs.join("node-key.pem")),
            ("tls_ca", bundle.clone()),
        ]
        .into_iter()
        .flat_map(|(key, path)| {
            [
                "--set".to_owned(),
                format!("{key}={:?}", path.display().to_string()),
            ]
        })
        .collect()
    };
    let quorum = ControllerQuorum::start(dir.path(), 1, &as_strs(&node(&old)));
    let controllers = quorum.addrs();
    let _master = group_member(
        dir.path(),
        "broker-a",
        0,
        "ASYNC_MASTER",
        &controllers,
        &as_strs(&node(&new)),
    );
    let bundle = bundle.display().to_string();
    let with_bundle = |args: &[&str]| {
        let mut all = vec!["--tls-ca", bundle.as_str(), "--controller", &controllers];
        all.extend_from_slice(args);
        cluster_cli(&all)
    };
    let mut last = (0, String::new());
    let created = wait_until(Duration::from_secs(20), || {
        last = with_bundle(&["topic", "create", TOPIC, "--queues", "2"]);
        last.0 == 0
    });
    assert!(created, "topic create: {last:?}");
    let (code, out) = with_bundle(&["send", "--topic", TOPIC, "--count", "3"]);
    assert_eq!(code, 0, "send: {out}");
    assert!(out.contains("SEND_OK"), "{out}");
}
