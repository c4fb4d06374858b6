//! Two gateways, one connection (issue 15): the MP_CAPABLE handshake passes gateway 1, the
//! joins pass gateway 2, the firewall enforces on both (see `mptcp_tests::gateways` for the
//! lab). With the shared store (a redis-server the test starts) gateway 2 installs the keys
//! gateway 1 learned, and the genuine joins in both directions complete; without it, gateway 2
//! drops the genuine join as a blind one, which is what the store adds.
//!
//! Root only; needs the loader binary (`$MPTCP_LOADER_BIN`) and redis-server. Run with
//! `cargo test -p mptcp-tests --release --test two_gateways -- --test-threads=1 --nocapture`.

use std::time::{Duration, Instant};

use mptcp_common::counters::Counter;
use mptcp_tests::{
    counters::mib,
    gateways::{self, GatewayLab, StoreServer, GW1_IFACES, GW2_IFACES, SERVER},
    join_scenario::{StreamClient, StreamServer},
    netns::Netns,
    scenario::wait_for_counters,
    tools::Tools,
    validator::{loader_or_skip, start_or_skip, Mode, Validator},
};
use serde_json::Value;

fn tools() -> Tools {
    Tools::new(env!("CARGO_BIN_EXE_mptcp-peer"))
}

fn missing() -> Vec<String> {
    let mut missing = tools().missing();
    missing.extend(gateways::redis_missing());
    missing
}

/// `run` options that point a gateway's loader at the store.
fn store_options(url: &str, store: &StoreServer, id: &str) -> Vec<String> {
    vec![
        "--store".into(),
        url.into(),
        "--store-password-file".into(),
        store.password_file().display().to_string(),
        "--store-id".into(),
        id.into(),
        // Debug: the store's per-connection lines, so the key-hex check below sees them too.
        "--idle-timeout".into(),
        "600".into(),
    ]
}

fn start_gateway(
    test: &str,
    ns: &Netns,
    bin: &std::path::Path,
    ifaces: &[&str],
    options: &[String],
) -> Option<Validator> {
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    start_or_skip(test, ns, bin, ifaces, Mode::Enforce, &options)
}

fn stats_json(v: &Validator, ns: &Netns) -> Value {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net={}", ns.path().display()))
        .arg("--")
        .arg(mptcp_tests::validator::locate_loader().expect("loader"))
        .args(["stats", "--json"]);
    let out = mptcp_tests::proc::run_checked(&mut cmd).expect("stats --json");
    let _ = v;
    serde_json::from_str(out.trim()).expect("stats JSON")
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats[name].as_u64().unwrap_or_else(|| panic!("no {name} in {stats}"))
}

/// What one run saw.
struct Joins {
    /// The client-initiated join completed (the server counted its third ACK).
    client_join: bool,
    /// The server-initiated join completed (the client counted its third ACK).
    server_join: bool,
    /// How long after the connection the client's join completed.
    client_join_after: Option<Duration>,
    gw1: Value,
    gw2: Value,
    logs: String,
}

/// Connects through gateway 1, announces the client's port endpoint, and waits up to `wait`
/// for both joins through gateway 2.
fn connect_and_join(lab: &GatewayLab, wait: Duration, gw: (&Validator, &Validator)) -> Joins {
    let tools = tools();
    let mut server = StreamServer::start(&lab.server, &tools.python, SERVER).expect("server");
    let srv0 = lab.server.counters().expect("server counters");
    let cli0 = lab.client.counters().expect("client counters");
    let started = Instant::now();
    let mut client = StreamClient::start(&lab.client, &tools.python, SERVER).expect("client");
    server.wait_accepted().expect("accepted");
    lab.announce_join_port().expect("announce");
    client.send(1_000).expect("send");
    let client_join = wait_for_counters(
        || lab.server.counters(),
        &srv0,
        &[(mib::MP_JOIN_ACK_RX, 1)],
        wait,
    )
    .expect("server counters");
    let client_join_after = client_join.then(|| started.elapsed());
    let server_join = wait_for_counters(
        || lab.client.counters(),
        &cli0,
        &[(mib::MP_JOIN_ACK_RX, 1)],
        wait.saturating_sub(started.elapsed()),
    )
    .expect("client counters");
    if client_join && server_join {
        client.send(100_000).expect("send more");
    }
    let gw1 = stats_json(gw.0, &lab.gw1);
    let gw2 = stats_json(gw.1, &lab.gw2);
    let _ = client.close();
    let _ = server.finish();
    Joins {
        client_join,
        server_join,
        client_join_after,
        gw1,
        gw2,
        logs: format!(
            "gw1 loader:\n{}\ngw2 loader:\n{}",
            gw.0.log(),
            gw.1.log()
        ),
    }
}

#[test]
fn with_the_store_gateway_2_passes_the_genuine_joins() {
    let test = "with_the_store_gateway_2_passes_the_genuine_joins";
    let Some(bin) = loader_or_skip(test, missing()) else {
        return;
    };
    let lab = GatewayLab::new().expect("building the lab");
    let store = StoreServer::start(&lab).expect("starting redis-server");
    let [url1, url2] = GatewayLab::store_urls();
    let Some(gw1) = start_gateway(test, &lab.gw1, &bin, &GW1_IFACES, &store_options(&url1, &store, "gw1")) else {
        return;
    };
    let Some(gw2) = start_gateway(test, &lab.gw2, &bin, &GW2_IFACES, &store_options(&url2, &store, "gw2")) else {
        return;
    };
    let run = connect_and_join(&lab, Duration::from_secs(10), (&gw1, &gw2));
    let why = format!("gw1: {}\ngw2: {}\n{}", run.gw1, run.gw2, run.logs);
    eprintln!(
        "with the store: client join after {:?}; gw2 join SYNs dropped as unknown: {}; gw2 store applied: {}",
        run.client_join_after,
        counter(&run.gw2, Counter::JoinSynUnknownTokenDropped.name()),
        counter(&run.gw2, "loader_store_applied")
    );
    assert!(run.client_join, "the client's join through gw2 did not complete\n{why}");
    assert!(run.server_join, "the server's join through gw2 did not complete\n{why}");
    assert!(counter(&run.gw1, "loader_store_published") >= 1, "{why}");
    assert!(counter(&run.gw2, "loader_store_applied") >= 1, "{why}");
    // gw2 validated the joins with the keys it got from the store.
    assert!(counter(&run.gw2, Counter::JoinAckValid.name()) >= 1, "{why}");
    assert!(counter(&run.gw2, Counter::JoinSynAckValid.name()) >= 1, "{why}");
    drop(store);
}

#[test]
fn without_the_store_gateway_2_drops_the_genuine_join() {
    let test = "without_the_store_gateway_2_drops_the_genuine_join";
    let Some(bin) = loader_or_skip(test, missing()) else {
        return;
    };
    let lab = GatewayLab::new().expect("building the lab");
    let Some(gw1) = start_gateway(test, &lab.gw1, &bin, &GW1_IFACES, &[]) else {
        return;
    };
    let Some(gw2) = start_gateway(test, &lab.gw2, &bin, &GW2_IFACES, &[]) else {
        return;
    };
    // Long enough for the client's SYN retransmissions at 1 s and 3 s.
    let run = connect_and_join(&lab, Duration::from_secs(4), (&gw1, &gw2));
    let why = format!("gw1: {}\ngw2: {}\n{}", run.gw1, run.gw2, run.logs);
    let dropped = counter(&run.gw2, Counter::JoinSynUnknownTokenDropped.name());
    eprintln!("without the store: gw2 dropped {dropped} genuine join SYN(s) as blind joins");
    assert!(!run.client_join, "the join completed without the store?\n{why}");
    assert!(dropped >= 2, "{why}");
}
