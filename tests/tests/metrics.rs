//! The Prometheus endpoints, scraped over HTTP from real processes: three controllers and broker
//! group `broker-a` of three `CONTROLLED` brokers (SYNC_MASTER + SYNC_FLUSH), every one started
//! with `metrics_listen = "127.0.0.1:0"`, on 127.0.0.1 with ephemeral ports.
//!
//! Invariant: the numbers a scrape shows are the cluster's real ones: the master counts exactly
//! the sends it answered `SEND_OK` (and its latency histogram as many), it shows itself master
//! at an epoch of at least 1 with every slave's lag, the consumer lag per queue is what the
//! consumer group left unconsumed, exactly one controller says it leads, the elections are
//! counted by kind, and after a planned switchover the roles swap and the old master's per-slave
//! series disappear.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use client::{Producer, ProducerConfig, PullConsumer};
use cluster_tests::failover::{
    broker_with, create_topic, runtime, send_one, switch_over, wait_for_full_set,
    wait_for_successor, BROKERS, TOPIC,
};
use cluster_tests::{wait_until, BrokerProcess, ControllerQuorum};
use proto::client::consumer_groups_client::ConsumerGroupsClient;
use proto::client::CommitOffsetRequest;

/// Messages the test sends, one at a time.
const SENT: u64 = 20;
/// Messages the consumer group consumes (and commits) per queue, at most.
const CONSUMED_PER_QUEUE: u64 = 2;
const GROUP: &str = "billing";
const METRICS_ON: [&str; 2] = ["--set", "metrics_listen=\"127.0.0.1:0\""];

/// One series of a scrape: metric name, labels, value.
#[derive(Debug)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// One scrape of a `/metrics` endpoint, parsed from Prometheus' text format.
#[derive(Debug, Default)]
struct Scrape(Vec<Series>);

impl Scrape {
    /// Values of the series named `name` that carry every label of `labels`.
    fn values(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect()
    }

    /// The one value of `name` with `labels`; None when there is no such series.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let values = self.values(name, labels);
        assert!(values.len() <= 1, "{name} {labels:?} is not one series");
        values.first().copied()
    }

    fn expect(&self, name: &str, labels: &[(&str, &str)], want: f64) -> Result<(), String> {
        match self.value(name, labels) {
            Some(got) if got == want => Ok(()),
            got => Err(format!("{name}{labels:?} is {got:?}, expected {want}")),
        }
    }
}

/// `GET path` over a plain TCP connection (the endpoint closes it after one answer), with an
/// `Authorization` header when given; the answer's head and body.
fn get(addr: &str, path: &str, authorization: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_owned(), body.to_owned())
}

/// `GET /metrics`, which must answer 200 in Prometheus' text format.
fn scrape(addr: &str) -> Scrape {
    scrape_with(addr, None)
}

fn scrape_with(addr: &str, authorization: Option<&str>) -> Scrape {
    let (head, body) = get(addr, "/metrics", authorization);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    Scrape(
        body.lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(parse_series)
            .collect(),
    )
}

/// `name{key="value",...} value` (labels optional).
fn parse_series(line: &str) -> Series {
    let (series, value) = line.rsplit_once(' ').expect("series and value");
    let value = value
        .parse()
        .unwrap_or_else(|_| panic!("value in {line:?}"));
    let Some((name, rest)) = series.split_once('{') else {
        return Series {
            name: series.to_owned(),
            labels: BTreeMap::new(),
            value,
        };
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.strip_suffix('}').expect("closing brace").chars();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "label value in {line:?}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().expect("escaped character")),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
    }
    Series {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// Scrapes `addr` until `check` passes (up to `within`); panics with its last complaint.
fn scrape_until(addr: &str, within: Duration, check: impl Fn(&Scrape) -> Result<(), String>) {
    let mut complaint = String::new();
    let passed = wait_until(within, || match check(&scrape(addr)) {
        Ok(()) => true,
        Err(err) => {
            complaint = err;
            false
        }
    });
    assert!(passed, "{addr}: {complaint}");
}

fn metrics_addr(broker: &BrokerProcess) -> &str {
    broker.metrics_addr().expect("started with metrics_listen")
}

/// The attacker: anyone who reaches a metrics port and has no token (or a wrong one) reads
/// nothing, on any path: 401 with an empty body. With the token, the scrape is whole. A node
/// whose token file is missing or too weak does not start, and says which file.
#[test]
fn with_a_token_file_the_metrics_answer_only_its_bearer() {
    let dir = tempfile::tempdir().unwrap();
    let token = "scrape-token-0123456789";
    let token_file = dir.path().join("metrics.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let token_setting = format!("metrics_token_file={:?}", token_file.display().to_string());
    let broker = BrokerProcess::start(
        &dir.path().join("broker"),
        &[METRICS_ON[0], METRICS_ON[1], "--set", &token_setting],
    );
    let quorum = ControllerQuorum::start(
        dir.path(),
        1,
        &[METRICS_ON[0], METRICS_ON[1], "--set", &token_setting],
    );
    let controller_metrics = quorum
        .member(1)
        .metrics_addr
        .clone()
        .expect("metrics_listen");
    let bearer = format!("Bearer {token}");
    for (node, addr) in [
        ("broker", metrics_addr(&broker)),
        ("controller", controller_metrics.as_str()),
    ] {
        for (path, authorization) in [
            ("/metrics", None),
            ("/metrics", Some("Bearer scrape-token-0123456780")),
            ("/metrics", Some("Bearer scrape-token-012345678")),
            ("/metrics", Some(&format!("Basic {token}")[..])),
            ("/elsewhere", None),
        ] {
            let (head, body) = get(addr, path, authorization);
            assert!(
                head.starts_with("HTTP/1.1 401"),
                "{node} {path} {authorization:?}: {head}"
            );
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
                "{head}"
            );
            assert!(body.is_empty(), "{node}: a refused scrape showed {body:?}");
        }
        let scrape = scrape_with(addr, Some(&bearer));
        assert!(
            !scrape.0.is_empty(),
            "{node}: an authorized scrape is empty"
        );
    }
    assert!(
        scrape_with(metrics_addr(&broker), Some(&bearer))
            .0
            .iter()
            .any(|s| s.name.starts_with("broker_")),
        "the broker's own metrics"
    );

    let weak = dir.path().join("weak.token");
    std::fs::write(&weak, "short").unwrap();
    for (file, expect) in [
        (weak, "weak.token"),
        (dir.path().join("missing.token"), "missing.token"),
    ] {
        let output =
            std::process::Command::new(cluster_tests::workspace_binary("broker", "broker"))
                .arg("--store-path")
                .arg(dir.path().join("refused"))
                .args([
                    "--listen",
                    "127.0.0.1:0",
                    METRICS_ON[0],
                    METRICS_ON[1],
                    "--set",
                ])
                .arg(format!(
                    "metrics_token_file={:?}",
                    file.display().to_string()
                ))
                .output()
                .unwrap();
        assert!(!output.status.success(), "a broker started with {expect}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expect), "{stderr}");
    }
}

#[test]
fn brokers_and_controllers_export_what_the_cluster_did() {
    let dir = tempfile::tempdir().unwrap();
    let quorum = ControllerQuorum::start(dir.path(), 3, &METRICS_ON);
    let controllers = quorum.addrs();
    let brokers: Vec<BrokerProcess> = (0..BROKERS)
        .map(|id| broker_with(dir.path(), id, &controllers, &METRICS_ON))
        .collect();
    create_topic(&controllers);
    let state = wait_for_full_set(&controllers, Duration::from_secs(30));
    let master = state.master.expect("a master");

    // Sends, one at a time; each queue's end is one past the last queue offset it answered.
    let rt = runtime();
    let producer = rt
        .block_on(Producer::connect_controller(
            &controllers,
            ProducerConfig::default(),
        ))
        .expect("producer");
    let mut queue_ends: BTreeMap<u32, u64> = BTreeMap::new();
    for n in 0..SENT {
        let sent = rt.block_on(send_one(&producer, format!("order-{n}")));
        let (queue_id, queue_offset) = sent.outcome.expect("SEND_OK");
        let end = queue_ends.entry(queue_id).or_default();
        *end = (*end).max(queue_offset + 1);
    }

    // The group consumes the first few messages of each queue and commits past them.
    let master_addr = brokers[master as usize].addr();
    let consumed: BTreeMap<u32, u64> = rt.block_on(async {
        let consumer = PullConsumer::connect(master_addr).await.expect("consumer");
        let mut groups = ConsumerGroupsClient::connect(format!("http://{master_addr}"))
            .await
            .expect("consumer groups client");
        let mut consumed = BTreeMap::new();
        for (&queue_id, &end) in &queue_ends {
            let count = CONSUMED_PER_QUEUE.min(end);
            let pulled = consumer
                .pull(TOPIC, queue_id, 0, count as u32, "*", Duration::ZERO)
                .await
                .expect("pull");
            assert_eq!(pulled.messages.len() as u64, count);
            groups
                .commit_offset(CommitOffsetRequest {
                    group: GROUP.into(),
                    topic: TOPIC.into(),
                    queue_id,
                    queue_offset: pulled.next_queue_offset,
                })
                .await
                .expect("commit");
            consumed.insert(queue_id, pulled.next_queue_offset);
        }
        consumed
    });
    // What each queue has left for the group, and in all what it left unconsumed.
    let lag: BTreeMap<u32, u64> = queue_ends
        .iter()
        .map(|(queue_id, end)| (*queue_id, end - consumed[queue_id]))
        .collect();
    assert_eq!(
        lag.values().sum::<u64>(),
        SENT - consumed.values().sum::<u64>()
    );
    eprintln!("sent {SENT} over queues {queue_ends:?}; consumed {consumed:?}; left {lag:?}");
    assert!(state.epoch >= 1);

    let master_id = master.to_string();
    scrape_until(
        metrics_addr(&brokers[master as usize]),
        Duration::from_secs(15),
        |m| {
            let ok = [("status", "SEND_OK")];
            m.expect("broker_send_requests_total", &ok, SENT as f64)?;
            m.expect("broker_send_latency_seconds_count", &ok, SENT as f64)?;
            m.expect("broker_messages_appended_total", &[], SENT as f64)?;
            m.expect(
                "broker_is_master",
                &[("broker_group", "broker-a"), ("broker_id", &master_id)],
                1.0,
            )?;
            m.expect("broker_master_epoch", &[], state.epoch as f64)?;
            m.expect("broker_in_sync_set_size", &[], BROKERS as f64)?;
            if m.value("broker_flush_latency_seconds_count", &[])
                .unwrap_or(0.0)
                < 1.0
            {
                return Err("no fsync in broker_flush_latency_seconds".into());
            }
            for slave_id in (0..BROKERS).filter(|id| *id != master) {
                let slave_id = slave_id.to_string();
                let slave = [("slave_id", slave_id.as_str())];
                m.expect("broker_slave_lag_bytes", &slave, 0.0)?;
                m.expect("broker_slave_connected", &slave, 1.0)?;
            }
            for (queue_id, left) in &lag {
                let queue_id = queue_id.to_string();
                let labels = [
                    ("consumer_group", GROUP),
                    ("topic", TOPIC),
                    ("queue_id", queue_id.as_str()),
                ];
                m.expect("broker_consumer_lag_messages", &labels, *left as f64)?;
            }
            Ok(())
        },
    );
    for slave in brokers.iter().filter(|b| b.addr() != master_addr) {
        scrape_until(metrics_addr(slave), Duration::from_secs(15), |m| {
            m.expect("broker_is_master", &[], 0.0)?;
            m.expect("broker_master_epoch", &[], state.epoch as f64)?;
            if !m.values("broker_slave_lag_bytes", &[]).is_empty() {
                return Err("a slave reports slave lag".into());
            }
            if m.value("broker_send_requests_total", &[("status", "SEND_OK")])
                .is_some()
            {
                return Err("a slave answered SEND_OK".into());
            }
            Ok(())
        });
    }

    // Exactly one controller leads; it shows the group; the first election is counted.
    let scrapes = |quorum: &ControllerQuorum| -> Vec<Scrape> {
        quorum
            .members
            .iter()
            .map(|c| scrape(c.metrics_addr.as_deref().expect("metrics_listen set")))
            .collect()
    };
    let elections = |scrapes: &[Scrape], kind: &str| -> f64 {
        scrapes
            .iter()
            .flat_map(|s| {
                s.values(
                    "controller_elections_total",
                    &[("broker_group", "broker-a"), ("kind", kind)],
                )
            })
            .sum()
    };
    let mut complaint = String::new();
    let controllers_ok = wait_until(Duration::from_secs(15), || {
        let scrapes = scrapes(&quorum);
        let check = || -> Result<(), String> {
            let leaders: Vec<&Scrape> = scrapes
                .iter()
                .filter(|s| s.value("controller_is_leader", &[]) == Some(1.0))
                .collect();
            let followers = scrapes
                .iter()
                .filter(|s| s.value("controller_is_leader", &[]) == Some(0.0))
                .count();
            if leaders.len() != 1 || followers != 2 {
                return Err(format!("{} leaders, {followers} followers", leaders.len()));
            }
            let leader = leaders[0];
            if leader.value("controller_raft_term", &[]).unwrap_or(0.0) < 1.0 {
                return Err("the leader's term is below 1".into());
            }
            let group = [("broker_group", "broker-a")];
            leader.expect("controller_brokers_alive", &group, BROKERS as f64)?;
            leader.expect("controller_in_sync_set_size", &group, BROKERS as f64)?;
            leader.expect("controller_master_epoch", &group, state.epoch as f64)?;
            leader.expect("controller_groups_without_master", &[], 0.0)?;
            if elections(&scrapes, "first") != 1.0 {
                return Err(format!(
                    "{} first elections counted",
                    elections(&scrapes, "first")
                ));
            }
            Ok(())
        };
        check().map_err(|err| complaint = err).is_ok()
    });
    assert!(controllers_ok, "controllers: {complaint}");

    // A planned switchover: counted as one, and the roles swap on the brokers' endpoints; the
    // old master's per-slave series go once no sample sets them (GAUGE_IDLE_TIMEOUT, 5 s).
    switch_over(&controllers, None, state.epoch);
    let after = wait_for_successor(&controllers, master, state.epoch);
    let successor = after.master.expect("a successor");
    assert!(wait_until(Duration::from_secs(15), || elections(
        &scrapes(&quorum),
        "switchover"
    ) == 1.0));
    scrape_until(
        metrics_addr(&brokers[successor as usize]),
        Duration::from_secs(15),
        |m| {
            m.expect("broker_is_master", &[], 1.0)?;
            m.expect("broker_master_epoch", &[], after.epoch as f64)
        },
    );
    scrape_until(
        metrics_addr(&brokers[master as usize]),
        Duration::from_secs(15),
        |m| {
            m.expect("broker_is_master", &[], 0.0)?;
            match m.values("broker_slave_lag_bytes", &[]).len() {
                0 => Ok(()),
                n => Err(format!("the old master still shows {n} slave lag series")),
            }
        },
    );
}
