//! Membership changes of the controller quorum with real `controller` processes: adding a
//! controller started with empty peers (learner, then voter) and removing it, and every absurd
//! request refused within seconds.
//!
//! Invariants: an `AddController` answers within a bounded time whatever it names (id 0 or
//! 2^64-1, an address that is not host:port, an id or address of another member, an address
//! where nothing answers, a controller that says it has another id); a `RemoveController` of a
//! non-member is refused with `NOT_FOUND`; and a refused request changes no membership.

use std::time::{Duration, Instant};

use client::controller::ControllerConnection;
use client::controller::ControllerError;
use client::ErrorCode;
use cluster_tests::{
    cluster_cli, controller_status, free_port, wait_for_controller_leader, wait_until,
    ControllerQuorum,
};

/// An `AddController` refusal must come within the probe's timeout (3 s) plus room for a
/// loaded machine; without the checks the request waited out a 60 s catch-up.
const REFUSAL_WITHIN: Duration = Duration::from_secs(8);

/// The members as `controller status` shows them: (id, addr, voter), sorted.
fn members(controllers: &str) -> Vec<(u64, String, bool)> {
    let status = controller_status(controllers).expect("controller status");
    let mut members: Vec<_> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["addr"].as_str().unwrap().to_owned(),
                m["voter"].as_bool().unwrap(),
            )
        })
        .collect();
    members.sort();
    members
}

fn code_of(result: Result<(), ControllerError>) -> ErrorCode {
    match result {
        Err(ControllerError::Refused { code, .. }) => code,
        other => panic!("expected a refusal with a code, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_additions_and_removals_are_refused_within_seconds_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut quorum = ControllerQuorum::start(dir.path(), 3, &[]);
    let addrs = quorum.addrs();
    wait_for_controller_leader(&addrs);
    let before = members(&addrs);
    assert_eq!(before.len(), 3, "{before:?}");
    let member_2 = quorum.member(2).addr.clone();
    // A controller of no quorum yet, with id 4, for the wrong-id case and the real addition.
    let joining = quorum.start_joining(4);
    // A port nothing listens on (another process could take it in between: the window is
    // milliseconds).
    let closed = format!("127.0.0.1:{}", free_port());

    let conn = ControllerConnection::new(&addrs).unwrap();
    let cases: Vec<(u64, String, ErrorCode)> = vec![
        (0, "127.0.0.1:9876".into(), ErrorCode::BadRequest),
        (u64::MAX, "absurd".into(), ErrorCode::BadRequest),
        (7, String::new(), ErrorCode::BadRequest),
        (7, "127.0.0.1:0".into(), ErrorCode::BadRequest),
        (7, "127.0.0.1:99999".into(), ErrorCode::BadRequest),
        (
            7,
            format!("{}:1", "h".repeat(10_000)),
            ErrorCode::BadRequest,
        ),
        (1, "127.0.0.1:9".into(), ErrorCode::Conflict),
        (9, member_2.clone(), ErrorCode::Conflict),
        (u64::MAX, closed.clone(), ErrorCode::NotFound),
        (5, joining.clone(), ErrorCode::Conflict),
    ];
    for (id, addr, expected) in &cases {
        let started = Instant::now();
        let code = code_of(conn.add_controller(*id, addr).await);
        let took = started.elapsed();
        let shown: String = addr.chars().take(40).collect();
        assert_eq!(code, *expected, "add {id} {shown}");
        assert!(took < REFUSAL_WITHIN, "add {id} {shown} took {took:?}");
        eprintln!("add {id} {shown}: {code:?} in {} ms", took.as_millis());
    }
    for id in [0, 9, u64::MAX] {
        let started = Instant::now();
        assert_eq!(
            code_of(conn.remove_controller(id).await),
            ErrorCode::NotFound,
            "remove {id}"
        );
        assert!(started.elapsed() < REFUSAL_WITHIN);
    }
    let (code, _) = cluster_cli(&["--controller", &addrs, "controller", "remove", "9"]);
    assert_eq!(code, 2, "cluster-cli exits 2 when the controller refuses");
    assert_eq!(
        members(&addrs),
        before,
        "a refused request changed the membership"
    );

    // The real thing: controller 4 joins as a voter, and leaves again.
    conn.add_controller(4, &joining)
        .await
        .expect("add controller 4");
    let mut with_4 = before.clone();
    with_4.push((4, joining.clone(), true));
    assert_eq!(members(&addrs), with_4);
    // A repeat of the same request is answered as done.
    conn.add_controller(4, &joining)
        .await
        .expect("add controller 4 again");
    conn.remove_controller(4)
        .await
        .expect("remove controller 4");
    assert!(
        wait_until(Duration::from_secs(10), || members(&addrs) == before),
        "after removing 4: {:?}",
        members(&addrs)
    );
}
