//! The MP_JOIN scenario: genuine joins in both directions, data on the joined subflows, then
//! forged joins, with or without a validator on each host.
//!
//! Lab changes ([`prepare_lab`] on top of [`Lab::new`], then [`announce_join_port`] once the
//! server has accepted the connection):
//!
//! ```text
//!   client endpoints   198.18.2.1 id 1 dev cveth2 signal port 10100 -> ADD_ADDR id 1 198.18.2.1:10100,
//!                                                                     a listener on that port, and
//!                                                                     the SERVER's PM joins it
//!                      198.18.2.1 id 2 dev cveth2 subflow            -> the CLIENT joins 198.18.1.2:10000
//!   server neighbour   198.18.2.66 lladdr <cveth2's MAC> dev sveth2 (the forger's address)
//!   client sysctl      net.ipv4.ip_forward=0
//! ```
//!
//! Linux 6.18 accepts two endpoints with the same address when one has a port. A `signal`
//! endpoint with a port makes the client's kernel listen on 198.18.2.1:10100 and announce that
//! address *and port*, so the server's path manager (`add_addr_accepted 4`) opens a subflow
//! 198.18.2.2 -> 198.18.2.1:10100 that the client accepts (`MPTcpExtMPJoinPortSynRx` on the
//! client, `MPTcpExtMPJoinPortSynAckRx` on the server). Without the port, the server would
//! join the client's ephemeral port and get a RST. A port is only allowed on `signal`
//! endpoints, hence the second endpoint (`subflow`) for the client-initiated join.
//!
//! The run:
//!
//! 1. the forger starts sniffing in the client namespace; the server listens on
//!    198.18.1.2:10000 (`mptcp-peer server` and `stream`), the client connects; once the server has
//!    accepted, the client's port endpoint is added (announced) and the client sends 1000 bytes;
//! 2. genuine joins: waits until the server counted `MPTcpExtMPJoinAckRx` (client-initiated)
//!    and `MPTcpExtMPJoinSynAckRx` (server-initiated) and the client the reverse;
//! 3. data: the client marks its initial subflow backup and sends 1 MB, then marks its own
//!    join backup too and sends 1 MB again (the scheduler would otherwise keep nearly everything
//!    on the initial subflow); `ss` on the server must show received bytes on both joined
//!    subflows;
//! 4. forged: blind SYNs (random tokens), then join handshakes whose third ACK has a wrong
//!    HMAC, then (optionally) one with the right HMAC, the positive control;
//! 5. the client closes; counters, validator stats and byte counts are returned.

use std::{
    fmt,
    net::SocketAddrV4,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use mptcp_common::counters::Counter;

use crate::{
    counters::{mib, Counters},
    error::{LabError, Result},
    join_forger::{AckHmac, JoinForger, JoinInjection, FORGER_ADDR},
    lab::{Lab, PATH1, PATH2},
    netns::Netns,
    proc::{run_checked, Proc},
    scenario::{wait_for_counters, Snapshots},
    tools::Tools,
    validator::{Validator, ValidatorStats},
};

/// Port of the client's port-based `signal` endpoint (where the server joins).
pub const CLIENT_JOIN_PORT: u16 = 10_100;
/// ID of the client's `signal port 10100` endpoint (the address ID it announces).
pub const SIGNAL_ENDPOINT_ID: u8 = 1;
/// ID of the client's `subflow` endpoint (its join's address ID).
pub const SUBFLOW_ENDPOINT_ID: u8 = 2;
/// ID of the endpoint added for the initial address during the data phase, to mark it backup.
pub const INITIAL_ENDPOINT_ID: u8 = 3;
/// The client's interfaces, where its validator attaches.
pub const CLIENT_IFACES: [&str; 2] = [PATH1.client_iface, PATH2.client_iface];

/// Blind joins: a SYN whose token names no connection.
pub const NO_TOKEN_FOUND: &str = "MPTcpExtMPJoinNoTokenFound";
/// A join's third ACK whose HMAC is wrong.
pub const ACK_HMAC_FAILURE: &str = "MPTcpExtMPJoinAckHMacFailure";
/// A join's SYN/ACK whose HMAC is wrong.
pub const SYNACK_HMAC_FAILURE: &str = "MPTcpExtMPJoinSynAckHMacFailure";
/// A join to the port of a port-based endpoint (client side).
pub const PORT_SYN_RX: &str = "MPTcpExtMPJoinPortSynRx";

const DATA_ROUND: u64 = 1_000_000;
const MAX_DATA_ROUNDS: u32 = 10;
const FIRST_DATA: u64 = 1_000;
const GENUINE_WAIT: Duration = Duration::from_secs(10);
const FORGED_WAIT: Duration = Duration::from_secs(3);
const SETTLE: Duration = Duration::from_millis(300);
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What is missing to run this scenario (empty = ready): the lab's needs plus `ss`.
#[must_use]
pub fn missing(tools: &Tools) -> Vec<String> {
    let mut missing = tools.missing();
    if run_checked(std::process::Command::new("ss").arg("-V")).is_err() {
        missing.push("`ss` (iproute2) does not run".to_owned());
    }
    missing
}

/// The endpoints, neighbour and sysctl described in the module docs.
///
/// # Errors
/// When an `ip`/`sysctl` step fails.
pub fn prepare_lab(lab: &Lab) -> Result<()> {
    let subflow_id = SUBFLOW_ENDPOINT_ID.to_string();
    lab.client.ip(&["mptcp", "endpoint", "flush"])?;
    lab.client.ip(&[
        "mptcp",
        "endpoint",
        "add",
        &PATH2.client_addr.to_string(),
        "id",
        &subflow_id,
        "dev",
        PATH2.client_iface,
        "subflow",
    ])?;
    // The server's answers to the forger go to cveth2, where the client kernel, which does not
    // own the address and does not forward, drops them without a RST.
    lab.client.sysctl("net.ipv4.ip_forward", "0")?;
    lab.server.ip(&[
        "neigh",
        "replace",
        &FORGER_ADDR.to_string(),
        "lladdr",
        PATH2.client_mac,
        "dev",
        PATH2.server_iface,
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// Adds the client's `signal port 10100` endpoint: the client's kernel opens the listener and
/// announces 198.18.2.1:10100 on the connections it already has, so the server's path manager
/// joins it.
///
/// Called once the server has accepted the connection: Linux 6.18 cannot open a subflow from a
/// connection the application has not accepted yet (`mptcp_subflow_create_socket` needs the
/// socket; `MPTcpExtMPJoinSynTxCreatSkErr` rises and the announcement is not retried), which a
/// loaded machine hits when the ADD_ADDR arrives before `accept()` returns.
///
/// # Errors
/// When `ip mptcp endpoint add` fails.
pub fn announce_join_port(lab: &Lab) -> Result<()> {
    lab.client
        .ip(&[
            "mptcp",
            "endpoint",
            "add",
            &PATH2.client_addr.to_string(),
            "id",
            &SIGNAL_ENDPOINT_ID.to_string(),
            "dev",
            PATH2.client_iface,
            "signal",
            "port",
            &CLIENT_JOIN_PORT.to_string(),
        ])
        .map(drop)
}

/// One established TCP subflow as `ss -tin` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subflow {
    /// Local address.
    pub local: SocketAddrV4,
    /// Peer address.
    pub peer: SocketAddrV4,
    /// `bytes_received` (payload received on this subflow).
    pub bytes_received: u64,
}

/// The established TCP sockets of `ns` (MPTCP subflows are TCP sockets), IPv4 only.
///
/// # Errors
/// When `ss` fails.
pub fn subflows(ns: &Netns) -> Result<Vec<Subflow>> {
    Ok(parse_ss(&ns.run(&[
        "ss",
        "-H",
        "-t",
        "-i",
        "-n",
        "-O",
        "state",
        "established",
    ])?))
}

/// Parses `ss -HtinO` lines: the first two words that are `ip[%dev]:port` are the local and peer
/// addresses; `bytes_received:N` is looked up among the rest.
fn parse_ss(out: &str) -> Vec<Subflow> {
    out.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let mut addrs = words.iter().filter_map(|w| parse_ss_addr(w));
            let (local, peer) = (addrs.next()?, addrs.next()?);
            let bytes_received = words
                .iter()
                .find_map(|w| w.strip_prefix("bytes_received:")?.parse().ok())
                .unwrap_or(0);
            Some(Subflow {
                local,
                peer,
                bytes_received,
            })
        })
        .collect()
}

fn parse_ss_addr(word: &str) -> Option<SocketAddrV4> {
    let (host, port) = word.rsplit_once(':')?;
    let host = host.split('%').next()?;
    Some(SocketAddrV4::new(host.parse().ok()?, port.parse().ok()?))
}

/// The server side's view of the two joined subflows, by their bytes received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Path2Bytes {
    /// Client-initiated join (198.18.2.1:* -> 198.18.1.2:port), if established.
    pub client_initiated: Option<u64>,
    /// Server-initiated join (198.18.2.2:* -> 198.18.2.1:10100), if established.
    pub server_initiated: Option<u64>,
}

impl Path2Bytes {
    fn from_server_subflows(subflows: &[Subflow], port: u16) -> Path2Bytes {
        let find = |pred: &dyn Fn(&Subflow) -> bool| {
            subflows.iter().find(|s| pred(s)).map(|s| s.bytes_received)
        };
        Path2Bytes {
            client_initiated: find(&|s| {
                *s.local.ip() == PATH1.server_addr
                    && s.local.port() == port
                    && *s.peer.ip() == PATH2.client_addr
            }),
            server_initiated: find(&|s| {
                *s.local.ip() == PATH2.server_addr
                    && *s.peer.ip() == PATH2.client_addr
                    && s.peer.port() == CLIENT_JOIN_PORT
            }),
        }
    }

    fn both_carried_data(self) -> bool {
        self.client_initiated.is_some_and(|b| b > 0) && self.server_initiated.is_some_and(|b| b > 0)
    }
}

/// `mptcp-peer server`: accepts one connection and counts what it receives.
pub struct StreamServer {
    proc: Proc,
}

impl StreamServer {
    /// Starts `mptcp-peer server` in `ns`, listening on `addr`.
    ///
    /// # Errors
    /// When it does not listen.
    pub fn start(ns: &Netns, peer_bin: &Path, addr: SocketAddrV4) -> Result<StreamServer> {
        let args = ["server".to_owned(), addr.to_string()];
        let mut proc = ns.spawn("mptcp stream server", peer_bin, &args)?;
        proc.wait_for_prefix("LISTENING", START_TIMEOUT)?;
        Ok(StreamServer { proc })
    }

    /// Waits for the connection.
    ///
    /// # Errors
    /// When none comes in time.
    pub fn wait_accepted(&mut self) -> Result<()> {
        self.proc
            .wait_for_prefix("ACCEPTED", START_TIMEOUT)
            .map(drop)
    }

    /// Waits for the end and returns the bytes received.
    ///
    /// # Errors
    /// When it does not end in time.
    pub fn finish(mut self) -> Result<u64> {
        let n = self
            .proc
            .wait_for_prefix("RECEIVED", Duration::from_secs(30))?;
        self.proc.wait_exit(Duration::from_secs(5))?;
        n.parse()
            .map_err(|_| unexpected(&self.proc, "RECEIVED", &n))
    }
}

/// `mptcp-peer stream`: connects, then sends when told to.
pub struct StreamClient {
    proc: Proc,
    sent: u64,
}

impl StreamClient {
    /// Connects from `ns` to `server` (`mptcp-peer stream`).
    ///
    /// # Errors
    /// When it cannot connect.
    pub fn start(ns: &Netns, peer_bin: &Path, server: SocketAddrV4) -> Result<StreamClient> {
        let args = ["stream".to_owned(), server.to_string()];
        let mut proc = ns.spawn("mptcp stream client", peer_bin, &args)?;
        proc.wait_for_prefix("CONNECTED", START_TIMEOUT)?;
        Ok(StreamClient { proc, sent: 0 })
    }

    /// Sends `bytes` bytes.
    ///
    /// # Errors
    /// When it does not report them written.
    pub fn send(&mut self, bytes: u64) -> Result<()> {
        self.proc.send_line(&format!("send {bytes}"))?;
        let n = self.proc.wait_for_prefix("SENT", Duration::from_secs(30))?;
        if n != bytes.to_string() {
            return Err(unexpected(&self.proc, "send", &n));
        }
        self.sent += bytes;
        Ok(())
    }

    /// Aborts the connection (`SO_LINGER` 0): Linux sends an MP_FASTCLOSE on an RST.
    ///
    /// # Errors
    /// When it does not report it.
    pub fn abort(mut self) -> Result<()> {
        self.proc.send_line("abort")?;
        self.proc
            .wait_for_prefix("ABORTED", Duration::from_secs(10))?;
        self.proc.wait_exit(Duration::from_secs(5))?;
        Ok(())
    }

    /// Closes and returns the bytes sent.
    ///
    /// # Errors
    /// When it does not close cleanly.
    pub fn close(mut self) -> Result<u64> {
        self.proc.send_line("close")?;
        self.proc
            .wait_for_prefix("CLOSED", Duration::from_secs(30))?;
        self.proc.wait_exit(Duration::from_secs(5))?;
        Ok(self.sent)
    }
}

fn unexpected(proc: &Proc, request: &str, line: &str) -> LabError {
    LabError::Unexpected {
        process: proc.name().to_owned(),
        request: request.to_owned(),
        line: format!("{line}\n{}", proc.log()),
    }
}

/// Parameters of a run.
#[derive(Clone, Debug)]
pub struct JoinScenario {
    /// Server port.
    pub port: u16,
    /// Blind SYNs (random tokens).
    pub unknown_token_syns: u32,
    /// Join handshakes whose third ACK has a random HMAC.
    pub bad_acks: u32,
    /// Whether to run the positive control (one join with the right HMAC, then a RST).
    pub control: bool,
    /// Whether the forged segments are expected to reach the kernel (no validator, or monitor
    /// mode): the run then waits until the kernel has counted them.
    pub forged_should_pass: bool,
}

impl Default for JoinScenario {
    fn default() -> JoinScenario {
        JoinScenario {
            port: 10_000,
            unknown_token_syns: 5,
            bad_acks: 3,
            control: true,
            forged_should_pass: true,
        }
    }
}

/// The validators running on both hosts, for `stats` snapshots during the run.
#[derive(Clone, Copy)]
pub struct HostValidators<'a> {
    /// On the server's interfaces.
    pub server: &'a Validator,
    /// On the client's interfaces.
    pub client: &'a Validator,
}

/// A validator's counters at the milestones of the forged phase.
#[derive(Clone, Debug)]
pub struct StatsSnapshots {
    /// Right before the forged segments.
    pub before_forged: ValidatorStats,
    /// Right after the blind SYNs and the bad third ACKs.
    pub after_forged: ValidatorStats,
    /// After the connection closed.
    pub end: ValidatorStats,
}

impl StatsSnapshots {
    /// Change of `counter` during the forged window.
    #[must_use]
    pub fn forged_delta(&self, counter: Counter) -> u64 {
        self.after_forged
            .get(counter)
            .saturating_sub(self.before_forged.get(counter))
    }

    /// Sum of every counter that means "dropped", at the end.
    #[must_use]
    pub fn total_dropped(&self) -> u64 {
        Counter::ALL
            .iter()
            .filter(|c| c.name().ends_with("_dropped"))
            .map(|c| self.end.get(*c))
            .sum()
    }
}

/// Everything a run observed.
#[derive(Clone, Debug)]
pub struct JoinOutcome {
    /// The parameters.
    pub scenario: JoinScenario,
    /// Server kernel counters (`after_control` equals `after_forged` without a control).
    pub server: Snapshots,
    /// Client kernel counters (same milestones).
    pub client: Snapshots,
    /// Whether both genuine joins were counted within the wait.
    pub genuine_settled: bool,
    /// Bytes received on the joined subflows (server side) when the data phase ended.
    pub path2: Path2Bytes,
    /// Every established subflow on the server at that moment.
    pub server_subflows: Vec<Subflow>,
    /// Data rounds (of 1 MB) it took.
    pub data_rounds: u32,
    /// The forger's view of the connection before forging.
    pub forger_state: String,
    /// The blind SYNs.
    pub unknown: JoinInjection,
    /// The joins with a bad third-ACK HMAC.
    pub bad: JoinInjection,
    /// The positive control, if run.
    pub control: Option<JoinInjection>,
    /// Bytes the client sent.
    pub bytes_sent: u64,
    /// Bytes the server read.
    pub bytes_received: u64,
    /// Server validator counters, when one ran.
    pub server_stats: Option<StatsSnapshots>,
    /// Client validator counters, when one ran.
    pub client_stats: Option<StatsSnapshots>,
}

/// Runs the scenario in `lab` (already set up with [`prepare_lab`]). Validators, if any, must
/// have been started before: they have to see the MP_CAPABLE handshake.
///
/// # Errors
/// When a process fails or does not answer in time. Outcomes that are merely wrong (counters
/// that did not move) are returned for the caller to judge.
pub fn run(
    lab: &Lab,
    tools: &Tools,
    sc: &JoinScenario,
    validators: Option<HostValidators<'_>>,
) -> Result<JoinOutcome> {
    let server_addr = SocketAddrV4::new(PATH1.server_addr, sc.port);
    let mut forger = JoinForger::start(
        &lab.client,
        &tools.peer_bin,
        &PATH2,
        PATH1.client_addr,
        server_addr,
    )?;
    let mut server = StreamServer::start(&lab.server, &tools.peer_bin, server_addr)?;
    let mut srv = Snapshots::starting(&lab.server)?;
    let mut cli = Snapshots::starting(&lab.client)?;

    // 1-2. Connect, a little data, both genuine joins.
    let mut client = StreamClient::start(&lab.client, &tools.peer_bin, server_addr)?;
    server.wait_accepted()?;
    announce_join_port(lab)?;
    client.send(FIRST_DATA)?;
    let deadline = Instant::now() + GENUINE_WAIT;
    let genuine_settled = wait_for_counters(
        || lab.server.counters(),
        &srv.start,
        &[(mib::MP_JOIN_ACK_RX, 1), (mib::MP_JOIN_SYNACK_RX, 1)],
        GENUINE_WAIT,
    )? && wait_for_counters(
        || lab.client.counters(),
        &cli.start,
        &[(mib::MP_JOIN_ACK_RX, 1), (mib::MP_JOIN_SYNACK_RX, 1)],
        deadline.saturating_duration_since(Instant::now()),
    )?;
    srv.after_genuine = lab.server.counters()?;
    cli.after_genuine = lab.client.counters()?;

    // 3. Data on the joined subflows (see `steer_data_to_joins`).
    let (data_rounds, server_subflows, path2) = steer_data_to_joins(lab, &mut client, sc.port)?;

    // 4. Forged joins.
    thread::sleep(SETTLE);
    let forger_state = forger.state()?;
    let stats_before = validator_stats(lab, validators)?;
    srv.before_forged = lab.server.counters()?;
    cli.before_forged = lab.client.counters()?;
    let unknown = forger.syn_unknown_token(sc.unknown_token_syns)?;
    let bad = forger.join(AckHmac::Bad, sc.bad_acks)?;
    if sc.forged_should_pass {
        wait_for_counters(
            || lab.server.counters(),
            &srv.before_forged,
            &[
                (NO_TOKEN_FOUND, i128::from(unknown.syns)),
                (ACK_HMAC_FAILURE, i128::from(bad.acks)),
            ],
            FORGED_WAIT,
        )?;
    }
    thread::sleep(SETTLE);
    srv.after_forged = lab.server.counters()?;
    cli.after_forged = lab.client.counters()?;
    let stats_after = validator_stats(lab, validators)?;

    let control = if sc.control {
        let injection = forger.join(AckHmac::Good, 1)?;
        wait_for_counters(
            || lab.server.counters(),
            &srv.after_forged,
            &[(mib::MP_JOIN_ACK_RX, 1)],
            FORGED_WAIT,
        )?;
        thread::sleep(SETTLE);
        Some(injection)
    } else {
        None
    };
    srv.after_control = lab.server.counters()?;
    cli.after_control = lab.client.counters()?;

    // 5. Close.
    let bytes_sent = client.close()?;
    let bytes_received = server.finish()?;
    forger.quit();
    srv.end = lab.server.counters()?;
    cli.end = lab.client.counters()?;
    let stats_end = validator_stats(lab, validators)?;
    let (server_stats, client_stats) = match (stats_before, stats_after, stats_end) {
        (Some(before), Some(after), Some(end)) => (
            Some(StatsSnapshots {
                before_forged: before.0,
                after_forged: after.0,
                end: end.0,
            }),
            Some(StatsSnapshots {
                before_forged: before.1,
                after_forged: after.1,
                end: end.1,
            }),
        ),
        _ => (None, None),
    };

    Ok(JoinOutcome {
        scenario: sc.clone(),
        server: srv,
        client: cli,
        genuine_settled,
        path2,
        server_subflows,
        data_rounds,
        forger_state,
        unknown,
        bad,
        control,
        bytes_sent,
        bytes_received,
        server_stats,
        client_stats,
    })
}

/// Makes both joined subflows carry data and returns (rounds of 1 MB sent, the server's
/// subflows, their bytes received).
///
/// The client's scheduler sends on the non-backup subflow with the shortest estimated queueing
/// time, which in this lab is nearly always the initial subflow (its RTT estimate is the
/// finest): left alone, a joined subflow may carry nothing for many megabytes. So the client
/// marks its subflows backup one after the other (`ip mptcp endpoint change ... backup`, which
/// sends MP_PRIO): first the initial one (through an endpoint for 198.18.1.1, added only now so
/// that it plays no part in the joins), then the client-initiated join, leaving the
/// server-initiated join as the only regular subflow.
fn steer_data_to_joins(
    lab: &Lab,
    client: &mut StreamClient,
    port: u16,
) -> Result<(u32, Vec<Subflow>, Path2Bytes)> {
    let initial = PATH1.client_addr.to_string();
    let initial_id = INITIAL_ENDPOINT_ID.to_string();
    lab.client.ip(&[
        "mptcp",
        "endpoint",
        "add",
        &initial,
        "id",
        &initial_id,
        "dev",
        PATH1.client_iface,
    ])?;
    let mut rounds = 0;
    let mut server_subflows = Vec::new();
    let mut path2 = Path2Bytes::default();
    for backup_id in [INITIAL_ENDPOINT_ID, SUBFLOW_ENDPOINT_ID] {
        let id = backup_id.to_string();
        lab.client
            .ip(&["mptcp", "endpoint", "change", "id", &id, "backup"])?;
        client.send(DATA_ROUND)?;
        rounds += 1;
        thread::sleep(Duration::from_millis(50));
        server_subflows = subflows(&lab.server)?;
        path2 = Path2Bytes::from_server_subflows(&server_subflows, port);
    }
    while !path2.both_carried_data() && rounds < MAX_DATA_ROUNDS {
        client.send(DATA_ROUND)?;
        rounds += 1;
        thread::sleep(Duration::from_millis(50));
        server_subflows = subflows(&lab.server)?;
        path2 = Path2Bytes::from_server_subflows(&server_subflows, port);
    }
    Ok((rounds, server_subflows, path2))
}

/// `stats --json` of the (server, client) validators, when they run.
fn validator_stats(
    lab: &Lab,
    validators: Option<HostValidators<'_>>,
) -> Result<Option<(ValidatorStats, ValidatorStats)>> {
    validators
        .map(|v| Ok((v.server.stats(&lab.server)?, v.client.stats(&lab.client)?)))
        .transpose()
}

impl JoinOutcome {
    /// The figures of the run (see [`Figures`]).
    #[must_use]
    pub fn figures(&self, label: &str) -> Figures {
        let (s, c) = (&self.server, &self.client);
        let validator = |counter: Counter| {
            self.server_stats
                .as_ref()
                .map(|st| st.forged_delta(counter))
        };
        Figures {
            label: label.to_owned(),
            client_joins_acked: s.after_genuine.delta(&s.start, mib::MP_JOIN_ACK_RX),
            client_joins_synack: c.after_genuine.delta(&c.start, mib::MP_JOIN_SYNACK_RX),
            server_joins_acked: c.after_genuine.delta(&c.start, mib::MP_JOIN_ACK_RX),
            server_joins_synack: s.after_genuine.delta(&s.start, mib::MP_JOIN_SYNACK_RX),
            path2: self.path2,
            unknown_sent: self.unknown.syns,
            unknown_reached: s.after_forged.delta(&s.before_forged, NO_TOKEN_FOUND),
            unknown_dropped: validator(Counter::JoinSynUnknownTokenDropped),
            unknown_would_drop: validator(Counter::JoinSynUnknownTokenWouldDrop),
            bad_syns_sent: self.bad.syns,
            bad_synacks_seen: self.bad.synacks,
            bad_acks_sent: self.bad.acks,
            bad_acks_reached: s.after_forged.delta(&s.before_forged, ACK_HMAC_FAILURE),
            bad_acks_dropped: validator(Counter::JoinAckBadHmacDropped),
            bad_acks_would_drop: validator(Counter::JoinAckBadHmacWouldDrop),
            control_acks_sent: self.control.as_ref().map_or(0, |c| c.acks),
            control_accepted: s.after_control.delta(&s.after_forged, mib::MP_JOIN_ACK_RX),
        }
    }

    /// Kernel counters that moved on one host between two snapshots, `MPTcpExt*` only.
    fn mptcp_changes(from: &Counters, to: &Counters) -> String {
        to.changes_since(from).mptcp().to_string()
    }

    /// A multi-line account of the run for failure messages: counter changes per phase on each
    /// host, the forger's answers, the server's subflows and the validators' non-zero counters.
    #[must_use]
    pub fn details(&self) -> String {
        let mut out = String::new();
        for (host, snap) in [("server", &self.server), ("client", &self.client)] {
            out.push_str(&format!(
                "{host} kernel, genuine phase: {}\n{host} kernel, forged phase: {}\n\
                 {host} kernel, control phase: {}\n{host} kernel, whole run: {}\n",
                Self::mptcp_changes(&snap.start, &snap.after_genuine),
                Self::mptcp_changes(&snap.before_forged, &snap.after_forged),
                Self::mptcp_changes(&snap.after_forged, &snap.after_control),
                Self::mptcp_changes(&snap.start, &snap.end),
            ));
        }
        out.push_str(&format!("forger: {}\n", self.forger_state));
        for injection in [Some(&self.unknown), Some(&self.bad), self.control.as_ref()]
            .into_iter()
            .flatten()
        {
            out.push_str(&format!("forger: {}\n", injection.detail));
        }
        out.push_str(&format!(
            "server subflows after {} data round(s): {:?}\nbytes sent {} received {}\n",
            self.data_rounds, self.server_subflows, self.bytes_sent, self.bytes_received
        ));
        for (host, stats) in [
            ("server", &self.server_stats),
            ("client", &self.client_stats),
        ] {
            if let Some(stats) = stats {
                let nonzero: Vec<String> = stats
                    .end
                    .counters
                    .iter()
                    .filter(|(_, v)| **v != 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let maps = stats.end.json.get("maps").map(ToString::to_string);
                out.push_str(&format!(
                    "{host} validator at the end: {}\n{host} validator maps: {}\n",
                    nonzero.join(" "),
                    maps.as_deref().unwrap_or("-")
                ));
            }
        }
        out
    }
}

/// What a run shows, in numbers: genuine joins completed, forged segments sent, how many the
/// kernel saw, and what the validator on the server did with them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figures {
    /// Which run (printed).
    pub label: String,
    /// Client-initiated joins completed: the server's `MPTcpExtMPJoinAckRx`, genuine phase.
    pub client_joins_acked: i128,
    /// The client's `MPTcpExtMPJoinSynAckRx` for them.
    pub client_joins_synack: i128,
    /// Server-initiated joins completed: the client's `MPTcpExtMPJoinAckRx`, genuine phase.
    pub server_joins_acked: i128,
    /// The server's `MPTcpExtMPJoinSynAckRx` for them.
    pub server_joins_synack: i128,
    /// Bytes received on the joined subflows.
    pub path2: Path2Bytes,
    /// Blind SYNs sent.
    pub unknown_sent: u32,
    /// Blind SYNs the server's kernel saw: `MPTcpExtMPJoinNoTokenFound`, forged window.
    pub unknown_reached: i128,
    /// `join_syn_unknown_token_dropped` on the server's validator, forged window.
    pub unknown_dropped: Option<u64>,
    /// `join_syn_unknown_token_would_drop`, forged window.
    pub unknown_would_drop: Option<u64>,
    /// SYNs with the right token sent ahead of the bad third ACKs.
    pub bad_syns_sent: u32,
    /// SYN/ACKs the forger received for them.
    pub bad_synacks_seen: u32,
    /// Third ACKs with a wrong HMAC sent.
    pub bad_acks_sent: u32,
    /// Of those, what the server's kernel saw: `MPTcpExtMPJoinAckHMacFailure`, forged window.
    pub bad_acks_reached: i128,
    /// `join_ack_bad_hmac_dropped` on the server's validator, forged window.
    pub bad_acks_dropped: Option<u64>,
    /// `join_ack_bad_hmac_would_drop`, forged window.
    pub bad_acks_would_drop: Option<u64>,
    /// Third ACKs with the right HMAC sent (the positive control).
    pub control_acks_sent: u32,
    /// Joins the server's kernel completed for them (`MPTcpExtMPJoinAckRx`, control window).
    pub control_accepted: i128,
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let bytes = |v: Option<u64>| v.map_or_else(|| "no subflow".to_owned(), |v| v.to_string());
        writeln!(f, "MP_JOIN figures, {}:", self.label)?;
        writeln!(
            f,
            "  genuine joins completed: client-initiated {} (server MPJoinAckRx {:+}, client \
             MPJoinSynAckRx {:+}), server-initiated {} (client MPJoinAckRx {:+}, server \
             MPJoinSynAckRx {:+})",
            self.client_joins_acked.min(self.client_joins_synack),
            self.client_joins_acked,
            self.client_joins_synack,
            self.server_joins_acked.min(self.server_joins_synack),
            self.server_joins_acked,
            self.server_joins_synack,
        )?;
        writeln!(
            f,
            "  bytes received on the joined subflows: client-initiated {}, server-initiated {}",
            bytes(self.path2.client_initiated),
            bytes(self.path2.server_initiated),
        )?;
        writeln!(
            f,
            "  forged SYN + MP_JOIN, unknown token: sent {}, reached the stack \
             (MPJoinNoTokenFound) {}, validator dropped {} / would drop {}",
            self.unknown_sent,
            self.unknown_reached,
            opt(self.unknown_dropped),
            opt(self.unknown_would_drop),
        )?;
        writeln!(
            f,
            "  forged third ACK, wrong HMAC: sent {} (after {} SYNs with the right token, {} \
             SYN/ACKs), reached the stack (MPJoinAckHMacFailure) {}, validator dropped {} / \
             would drop {}",
            self.bad_acks_sent,
            self.bad_syns_sent,
            self.bad_synacks_seen,
            self.bad_acks_reached,
            opt(self.bad_acks_dropped),
            opt(self.bad_acks_would_drop),
        )?;
        write!(
            f,
            "  control third ACK, right HMAC: sent {}, accepted (MPJoinAckRx) {}",
            self.control_acks_sent, self.control_accepted
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_lines() {
        let out = "\
0      0      198.18.2.2:59935 198.18.2.1:10100 bbr wscale:10,10 bytes_acked:1 bytes_received:65536 tcp-ulp-mptcp flags:Jjec
0      0      198.18.1.2:10000 198.18.2.1:45697 bbr bytes_received:96904 segs_out:16
0      0      198.18.2.1%cveth2:45697 198.18.1.2:10000 bbr bytes_sent:96904 bytes_acked:96905
garbage
";
        let subflows = parse_ss(out);
        assert_eq!(subflows.len(), 3);
        assert_eq!(subflows[0].bytes_received, 65536);
        assert_eq!(subflows[2].local, "198.18.2.1:45697".parse().unwrap());
        assert_eq!(subflows[2].bytes_received, 0);
        let path2 = Path2Bytes::from_server_subflows(&subflows, 10_000);
        assert_eq!(path2.client_initiated, Some(96904));
        assert_eq!(path2.server_initiated, Some(65536));
        assert!(path2.both_carried_data());
        assert!(!Path2Bytes::default().both_carried_data());
    }
}
