//! The traffic-and-forgery scenario shared by the baseline test, the validator e2e test and the
//! demo.
//!
//! 1. tcpdump on both server interfaces; the forger sniffing the client's path-1 interface.
//! 2. The MPTCP server listens on 198.18.1.2:`port`; the client connects and sends `bytes`.
//! 3. Genuine: the client announces 198.18.2.1 (ADD_ADDR id 1) and joins a subflow from it.
//!    Waits until the server counted the ADD_ADDR and the join (up to 10 s).
//! 4. Optionally, an attack on the firewall's state first ([`Scenario::attack`]): one blind RST or
//!    one MP_CAPABLE with other keys into the live connection, out of window (the server's
//!    Linux ignores it), then a short pause.
//! 5. Forged: `forged` ADD_ADDRs with random HMACs (id 9, 198.18.3.66) into the live
//!    connection. Then, optionally, one positive control with the right HMAC (id 10,
//!    198.18.3.67), proving that exactly the same framing is accepted by the kernel.
//! 6. Optionally, more genuine signalling on the same connection ([`Scenario::late_endpoint`]):
//!    the client adds an address on path 2 as an endpoint; its path manager announces it and
//!    joins a subflow from it. Waits until the server counted both (up to 10 s).
//! 7. The client closes; byte counts, counter snapshots and what tcpdump saw are returned.
//!
//! Whoever runs a validator starts it before calling [`run`] (it has to see the handshake);
//! [`run_validated`] does that with `mptcp-loader run` on the server.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use crate::{
    capture::{Capture, CaptureReport},
    counters::{mib, Changes, Counters},
    error::Result,
    forger::{Attack, AttackSent, Forger, HmacKind, Injection},
    lab::{Lab, PATH1, PATH2, PATHS, SERVER_IFACES},
    netns::Netns,
    peers::{ClientReport, PeerClient, PeerServer},
    tools::Tools,
    validator::{loader_or_skip, start_or_skip, Mode, StopReport, Validator, ValidatorStats},
};

/// Parameters of a run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Server port.
    pub port: u16,
    /// Bytes the client sends.
    pub bytes: u64,
    /// Forged ADD_ADDRs with a random HMAC.
    pub forged: u32,
    /// Their address ID.
    pub forged_id: u8,
    /// The address they announce.
    pub forged_addr: Ipv4Addr,
    /// Whether to send the positive control (one forged ADD_ADDR with the right HMAC).
    pub control: bool,
    /// Its address ID.
    pub control_id: u8,
    /// The address it announces.
    pub control_addr: Ipv4Addr,
    /// A state-changing segment sent into the connection right before the forged ADD_ADDRs
    /// (followed by a pause of [`ATTACK_SETTLE`]); `None` sends none.
    pub attack: Option<Attack>,
    /// An address (in 198.18.2.0/24) the client adds on path 2 as a `signal subflow` endpoint
    /// after the positive control, for one more genuine ADD_ADDR and join on the same
    /// connection; `None` adds none.
    pub late_endpoint: Option<Ipv4Addr>,
}

impl Default for Scenario {
    fn default() -> Scenario {
        Scenario {
            port: 10_000,
            bytes: 1_000_000,
            forged: 5,
            forged_id: 9,
            forged_addr: Ipv4Addr::new(198, 18, 3, 66),
            control: true,
            control_id: 10,
            control_addr: Ipv4Addr::new(198, 18, 3, 67),
            attack: None,
            late_endpoint: None,
        }
    }
}

/// Counter snapshots of one namespace at the scenario's milestones.
#[derive(Clone, Debug, Default)]
pub struct Snapshots {
    /// Before the client connects.
    pub start: Counters,
    /// After the genuine ADD_ADDR and join were counted (or the wait timed out).
    pub after_genuine: Counters,
    /// Right before the attack (empty without one).
    pub before_attack: Counters,
    /// After the attack and its pause (empty without one).
    pub after_attack: Counters,
    /// Right before the forged ADD_ADDRs.
    pub before_forged: Counters,
    /// Right after them.
    pub after_forged: Counters,
    /// After the positive control (same as `after_forged` without one).
    pub after_control: Counters,
    /// After the late endpoint's ADD_ADDR and join were counted, or the wait timed out (same as
    /// `after_control` without one).
    pub after_late: Counters,
    /// After the connection closed.
    pub end: Counters,
}

impl Snapshots {
    /// Snapshots of `ns` whose `start` is read now; the run fills in the other milestones.
    ///
    /// # Errors
    /// When reading the counters fails.
    pub fn starting(ns: &Netns) -> Result<Snapshots> {
        Ok(Snapshots {
            start: ns.counters()?,
            ..Snapshots::default()
        })
    }
}

/// Everything a run observed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The parameters.
    pub scenario: Scenario,
    /// The client's initial-subflow address.
    pub client_addr: SocketAddr,
    /// Server counters.
    pub server: Snapshots,
    /// Client counters (`start` and `end` only are filled).
    pub client: Snapshots,
    /// Whether the server counted the genuine ADD_ADDR and the join within the wait.
    pub genuine_settled: bool,
    /// The forger's view of the connection before injecting.
    pub forger_state: String,
    /// The attack, if sent.
    pub attack: Option<AttackSent>,
    /// The validator's counters right before and right after the attack and its pause (with
    /// an attack and a validator given to [`run_observed`]).
    pub attack_stats: Option<(ValidatorStats, ValidatorStats)>,
    /// The forged (bad HMAC) injection.
    pub forged: Injection,
    /// The positive control, if sent.
    pub control: Option<Injection>,
    /// Whether the server counted the late endpoint's ADD_ADDR and join within the wait
    /// (`None` without a late endpoint).
    pub late_settled: Option<bool>,
    /// What the client reported.
    pub client_report: ClientReport,
    /// Bytes the server read.
    pub bytes_received: u64,
    /// tcpdump on each server interface (path 1, path 2).
    pub captures: Vec<CaptureReport>,
}

impl Outcome {
    /// Asserts what genuine traffic must show in every run, with or without a validator: a
    /// complete capture, the client's ADD_ADDR accepted and its join counted by the server (and
    /// seen by tcpdump), and every byte received. `why` is added to each failure message.
    ///
    /// # Panics
    /// When one of them does not hold.
    pub fn assert_genuine_traffic(&self, why: &str) {
        assert_eq!(
            self.capture_drops(),
            0,
            "tcpdump lost packets: the capture proves nothing\n{why}"
        );
        assert!(
            self.genuine_settled,
            "genuine ADD_ADDR/join not counted in time\n{why}"
        );
        assert!(
            self.server
                .after_genuine
                .delta(&self.server.start, mib::ADD_ADDR)
                >= 1,
            "{why}"
        );
        assert!(
            self.server
                .after_genuine
                .delta(&self.server.start, mib::MP_JOIN_ACK_RX)
                >= 1,
            "{why}"
        );
        assert_eq!(
            self.bytes_received, self.scenario.bytes,
            "not all data arrived\n{why}"
        );
        assert!(
            self.genuine_seen_by_server() >= 1,
            "tcpdump missed the genuine ADD_ADDR\n{why}"
        );
    }

    /// Server counter changes during the genuine phase.
    #[must_use]
    pub fn genuine_changes(&self) -> Changes {
        self.server.after_genuine.changes_since(&self.server.start)
    }

    /// Server counter changes during the attack and its pause (none without an attack).
    #[must_use]
    pub fn attack_changes(&self) -> Changes {
        self.server
            .after_attack
            .changes_since(&self.server.before_attack)
    }

    /// Change of one server counter during the attack and its pause.
    #[must_use]
    pub fn attack_delta(&self, name: &str) -> i128 {
        self.server
            .after_attack
            .delta(&self.server.before_attack, name)
    }

    /// Change of one validator counter (by name) during the attack and its pause; `None`
    /// without an attack or a validator.
    #[must_use]
    pub fn attack_stat_delta(&self, name: &str) -> Option<i128> {
        let (before, after) = self.attack_stats.as_ref()?;
        let read = |s: &ValidatorStats| i128::from(s.counters.get(name).copied().unwrap_or(0));
        Some(read(after) - read(before))
    }

    /// How many times the server's tcpdump saw the attacker's segment (its RST by sequence
    /// number, its MP_CAPABLE by key); 0 without an attack. Seen means the XDP program on
    /// that interface passed it.
    #[must_use]
    pub fn attack_seen_by_server(&self) -> usize {
        let Some(attack) = &self.attack else {
            return 0;
        };
        self.captures
            .iter()
            .map(|c| match attack.keys {
                None => c.count_resets(attack.seq),
                Some((key_a, _)) => c.count_capable_with_key(key_a),
            })
            .sum()
    }

    /// Server counter changes while the late endpoint was announced and joined.
    #[must_use]
    pub fn late_changes(&self) -> Changes {
        self.server
            .after_late
            .changes_since(&self.server.after_control)
    }

    /// Change of one server counter while the late endpoint was announced and joined.
    #[must_use]
    pub fn late_delta(&self, name: &str) -> i128 {
        self.server
            .after_late
            .delta(&self.server.after_control, name)
    }

    /// ADD_ADDRs (not echoes) announcing the late endpoint seen by the server's tcpdump.
    #[must_use]
    pub fn late_seen_by_server(&self) -> usize {
        self.scenario.late_endpoint.map_or(0, |addr| {
            self.captures
                .iter()
                .map(|c| c.count_announcing(IpAddr::V4(addr)))
                .sum()
        })
    }

    /// Server counter changes while the forged ADD_ADDRs were sent.
    #[must_use]
    pub fn forged_changes(&self) -> Changes {
        self.server
            .after_forged
            .changes_since(&self.server.before_forged)
    }

    /// Server counter changes while the positive control was sent.
    #[must_use]
    pub fn control_changes(&self) -> Changes {
        self.server
            .after_control
            .changes_since(&self.server.after_forged)
    }

    /// Change of one server counter during the forged window.
    #[must_use]
    pub fn forged_delta(&self, name: &str) -> i128 {
        self.server
            .after_forged
            .delta(&self.server.before_forged, name)
    }

    /// Change of one server counter during the control window.
    #[must_use]
    pub fn control_delta(&self, name: &str) -> i128 {
        self.server
            .after_control
            .delta(&self.server.after_forged, name)
    }

    /// Change of one server counter from start to end.
    #[must_use]
    pub fn total_delta(&self, name: &str) -> i128 {
        self.server.end.delta(&self.server.start, name)
    }

    /// Forged (bad HMAC) ADD_ADDRs seen by tcpdump on the server's interfaces.
    #[must_use]
    pub fn forged_seen_by_server(&self) -> usize {
        let addr = IpAddr::V4(self.scenario.forged_addr);
        self.captures
            .iter()
            .map(|c| c.count_announcements(self.scenario.forged_id, addr))
            .sum()
    }

    /// Positive-control ADD_ADDRs seen by tcpdump on the server's interfaces.
    #[must_use]
    pub fn control_seen_by_server(&self) -> usize {
        let addr = IpAddr::V4(self.scenario.control_addr);
        self.captures
            .iter()
            .map(|c| c.count_announcements(self.scenario.control_id, addr))
            .sum()
    }

    /// Packets tcpdump reported as dropped by the kernel, over all captures (0 = complete).
    #[must_use]
    pub fn capture_drops(&self) -> u64 {
        self.captures
            .iter()
            .filter_map(|c| c.dropped_by_kernel)
            .sum()
    }

    /// One line per capture: interface, frames, kernel drops, the ADD_ADDRs seen as `id addr`
    /// (`echo` marked), and the segments with RST or MP_CAPABLE (with its keys).
    #[must_use]
    pub fn capture_summary(&self) -> String {
        self.captures
            .iter()
            .map(|c| {
                let seen: Vec<String> = c
                    .add_addrs
                    .iter()
                    .map(|a| format!("{} {}{}", a.id, a.addr, if a.echo { " echo" } else { "" }))
                    .collect();
                let state: Vec<String> = c
                    .state_segments
                    .iter()
                    .map(|s| {
                        let keys: Vec<String> = s
                            .capable_keys
                            .iter()
                            .map(|k| k.iter().map(|b| format!("{b:02x}")).collect())
                            .collect();
                        format!(
                            "{}:{} > {}:{} seq {} flags {:#04x}{}",
                            s.src,
                            s.sport,
                            s.dst,
                            s.dport,
                            s.seq,
                            s.flags,
                            if keys.is_empty() {
                                String::new()
                            } else {
                                format!(" MP_CAPABLE keys {}", keys.join("/"))
                            }
                        )
                    })
                    .collect();
                format!(
                    "{}: {} frames, {} dropped by kernel, ADD_ADDRs [{}], RST or MP_CAPABLE [{}]",
                    c.iface,
                    c.frames,
                    c.dropped_by_kernel
                        .map_or_else(|| "?".to_owned(), |d| d.to_string()),
                    seen.join(", "),
                    state.join("; ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Genuine ADD_ADDRs (announcing the client's path-2 address) seen by the server's tcpdump.
    #[must_use]
    pub fn genuine_seen_by_server(&self) -> usize {
        let addr = IpAddr::V4(PATH2.client_addr);
        self.captures.iter().map(|c| c.count_announcing(addr)).sum()
    }
}

/// How long the client holds the connection at most (the scenario releases it earlier).
const CLIENT_HOLD: Duration = Duration::from_mins(2);
/// Settling time around the forged window so stray segments are not attributed to it.
const SETTLE: Duration = Duration::from_millis(300);
/// Pause between the attack and the forged ADD_ADDRs: long enough for the validator to have
/// acted on the attacker's segment, and for the loader's closed-subflow check (every
/// [`CLOSED_CHECK_INTERVAL`] in these runs) to have asked the kernel about a subflow the attack
/// marked closing at least twice: it must find the socket open and keep the subflow.
pub const ATTACK_SETTLE: Duration = Duration::from_millis(2500);
/// `--closed-check-interval` of the validated runs, in seconds.
pub const CLOSED_CHECK_INTERVAL: &str = "1";
/// How long the kernel-confirmed removal of a closed connection may take in these runs.
const CLOSED_REMOVAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the scenario in `lab`.
///
/// # Errors
/// When a process fails or does not answer in time. Outcomes that are merely wrong (counters
/// that did not move) are returned for the caller to judge.
pub fn run(lab: &Lab, tools: &Tools, sc: &Scenario) -> Result<Outcome> {
    run_observed(lab, tools, sc, None)
}

/// [`run`], reading the counters of `validator` (running in the server namespace) right before
/// and right after the attack, if there is one ([`Outcome::attack_stats`]).
///
/// # Errors
/// As [`run`], and when `mptcp-loader stats --json` fails.
pub fn run_observed(
    lab: &Lab,
    tools: &Tools,
    sc: &Scenario,
    validator: Option<&Validator>,
) -> Result<Outcome> {
    let server_addr = SocketAddrV4::new(PATH1.server_addr, sc.port);
    let filter = format!("tcp port {}", sc.port);
    let mut captures = Vec::new();
    for path in PATHS {
        let file = lab
            .work_dir()
            .join(format!("server-{}.pcap", path.server_iface));
        captures.push(Capture::start(
            &lab.server,
            path.server_iface,
            &file,
            &filter,
        )?);
    }
    let mut forger = Forger::start(
        &lab.client,
        &tools.peer_bin,
        PATH1.client_iface,
        PATH1.client_addr,
        server_addr,
    )?;
    let server = PeerServer::start(&lab.server, &tools.peer_bin, SocketAddr::V4(server_addr))?;

    let mut srv = Snapshots::starting(&lab.server)?;
    let mut cli = Snapshots::starting(&lab.client)?;

    let mut client = PeerClient::start(
        &lab.client,
        &tools.peer_bin,
        server.addr(),
        sc.bytes,
        CLIENT_HOLD,
    )?;
    let client_addr = client.local_addr();
    let genuine_settled = wait_for_counters(
        || lab.server.counters(),
        &srv.start,
        &[(mib::ADD_ADDR, 1), (mib::MP_JOIN_ACK_RX, 1)],
        Duration::from_secs(10),
    )?;
    let sent = client.wait_sent(Duration::from_mins(1))?;
    srv.after_genuine = lab.server.counters()?;

    thread::sleep(SETTLE);
    let forger_state = forger.state()?;
    let read_stats = || validator.map(|v| v.stats(&lab.server)).transpose();
    let (attack, attack_stats) = match sc.attack {
        Some(attack) => {
            let stats_before = read_stats()?;
            srv.before_attack = lab.server.counters()?;
            let sent = forger.attack(attack)?;
            thread::sleep(ATTACK_SETTLE);
            srv.after_attack = lab.server.counters()?;
            let stats_after = read_stats()?;
            (Some(sent), stats_before.zip(stats_after))
        }
        None => (None, None),
    };
    srv.before_forged = lab.server.counters()?;
    let bad = forger.inject(HmacKind::Bad, sc.forged_id, sc.forged_addr, sc.forged)?;
    thread::sleep(SETTLE);
    srv.after_forged = lab.server.counters()?;

    let control = if sc.control {
        let injection = forger.inject(HmacKind::Good, sc.control_id, sc.control_addr, 1)?;
        // The kernel answers an accepted ADD_ADDR with an echo; give it the time.
        wait_for_counters(
            || lab.server.counters(),
            &srv.after_forged,
            &[(mib::ADD_ADDR, 1)],
            Duration::from_secs(2),
        )?;
        thread::sleep(SETTLE);
        Some(injection)
    } else {
        None
    };
    srv.after_control = lab.server.counters()?;

    let late_settled = match sc.late_endpoint {
        Some(addr) => {
            lab.add_client_path2_addr(addr)?;
            lab.client.ip(&[
                "mptcp",
                "endpoint",
                "add",
                &addr.to_string(),
                "dev",
                PATH2.client_iface,
                "signal",
                "subflow",
            ])?;
            let settled = wait_for_counters(
                || lab.server.counters(),
                &srv.after_control,
                &[(mib::ADD_ADDR, 1), (mib::MP_JOIN_ACK_RX, 1)],
                Duration::from_secs(10),
            )?;
            thread::sleep(SETTLE);
            Some(settled)
        }
        None => None,
    };
    srv.after_late = lab.server.counters()?;

    client.release()?;
    let client_report = client.finish(sent, Duration::from_secs(30))?;
    let bytes_received = server.finish(Duration::from_secs(30))?;
    srv.end = lab.server.counters()?;
    cli.end = lab.client.counters()?;
    forger.quit();
    let captures = captures
        .into_iter()
        .map(Capture::stop)
        .collect::<Result<Vec<_>>>()?;

    Ok(Outcome {
        scenario: sc.clone(),
        client_addr,
        server: srv,
        client: cli,
        genuine_settled,
        forger_state,
        attack,
        attack_stats,
        forged: bad,
        control,
        late_settled,
        client_report,
        bytes_received,
        captures,
    })
}

/// Polls `read` until every `(counter, at least)` has risen by that much since `base`.
/// Returns whether they all did within `timeout`.
///
/// # Errors
/// When reading the counters fails.
pub fn wait_for_counters(
    mut read: impl FnMut() -> Result<Counters>,
    base: &Counters,
    wanted: &[(&str, i128)],
    timeout: Duration,
) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = read()?;
        if wanted
            .iter()
            .all(|(name, min)| now.delta(base, name) >= *min)
        {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A [`run`] with the validator (`mptcp-loader run`) on the server's interfaces, and what it
/// counted.
pub struct ValidatedRun {
    /// What the scenario observed.
    pub outcome: Outcome,
    /// `stats --json` taken after the scenario, while the loader still ran.
    pub stats: ValidatorStats,
    /// How the loader ended (SIGINT).
    pub stop: StopReport,
    /// Connections `conns` still listed once the connection had ended and the loader had had
    /// [`CLOSED_REMOVAL_TIMEOUT`] to confirm it closed with the kernel.
    pub conns_after_close: usize,
    /// Everything printed about the run: validator counters, server counter changes per phase,
    /// the forger's reports, captures, the loader's output. Added to failure messages.
    pub why: String,
}

/// Builds the lab, starts the validator in `mode` on the server (before the connection: it has
/// to see the MP_CAPABLE handshake), runs `sc`, reads `stats --json` while the validator still
/// runs, then stops it with SIGINT, and prints the figures. `None` when `test` cannot run here
/// (see [`loader_or_skip`], [`start_or_skip`]).
///
/// # Panics
/// When the lab, the scenario or the validator fails.
#[must_use]
pub fn run_validated(test: &str, tools: &Tools, mode: Mode, sc: &Scenario) -> Option<ValidatedRun> {
    let bin = loader_or_skip(test, tools.missing())?;
    let lab = Lab::new().expect("building the lab");
    let options = ["--closed-check-interval", CLOSED_CHECK_INTERVAL];
    let validator = start_or_skip(test, &lab.server, &bin, &SERVER_IFACES, mode, &options)?;
    let outcome = match run_observed(&lab, tools, sc, Some(&validator)) {
        Ok(o) => o,
        Err(err) => panic!(
            "scenario failed: {err}\nloader output:\n{}",
            validator.log()
        ),
    };
    // The connection has ended: the loader removes it once the server's kernel has no socket
    // for its subflows any more.
    let started = std::time::Instant::now();
    let conns_after_close = loop {
        let left = match validator.conns(&lab.server) {
            Ok(conns) => conns.as_array().map_or(usize::MAX, Vec::len),
            Err(err) => panic!("mptcp-loader conns --json: {err}\n{}", validator.log()),
        };
        if left == 0 || started.elapsed() > CLOSED_REMOVAL_TIMEOUT {
            break left;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let stats = match validator.stats(&lab.server) {
        Ok(s) => s,
        Err(err) => panic!(
            "mptcp-loader stats --json: {err}\nloader output:\n{}",
            validator.log()
        ),
    };
    let stop = validator.stop(&lab.server).expect("stopping the loader");
    let o = &outcome;
    let mut why = format!("validator counters: {:?}\n", stats.counters);
    why.push_str(&format!("server, genuine phase: {}\n", o.genuine_changes()));
    if let Some(attack) = &o.attack {
        why.push_str(&format!(
            "attack: {}\nserver, attack phase: {}\nvalidator, attack phase: {}\n",
            attack.detail,
            o.attack_changes(),
            attack_stat_changes(o)
        ));
    }
    why.push_str(&format!(
        "server, forged phase: {}\nserver, control phase: {}\n",
        o.forged_changes(),
        o.control_changes()
    ));
    if let Some(addr) = sc.late_endpoint {
        why.push_str(&format!(
            "server, late endpoint {addr} phase: {}\n",
            o.late_changes()
        ));
    }
    why.push_str(&format!(
        "forger: {}\nclient: {}\ncaptures:\n{}\nloader output:\n{}",
        o.forged.detail,
        o.client_report.mptcp_info,
        o.capture_summary(),
        stop.log,
    ));
    eprintln!("{why}");
    Some(ValidatedRun {
        outcome,
        stats,
        stop,
        conns_after_close,
        why,
    })
}

/// The validator counters that changed during the attack, as `name +delta` (empty without
/// [`Outcome::attack_stats`]).
fn attack_stat_changes(o: &Outcome) -> String {
    let Some((before, after)) = &o.attack_stats else {
        return String::new();
    };
    let names: BTreeSet<&String> = before
        .counters
        .keys()
        .chain(after.counters.keys())
        .collect();
    names
        .into_iter()
        .filter_map(|name| {
            let d = o.attack_stat_delta(name)?;
            (d != 0).then(|| format!("{name} {d:+}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
