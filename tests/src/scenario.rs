//! The traffic-and-forgery scenario shared by the baseline test, the validator e2e test and the
//! demo.
//!
//! 1. tcpdump on both server interfaces; the forger sniffing the client's path-1 interface.
//! 2. The MPTCP server listens on 198.18.1.2:`port`; the client connects and sends `bytes`.
//! 3. Genuine: the client announces 198.18.2.1 (ADD_ADDR id 1) and joins a subflow from it.
//!    Waits until the server counted the ADD_ADDR and the join (up to 10 s).
//! 4. Forged: `forged` ADD_ADDRs with random HMACs (id 9, 198.18.3.66) into the live
//!    connection. Then, optionally, one positive control with the right HMAC (id 10,
//!    198.18.3.67), proving that exactly the same framing is accepted by the kernel.
//! 5. The client closes; byte counts, counter snapshots and what tcpdump saw are returned.
//!
//! Whoever runs a validator starts it before calling [`run`] (it has to see the handshake).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    thread,
    time::{Duration, Instant},
};

use crate::{
    capture::{Capture, CaptureReport},
    counters::{mib, Changes, Counters},
    error::Result,
    forger::{Forger, HmacKind, Injection},
    lab::{Lab, PATH1, PATH2, PATHS},
    netns::Netns,
    peers::{ClientReport, PeerClient, PeerServer},
    tools::Tools,
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
    /// Right before the forged ADD_ADDRs.
    pub before_forged: Counters,
    /// Right after them.
    pub after_forged: Counters,
    /// After the positive control (same as `after_forged` without one).
    pub after_control: Counters,
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
    /// The forged (bad HMAC) injection.
    pub forged: Injection,
    /// The positive control, if sent.
    pub control: Option<Injection>,
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

    /// One line per capture: interface, frames, kernel drops, and the ADD_ADDRs seen as
    /// `id addr` (`echo` marked).
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
                format!(
                    "{}: {} frames, {} dropped by kernel, ADD_ADDRs [{}]",
                    c.iface,
                    c.frames,
                    c.dropped_by_kernel
                        .map_or_else(|| "?".to_owned(), |d| d.to_string()),
                    seen.join(", ")
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
const CLIENT_HOLD: Duration = Duration::from_secs(120);
/// Settling time around the forged window so stray segments are not attributed to it.
const SETTLE: Duration = Duration::from_millis(300);

/// Runs the scenario in `lab`.
///
/// # Errors
/// When a process fails or does not answer in time. Outcomes that are merely wrong (counters
/// that did not move) are returned for the caller to judge.
pub fn run(lab: &Lab, tools: &Tools, sc: &Scenario) -> Result<Outcome> {
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
        &tools.python,
        &tools.forger_script,
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
    let sent = client.wait_sent(Duration::from_secs(60))?;
    srv.after_genuine = lab.server.counters()?;

    thread::sleep(SETTLE);
    let forger_state = forger.state()?;
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
        forged: bad,
        control,
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
