//! End to end: MP_JOIN validation across the whole handshake, with the real Linux MPTCP stack on
//! both sides and the validator (`mptcp-loader run`) on BOTH hosts, each on its own interfaces.
//!
//! - Genuine joins in both directions must complete and carry data: one opened by the client
//!   (198.18.2.1 -> 198.18.1.2:10000) and one opened by the server's path manager towards the
//!   address and port the client announced (198.18.2.2 -> 198.18.2.1:10100); see
//!   `mptcp_tests::join_scenario` for the endpoint configuration.
//! - Forged SYN + MP_JOIN with random tokens, and forged third ACKs with a wrong HMAC (each after
//!   a SYN with the right token, so the kernel holds a pending join request), must be dropped
//!   before the server's stack: `MPTcpExtMPJoinNoTokenFound` / `MPTcpExtMPJoinAckHMacFailure`
//!   stay put while `join_syn_unknown_token_dropped` / `join_ack_bad_hmac_dropped` rise by
//!   exactly the number sent. The same run without a validator (and in monitor mode) shows the
//!   kernel counters moving by exactly that number, so the forged segments are real.
//!
//! Every run prints its figures (visible with `--nocapture`). Needs the loader binary for the
//! validator runs: `$MPTCP_LOADER_BIN`, or `mptcp-loader` in the target directory. Without it
//! those tests are skipped, or fail when `MPTCP_TESTS_REQUIRE_BPF=1`. Root only; run with
//! `cargo test -p mptcp-tests --release -- --test-threads=1`.

use mptcp_common::counters::Counter;
use mptcp_tests::{
    join_scenario::{
        self, HostValidators, JoinOutcome, JoinScenario, StatsSnapshots, ACK_HMAC_FAILURE,
        CLIENT_IFACES, NO_TOKEN_FOUND, SYNACK_HMAC_FAILURE,
    },
    lab::{Lab, SERVER_IFACES},
    tools::{gate, Tools},
    validator::{loader_or_skip, start_or_skip, Mode, StopReport},
};

fn tools() -> Tools {
    Tools::new(env!("CARGO_BIN_EXE_mptcp-peer"))
}

struct Run {
    outcome: JoinOutcome,
    /// How the two loaders ended (server, client), when they ran.
    stops: Option<(StopReport, StopReport)>,
    why: String,
}

/// Builds the lab, starts a validator in `mode` on both hosts (or none), runs the scenario,
/// stops the validators and prints the figures.
fn run(test: &str, mode: Option<Mode>) -> Option<Run> {
    let bin = match mode {
        Some(_) => Some(loader_or_skip(test, join_scenario::missing(&tools()))?),
        None if gate(test, &join_scenario::missing(&tools())) => None,
        None => return None,
    };
    let lab = Lab::new().expect("building the lab");
    join_scenario::prepare_lab(&lab).expect("configuring the lab for joins");
    let validators = match (&bin, mode) {
        (Some(bin), Some(mode)) => Some((
            start_or_skip(test, &lab.server, bin, &SERVER_IFACES, mode, &[])?,
            start_or_skip(test, &lab.client, bin, &CLIENT_IFACES, mode, &[])?,
        )),
        _ => None,
    };
    let sc = JoinScenario {
        forged_should_pass: mode != Some(Mode::Enforce),
        ..JoinScenario::default()
    };
    let hosts = validators
        .as_ref()
        .map(|(server, client)| HostValidators { server, client });
    let outcome = match join_scenario::run(&lab, &tools(), &sc, hosts) {
        Ok(o) => o,
        Err(err) => {
            let logs = validators.as_ref().map_or_else(String::new, |(s, c)| {
                format!("\nserver loader:\n{}\nclient loader:\n{}", s.log(), c.log())
            });
            panic!("join scenario failed: {err}{logs}");
        }
    };
    let stops = validators.map(|(server, client)| {
        (
            server
                .stop(&lab.server)
                .expect("stopping the server's loader"),
            client
                .stop(&lab.client)
                .expect("stopping the client's loader"),
        )
    });
    let label = match mode {
        None => "without validator".to_owned(),
        Some(m) => format!("validator in {} mode on both hosts", m.as_str()),
    };
    let figures = outcome.figures(&label);
    let details = outcome.details();
    eprintln!("{figures}\n{details}");
    let mut why = format!("{figures}\n{details}");
    if let Some((server, client)) = &stops {
        why.push_str(&format!(
            "server loader output:\n{}\nclient loader output:\n{}",
            server.log, client.log
        ));
    }
    Some(Run {
        outcome,
        stops,
        why,
    })
}

/// What holds in every mode: both genuine joins complete and carry data, all data arrives, the
/// forger's handshakes got their SYN/ACKs, no join HMAC failure of genuine traffic, the
/// positive control is accepted, and the loaders exit cleanly.
fn assert_genuine_joins_unharmed(r: &Run) {
    let (o, why) = (&r.outcome, &r.why);
    let f = o.figures("");
    assert!(
        o.genuine_settled,
        "genuine joins not counted in time\n{why}"
    );
    assert!(
        f.client_joins_acked >= 1 && f.client_joins_synack >= 1,
        "{why}"
    );
    assert!(
        f.server_joins_acked >= 1 && f.server_joins_synack >= 1,
        "{why}"
    );
    assert!(
        o.client
            .after_genuine
            .delta(&o.client.start, join_scenario::PORT_SYN_RX)
            >= 1,
        "the server's join did not go to the announced port\n{why}"
    );
    assert!(
        f.path2.client_initiated.is_some_and(|b| b > 0),
        "no data on the client-initiated subflow\n{why}"
    );
    assert!(
        f.path2.server_initiated.is_some_and(|b| b > 0),
        "no data on the server-initiated subflow\n{why}"
    );
    assert_eq!(
        o.bytes_received, o.bytes_sent,
        "not all data arrived\n{why}"
    );
    for (host, snap) in [("server", &o.server), ("client", &o.client)] {
        assert_eq!(
            snap.end.delta(&snap.start, SYNACK_HMAC_FAILURE),
            0,
            "{host}: a SYN/ACK HMAC failed\n{why}"
        );
    }
    let sc = &o.scenario;
    assert_eq!(o.unknown.syns, sc.unknown_token_syns, "{why}");
    assert_eq!(
        (o.bad.syns, o.bad.synacks, o.bad.synack_hmac_ok, o.bad.acks),
        (sc.bad_acks, sc.bad_acks, sc.bad_acks, sc.bad_acks),
        "the forger's handshakes did not get their (valid) SYN/ACKs\n{why}"
    );
    let control = o.control.as_ref().expect("the control ran");
    assert_eq!((control.acks, control.rsts), (1, 1), "{why}");
    assert_eq!(
        f.control_accepted, 1,
        "the control (right HMAC) was not accepted\n{why}"
    );
    if let Some((server, client)) = &r.stops {
        for (host, stop) in [("server", server), ("client", client)] {
            assert!(
                stop.graceful && stop.status.success() && stop.still_attached.is_empty(),
                "{host} loader did not stop cleanly: {} {:?}\n{why}",
                stop.status,
                stop.still_attached
            );
        }
    }
}

/// What both validators must have seen of the genuine joins (in either mode).
fn assert_validators_judged_genuine_joins(
    server: &StatsSnapshots,
    client: &StatsSnapshots,
    why: &str,
) {
    let (s, c) = (&server.end, &client.end);
    assert!(
        s.get(Counter::KeysLearned) >= 1,
        "server learned no keys\n{why}"
    );
    assert!(
        c.get(Counter::EgressKeysLearned) >= 1,
        "client learned no keys from its own MP_CAPABLE\n{why}"
    );
    // Client-initiated: SYN and third ACK checked by the server, SYN/ACK by the client.
    // Server-initiated: the reverse. The server's count includes the forger's SYNs and the
    // control's third ACK.
    assert!(s.get(Counter::JoinSynKnownToken) >= 1, "{why}");
    assert!(s.get(Counter::JoinAckValid) >= 2, "{why}");
    assert!(s.get(Counter::JoinSynAckValid) >= 1, "{why}");
    assert!(c.get(Counter::JoinSynKnownToken) >= 1, "{why}");
    assert!(c.get(Counter::JoinSynAckValid) >= 1, "{why}");
    assert!(c.get(Counter::JoinAckValid) >= 1, "{why}");
    for (host, st) in [("server", s), ("client", c)] {
        // Every join was judged; none passed for lack of state (fail-open).
        assert_eq!(st.get(Counter::JoinStateMissing), 0, "{host}\n{why}");
        for counter in [
            Counter::JoinSynAckBadHmacDropped,
            Counter::JoinSynAckBadHmacWouldDrop,
            Counter::AddAddrBadHmacDropped,
            Counter::AddAddrBadHmacWouldDrop,
        ] {
            assert_eq!(st.get(counter), 0, "{host}: {}\n{why}", counter.name());
        }
    }
    assert_eq!(
        client.total_dropped(),
        0,
        "the client's validator dropped something\n{why}"
    );
}

/// With a validator on both hosts: genuine joins unharmed and judged right by both; returns the
/// (server, client) validator statistics.
fn genuine_joins_judged(r: &Run) -> (&StatsSnapshots, &StatsSnapshots) {
    assert_genuine_joins_unharmed(r);
    let o = &r.outcome;
    let (server, client) = (
        o.server_stats.as_ref().expect("server stats"),
        o.client_stats.as_ref().expect("client stats"),
    );
    assert_validators_judged_genuine_joins(server, client, &r.why);
    (server, client)
}

#[test]
fn joins_with_validator_enforcing_on_both_hosts() {
    let test = "joins_with_validator_enforcing_on_both_hosts";
    let Some(r) = run(test, Some(Mode::Enforce)) else {
        return;
    };
    let (server, _) = genuine_joins_judged(&r);
    let (o, why) = (&r.outcome, &r.why);
    let f = o.figures("");
    let (n, m) = (u64::from(f.unknown_sent), u64::from(f.bad_acks_sent));
    // Dropped before the stack: the kernel never counted them, during the forged window or
    // later (the server retransmits its SYN/ACKs to the forger, who does not answer).
    assert_eq!(
        f.unknown_reached, 0,
        "blind SYNs reached the server's stack\n{why}"
    );
    assert_eq!(
        f.bad_acks_reached, 0,
        "bad third ACKs reached the server's stack\n{why}"
    );
    for name in [NO_TOKEN_FOUND, ACK_HMAC_FAILURE] {
        assert_eq!(
            o.server.end.delta(&o.server.start, name),
            0,
            "{name}\n{why}"
        );
    }
    // ... and the validator counted exactly what was sent, and dropped nothing else.
    assert_eq!(f.unknown_dropped, Some(n), "{why}");
    assert_eq!(f.bad_acks_dropped, Some(m), "{why}");
    assert_eq!(
        server.end.get(Counter::JoinSynUnknownTokenDropped),
        n,
        "{why}"
    );
    assert_eq!(server.end.get(Counter::JoinAckBadHmacDropped), m, "{why}");
    assert_eq!(server.total_dropped(), n + m, "{why}");
    assert_eq!(f.unknown_would_drop, Some(0), "{why}");
    assert_eq!(f.bad_acks_would_drop, Some(0), "{why}");
}

#[test]
fn joins_with_validator_monitoring_on_both_hosts() {
    let test = "joins_with_validator_monitoring_on_both_hosts";
    let Some(r) = run(test, Some(Mode::Monitor)) else {
        return;
    };
    let (server, _) = genuine_joins_judged(&r);
    let (o, why) = (&r.outcome, &r.why);
    let f = o.figures("");
    let (n, m) = (u64::from(f.unknown_sent), u64::from(f.bad_acks_sent));
    // Counted, passed, and rejected by the kernel itself.
    assert_eq!(f.unknown_would_drop, Some(n), "{why}");
    assert_eq!(f.bad_acks_would_drop, Some(m), "{why}");
    assert_eq!(server.total_dropped(), 0, "{why}");
    assert_eq!(f.unknown_reached, i128::from(n), "{why}");
    assert_eq!(f.bad_acks_reached, i128::from(m), "{why}");
}

#[test]
fn joins_without_validator_reach_the_kernel() {
    let test = "joins_without_validator_reach_the_kernel";
    let Some(r) = run(test, None) else {
        return;
    };
    assert_genuine_joins_unharmed(&r);
    let (o, why) = (&r.outcome, &r.why);
    let f = o.figures("");
    // Without a validator every forged segment reaches the server's stack, which rejects it
    // itself: one NoTokenFound per blind SYN, one AckHMacFailure per bad third ACK.
    assert_eq!(f.unknown_reached, i128::from(f.unknown_sent), "{why}");
    assert_eq!(f.bad_acks_reached, i128::from(f.bad_acks_sent), "{why}");
    assert_eq!(f.unknown_dropped, None, "{why}");
}
