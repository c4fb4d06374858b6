//! The flood benchmark's lab: the two-namespace [`Lab`] arranged so that one CPU is "the
//! receiver" and the other "the network", a live victim connection whose state is read off the
//! wire, trafgen floods built from [`mptcp_profiles`], and the measurements.
//!
//! ```text
//!  CPU 0 (sender)                                   CPU 1 (receiver)
//!  trafgen, client endpoints, harness, loader       NAPI threads of sveth1/sveth2 (SCHED_FIFO):
//!  cveth1/cveth2: TSO off, RPS -> CPU 0             XDP (validator or floor), GRO, IP, TCP,
//!                                                   MPTCP, RSTs; the server application
//! ```
//!
//! Why this shape: a veth delivers to its peer on the *sending* CPU (NAPI or backlog), so left
//! alone the receiver's work would land on trafgen's CPU. The server's veths get GRO (which gives
//! them a NAPI instance, XDP or not) and threaded NAPI; their NAPI threads are pinned to CPU 1,
//! so XDP and the whole stack run there, in threads whose CPU time the kernel measures exactly
//! (`clock_getcpuclockid`). The client's veths have TSO off, because veth only hands segments
//! of a TSO-capable sender to the peer's NAPI when an XDP program is attached, and that would
//! make the receive path differ between "validator" and "kernel only". Replies to the client
//! (RSTs, ACKs) are steered to CPU 0 with RPS. The receiver threads run SCHED_FIFO so that other
//! tenants of a shared machine cannot delay them; their CPU time does not depend on that.
//!
//! The attacks ([`Attack`]): forged ADD_ADDRs into the victim connection at one address
//! (`add_addr_forged`) and at a random (ID, address) per packet (`add_addr_random_address`, which
//! no tag cache can answer), MP_JOIN SYNs with random tokens at its port, and MP_JOIN third ACKs
//! with random HMACs on the 4-tuple of a join that the server really has pending
//! (`join_ack_forged`). For the last, [`FloodLab::open_join`] sends, before each flood, one
//! MP_JOIN SYN with the victim's genuine token from [`JOIN_ADDR`], an address no namespace holds:
//! the server's kernel answers with a SYN/ACK and keeps a request socket, the validator (when
//! attached) records the SYN's and the SYN/ACK's nonces, and the SYN/ACK reaches the client's
//! veth, where a capture reads its sequence number and timestamp, and goes no further (its
//! destination MAC [`JOIN_MAC`] is not the client's), so nothing answers it with a RST. The
//! third ACKs then carry the right seq/ack and timestamps: Linux checks the first one's HMAC,
//! resets the join, and answers every later one from the listener with a RST; the validator
//! checks at most a pending join's budget of them and drops the rest without computing.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "packet counts from rate x seconds, rounded and non-negative"
)]

pub mod cpu;
pub use mptcp_lab::endpoints;
pub mod xdp;

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use mptcp_common::counters::Counter;
use mptcp_lab::wire::{later, sniffed};

use crate::{
    capture::{read_pcap, Capture},
    counters::mib,
    error::{LabError, Result},
    lab::{Lab, PATH1, PATHS, SERVER_IFACES},
    netns::Netns,
    proc::Proc,
    validator::{Mode, Validator},
};
use mptcp_profiles::{self as profiles, Connection, Kind, Settings};

use cpu::{CpuStat, RECEIVER_CPU, SENDER_CPU};

/// Priority of the server interfaces' NAPI threads.
const NAPI_PRIORITY: i32 = 50;
/// Priority of trafgen (above the endpoints, so the offered rate holds).
const TRAFGEN_PRIORITY: &str = "30";

/// trafgen's arguments for `count` packets of the configuration `cfg` out of `iface` at `rate`
/// packets per second, from one process, without its CPU statistics.
#[must_use]
pub fn trafgen_args(cfg: &Path, iface: &str, rate: u32, count: u64) -> Vec<String> {
    vec![
        "--in".to_owned(),
        cfg.display().to_string(),
        "--out".to_owned(),
        iface.to_owned(),
        "--rate".to_owned(),
        format!("{rate}pps"),
        "--num".to_owned(),
        count.to_string(),
        "--cpus".to_owned(),
        "1".to_owned(),
        "--no-cpu-stats".to_owned(),
    ]
}
/// Priority of the genuine transfer's endpoints.
const ENDPOINT_PRIORITY: i32 = 10;
/// `MPTcpExtMPJoinNoTokenFound`: MP_JOIN SYNs whose token the kernel did not know.
pub const JOIN_NO_TOKEN: &str = "MPTcpExtMPJoinNoTokenFound";
/// `TcpOutRsts`: RSTs the kernel sent.
pub const OUT_RSTS: &str = "TcpOutRsts";

/// `MPTcpExtMPJoinAckHMacFailure`: MP_JOIN third ACKs whose HMAC the kernel found wrong.
pub const JOIN_ACK_HMAC_FAILURE: &str = "MPTcpExtMPJoinAckHMacFailure";
/// The initiator address of the pending joins that `join_ack_forged` floods: in the client's
/// path-1 subnet, held by no namespace. The server reaches it through a static neighbour entry
/// pointing at [`JOIN_MAC`].
pub const JOIN_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 99);
/// The MAC of [`JOIN_ADDR`]: not the client veth's, so the client's stack drops what the server
/// sends there (a packet for another host) instead of answering it.
pub const JOIN_MAC: [u8; 6] = [2, 0, 0, 0, 1, 0x63];

/// What the flood sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Attack {
    /// Forged ADD_ADDRs into the victim connection: right 4-tuple, in-window seq/ack, the
    /// latest timestamps, one address, wrong HMAC.
    AddAddr,
    /// The same with a random address ID, address and HMAC in every packet: every one misses
    /// the validator's tag cache.
    AddAddrRandom,
    /// MP_JOIN SYNs with random tokens at the victim's listening port.
    JoinSyn,
    /// MP_JOIN third ACKs with random HMACs on the 4-tuple of a pending join of the victim
    /// (see [`FloodLab::open_join`]).
    JoinAck,
}

impl Attack {
    /// Every attack, in report order.
    pub const ALL: [Attack; 4] = [
        Attack::AddAddr,
        Attack::AddAddrRandom,
        Attack::JoinSyn,
        Attack::JoinAck,
    ];

    /// The profile trafgen sends.
    #[must_use]
    pub fn profile(self) -> Kind {
        match self {
            Attack::AddAddr => Kind::AddAddrForged,
            Attack::AddAddrRandom => Kind::AddAddrRandomAddress,
            Attack::JoinSyn => Kind::JoinSynRandomToken,
            Attack::JoinAck => Kind::JoinAckForged,
        }
    }

    /// Name in reports.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Attack::AddAddr => "forged ADD_ADDR (wrong HMAC)",
            Attack::AddAddrRandom => "forged ADD_ADDR, random address",
            Attack::JoinSyn => "MP_JOIN SYN, random token",
            Attack::JoinAck => "MP_JOIN third ACK, pending join",
        }
    }

    /// The validator counters under which it drops these segments (their sum is its drop
    /// count): a wrong HMAC or token, or over the crypto budget without computing.
    #[must_use]
    pub fn validator_counters(self) -> &'static [Counter] {
        match self {
            Attack::AddAddr | Attack::AddAddrRandom => {
                &[Counter::AddAddrBadHmacDropped, Counter::CryptoBudgetDropped]
            }
            Attack::JoinSyn => &[Counter::JoinSynUnknownTokenDropped],
            Attack::JoinAck => &[Counter::JoinAckBadHmacDropped, Counter::CryptoBudgetDropped],
        }
    }

    /// Whether the attack is built to defeat the tag cache (a fresh tag per packet, or a check
    /// the cache does not cover).
    #[must_use]
    pub fn defeats_cache(self) -> bool {
        matches!(self, Attack::AddAddrRandom | Attack::JoinAck)
    }

    /// The issue's target for this attack: for what the cache answers and for join SYNs, the
    /// validator's cost above the XDP_DROP floor at most 1/3 of the kernel's cost above it;
    /// for floods that defeat the cache, the validator never costs more than the kernel
    /// (total CPU per packet, at most 1).
    #[must_use]
    pub fn target(self) -> Target {
        if self.defeats_cache() {
            Target {
                bound: 1.0,
                label: "<= 1",
                above_floor: false,
            }
        } else {
            Target {
                bound: 1.0 / 3.0,
                label: "<= 1/3",
                above_floor: true,
            }
        }
    }
}

/// A cost target of issue 12.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// The largest validator / kernel ratio that meets it.
    pub bound: f64,
    /// As written in reports.
    pub label: &'static str,
    /// Whether the ratio is of the costs above the XDP_DROP floor (else of the total costs).
    pub above_floor: bool,
}

/// What sits in front of the server's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Receiver {
    /// Nothing: the kernel rejects the forged segments itself.
    Kernel,
    /// `mptcp-loader run --mode enforce` on both server interfaces.
    Validator,
    /// A two-instruction XDP_DROP program on the server's veths: the cost of getting a packet
    /// to XDP.
    XdpDrop,
    /// A two-instruction XDP_PASS program on the server's veths: that, plus the kernel's own
    /// rejection.
    XdpPass,
}

impl Receiver {
    /// Name in reports.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Receiver::Kernel => "kernel only",
            Receiver::Validator => "validator (enforce)",
            Receiver::XdpDrop => "XDP_DROP floor",
            Receiver::XdpPass => "XDP_PASS floor",
        }
    }

    /// Whether genuine traffic gets through.
    #[must_use]
    pub fn passes_traffic(self) -> bool {
        self != Receiver::XdpDrop
    }

    /// Whether it must be in place before the victim connection opens (the validator learns
    /// the keys from the handshake); the others are attached after it, so the victim's
    /// handshake always reaches the server.
    #[must_use]
    pub fn sees_handshake(self) -> bool {
        self == Receiver::Validator
    }
}

/// What is attached while a receiver configuration is in place.
pub enum Attached {
    /// Nothing.
    Nothing,
    /// The loader.
    Validator(Validator),
    /// The `mptcp-flood xdp` helper holding the floor program's link.
    Floor(Proc),
}

/// The flood lab.
pub struct FloodLab {
    /// The two namespaces.
    pub lab: Lab,
    exe: PathBuf,
    loader: PathBuf,
    napi_before: BTreeSet<u32>,
    receiver_threads: BTreeSet<u32>,
    next_port: u16,
    next_join_port: u16,
    /// What [`FloodLab::attach`] last put in front of the server.
    receiver: Receiver,
    /// Held while the kernel keeps `bpf_stats` (run time per program) for this lab.
    program_stats: Option<OwnedFd>,
}

/// How the server's veths deliver packets to their NAPI thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Interrupt coalescing, emulated: after a poll that found packets, the NAPI instance waits
    /// this long before polling again (`gro_flush_timeout` with `napi_defer_hard_irqs` = 1)
    /// instead of sleeping until the next packet wakes it. `None`: every packet that finds the
    /// thread asleep wakes it.
    pub coalesce: Option<Duration>,
}

/// The victim connection: established, idle, kept open; and the profiles built from its state.
pub struct Victim {
    server: Proc,
    client: Proc,
    /// The connection as the profiles see it (client = A = sender of the forged segments).
    pub conn: Connection,
    /// Where its trafgen configurations are.
    pub dir: PathBuf,
    /// Server counter changes when one `add_addr_valid` segment was sent (`None`: not tried).
    pub control: Option<i128>,
}

/// A join the server has pending (SYN received, SYN/ACK sent, no third ACK yet), opened by
/// [`FloodLab::open_join`].
pub struct PendingJoin {
    /// The join's subflow as its initiator sends on it: [`JOIN_ADDR`] -> the victim's server,
    /// seq = ISN + 1, ack = the server's ISN + 1, TSecr = the SYN/ACK's TSval.
    pub conn: Connection,
    /// Its `join_ack_forged` trafgen configuration.
    pub cfg: PathBuf,
}

/// One flood window.
#[derive(Clone, Debug)]
pub struct FloodWindow {
    /// Segments trafgen sent.
    pub sent: u64,
    /// Segments veth dropped on the sender side because the receiver's ring was full.
    pub ring_drops: u64,
    /// Packets the receiver processed (sveth1 rx_packets).
    pub processed: u64,
    /// Wall time of the window.
    pub secs: f64,
    /// CPU time of the receiver threads (NAPI threads of the server interfaces, ksoftirqd of
    /// the receiving CPU).
    pub cpu_ns: u64,
    /// `/proc/stat` of the receiving CPU over the window.
    pub stat: CpuStat,
    /// Kernel counters that moved on the server.
    pub kernel: Vec<(String, i128)>,
    /// Segments the validator dropped, over the attack's [`Attack::validator_counters`]
    /// (validator configuration only).
    pub validator_dropped: Option<u64>,
    /// Every validator counter that moved (validator configuration only).
    pub validator: Vec<(&'static str, u64)>,
    /// Time and runs of the XDP program on the receiving veth over the window, from the
    /// kernel's `bpf_stats` (only when [`FloodLab::enable_program_stats`] was called).
    pub program: Option<ProgramRuns>,
}

/// Run time and run count of one XDP program (`bpf_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramRuns {
    /// Nanoseconds spent inside the program.
    pub run_ns: u64,
    /// Times it ran.
    pub runs: u64,
}

impl ProgramRuns {
    /// Nanoseconds per run inside the program.
    #[must_use]
    pub fn ns_per_run(&self) -> f64 {
        self.run_ns as f64 / self.runs.max(1) as f64
    }

    fn since(self, earlier: ProgramRuns) -> ProgramRuns {
        ProgramRuns {
            run_ns: self.run_ns.saturating_sub(earlier.run_ns),
            runs: self.runs.saturating_sub(earlier.runs),
        }
    }
}

impl FloodWindow {
    /// Receiver CPU ns per processed packet.
    #[must_use]
    pub fn ns_per_packet(&self) -> f64 {
        self.cpu_ns as f64 / self.processed.max(1) as f64
    }
}

/// One genuine transfer.
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// Bytes the server received.
    pub bytes: u64,
    /// Seconds from its first byte to the end.
    pub secs: f64,
    /// Packets the client's veths dropped because the receiving ring was full (genuine and
    /// forged alike), during the transfer.
    pub ring_drops: u64,
    /// Segments the client retransmitted (`TcpRetransSegs`).
    pub retransmits: i128,
}

impl Transfer {
    /// Goodput in Gbit/s.
    #[must_use]
    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs.max(1e-9) / 1e9
    }
}

fn napi_threads() -> BTreeSet<u32> {
    cpu::pids_by_comm(|c| c.starts_with("napi/"))
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Io { what, source }
}

fn read_u64(ns: &Netns, path: &str) -> Result<u64> {
    let text = ns.run(&["cat", path])?;
    text.trim()
        .parse()
        .map_err(|_| LabError::parse(path.to_owned(), text))
}

impl FloodLab {
    /// Builds the lab and arranges it (see the module docs). `exe` is the `mptcp-flood` binary
    /// (for the endpoint and floor helpers), `loader` the `mptcp-loader` binary.
    ///
    /// # Errors
    /// When the machine has fewer than two CPUs or a step fails.
    pub fn new(exe: &Path, loader: &Path, delivery: Delivery) -> Result<FloodLab> {
        if cpu::online_cpus() <= RECEIVER_CPU {
            return Err(LabError::Unexpected {
                process: "mptcp-flood".into(),
                request: "two CPUs".into(),
                line: format!("only {} CPU(s) online", cpu::online_cpus()),
            });
        }
        // The harness and every child it starts run on the sender CPU unless moved.
        cpu::pin(0, SENDER_CPU).map_err(io_err("pinning the harness to CPU 0".into()))?;
        let napi_before = napi_threads();
        let lab = Lab::new()?;
        let mut flood = FloodLab {
            lab,
            exe: exe.to_owned(),
            loader: loader.to_owned(),
            napi_before,
            receiver_threads: BTreeSet::new(),
            next_port: 20_000,
            next_join_port: 40_000,
            receiver: Receiver::Kernel,
            program_stats: None,
        };
        flood.arrange(delivery)?;
        flood.repin()?;
        Ok(flood)
    }

    fn arrange(&self, delivery: Delivery) -> Result<()> {
        // The initiator of the pending joins: the server sends to it over path 1, the client's
        // veth receives it as a frame for another host.
        self.lab.server.ip(&[
            "neigh",
            "replace",
            &JOIN_ADDR.to_string(),
            "lladdr",
            &JOIN_MAC.map(|b| format!("{b:02x}")).join(":"),
            "dev",
            PATH1.server_iface,
            "nud",
            "permanent",
        ])?;
        let sender_mask = format!("{:x}", 1u32 << SENDER_CPU);
        for path in PATHS {
            self.lab
                .client
                .run(&["ethtool", "-K", path.client_iface, "tso", "off"])?;
            self.lab.client.run(&[
                "sh",
                "-c",
                &format!(
                    "echo {sender_mask} > /sys/class/net/{}/queues/rx-0/rps_cpus",
                    path.client_iface
                ),
            ])?;
            self.lab
                .server
                .run(&["ethtool", "-K", path.server_iface, "gro", "on"])?;
            self.lab.server.run(&[
                "sh",
                "-c",
                &format!("echo 1 > /sys/class/net/{}/threaded", path.server_iface),
            ])?;
            if let Some(t) = delivery.coalesce {
                let dir = format!("/sys/class/net/{}", path.server_iface);
                self.lab.server.run(&[
                    "sh",
                    "-c",
                    &format!(
                        "echo {} > {dir}/gro_flush_timeout && echo 1 > {dir}/napi_defer_hard_irqs",
                        t.as_nanos()
                    ),
                ])?;
            }
        }
        Ok(())
    }

    /// Finds the server interfaces' NAPI threads (they are recreated when XDP comes and goes),
    /// pins them to the receiving CPU and gives them SCHED_FIFO.
    ///
    /// # Errors
    /// When no NAPI thread is found or one cannot be moved.
    pub fn repin(&mut self) -> Result<()> {
        let ours: BTreeSet<u32> = napi_threads()
            .difference(&self.napi_before)
            .copied()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| {
                    SERVER_IFACES
                        .iter()
                        .any(|i| c.starts_with(&format!("napi/{i}-")))
                })
            })
            .collect();
        if ours.is_empty() {
            return Err(LabError::Unexpected {
                process: "kernel".into(),
                request: "threaded NAPI on the server's veths".into(),
                line: "no napi/sveth* thread appeared".into(),
            });
        }
        for &pid in &ours {
            cpu::pin(pid, RECEIVER_CPU).map_err(io_err(format!("pinning NAPI thread {pid}")))?;
            cpu::set_fifo(pid, NAPI_PRIORITY)
                .map_err(io_err(format!("SCHED_FIFO for NAPI thread {pid}")))?;
        }
        let ksoftirqd = format!("ksoftirqd/{RECEIVER_CPU}");
        self.receiver_threads = ours;
        self.receiver_threads
            .extend(cpu::pids_by_comm(|c| c == ksoftirqd));
        Ok(())
    }

    /// CPU time of the receiver threads so far, in ns.
    #[must_use]
    pub fn receiver_cpu_ns(&self) -> u64 {
        self.receiver_threads
            .iter()
            .filter_map(|&pid| cpu::process_cpu_ns(pid))
            .sum()
    }

    /// Number of receiver threads measured.
    #[must_use]
    pub fn receiver_thread_count(&self) -> usize {
        self.receiver_threads.len()
    }

    fn port(&mut self) -> u16 {
        self.next_port += 1;
        self.next_port
    }

    /// Makes the kernel time every BPF program run (`BPF_ENABLE_STATS`) for the rest of the
    /// lab's life, so that each flood window reports the time spent inside the receiving XDP
    /// program. The timing itself costs two clock reads per run, on every XDP configuration.
    ///
    /// # Errors
    /// When the kernel refuses.
    pub fn enable_program_stats(&mut self) -> Result<()> {
        let fd =
            aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(|e| LabError::Unexpected {
                process: "mptcp-flood".into(),
                request: "BPF_ENABLE_STATS".into(),
                line: e.to_string(),
            })?;
        self.program_stats = Some(fd);
        Ok(())
    }

    /// Run time and count of the XDP program on the receiving veth, if stats are on and a
    /// program is attached.
    fn program_runs(&self) -> Result<Option<ProgramRuns>> {
        if self.program_stats.is_none() {
            return Ok(None);
        }
        let Some(id) = self.lab.server.xdp_prog_id(PATH1.server_iface)? else {
            return Ok(None);
        };
        Ok(aya::programs::loaded_programs()
            .filter_map(std::result::Result::ok)
            .find(|p| p.id() == id)
            .map(|p| ProgramRuns {
                run_ns: u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX),
                runs: p.run_count(),
            }))
    }

    /// Puts `receiver` in front of the server's stack.
    ///
    /// # Errors
    /// When the loader or the floor program cannot be attached.
    pub fn attach(&mut self, receiver: Receiver) -> Result<Attached> {
        let attached = match receiver {
            Receiver::Kernel => Attached::Nothing,
            Receiver::Validator => Attached::Validator(Validator::start(
                &self.lab.server,
                &self.loader,
                &SERVER_IFACES,
                Mode::Enforce,
            )?),
            Receiver::XdpDrop | Receiver::XdpPass => {
                let action = if receiver == Receiver::XdpDrop {
                    "drop"
                } else {
                    "pass"
                };
                let mut args = vec!["xdp", action];
                args.extend(SERVER_IFACES);
                let mut proc = self.lab.server.spawn("XDP floor", &self.exe, &args)?;
                proc.wait_for_prefix("ATTACHED", Duration::from_secs(10))?;
                Attached::Floor(proc)
            }
        };
        self.receiver = receiver;
        self.repin()?;
        Ok(attached)
    }

    /// Removes what [`FloodLab::attach`] put there.
    ///
    /// # Errors
    /// When the loader does not stop cleanly.
    pub fn detach(&mut self, attached: Attached) -> Result<()> {
        match attached {
            Attached::Nothing => {}
            Attached::Validator(v) => {
                let report = v.stop(&self.lab.server)?;
                if !report.still_attached.is_empty() {
                    return Err(LabError::Unexpected {
                        process: "mptcp-loader".into(),
                        request: "detach on SIGINT".into(),
                        line: format!("XDP still on {:?}", report.still_attached),
                    });
                }
            }
            Attached::Floor(proc) => drop(proc),
        }
        self.receiver = Receiver::Kernel;
        // The links go with the helper; wait until the interfaces show it.
        let deadline = Instant::now() + Duration::from_secs(5);
        for iface in SERVER_IFACES {
            while self.lab.server.xdp_prog_id(iface)?.is_some() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
        self.repin()
    }

    /// Opens the victim connection (client 198.18.1.1 -> server 198.18.1.2:port, joined by a
    /// second subflow on path 2), reads its state from a capture on the client's path-1
    /// interface, writes its profiles, and, when `control`, sends one `add_addr_valid` segment
    /// and returns how much `MPTcpExtAddAddr` moved (1 when the profile is right).
    ///
    /// # Errors
    /// When a process fails or the connection state cannot be read.
    pub fn open_victim(&mut self, control: bool) -> Result<Victim> {
        let port = self.port();
        let server_addr = SocketAddrV4::new(PATH1.server_addr, port);
        let dir = self.lab.work_dir().join(format!("victim-{port}"));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let pcap = dir.join("handshake.pcap");
        let capture = Capture::start(
            &self.lab.client,
            PATH1.client_iface,
            &pcap,
            &format!("tcp port {port}"),
        )?;
        let mut server = self.lab.server.spawn(
            "victim server",
            &self.exe,
            &["serve".to_owned(), server_addr.to_string()],
        )?;
        server.wait_for_prefix("LISTENING", Duration::from_secs(10))?;
        let before = self.lab.server.counters()?;
        let mut client = self.lab.client.spawn(
            "victim client",
            &self.exe,
            &[
                "send".to_owned(),
                server_addr.to_string(),
                "--bytes".into(),
                "1000".into(),
                "--hold".into(),
            ],
        )?;
        client.wait_for_prefix("CONNECTED", Duration::from_secs(10))?;
        client.wait_for_prefix("SENT", Duration::from_secs(10))?;
        // Wait for the second subflow, so nothing is still moving on the first.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self
            .lab
            .server
            .counters()?
            .delta(&before, mib::MP_JOIN_ACK_RX)
            < 1
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(Duration::from_millis(300));
        let report = capture.stop()?;
        let bytes = std::fs::read(&report.path)
            .map_err(io_err(format!("reading {}", report.path.display())))?;
        let conn = victim_connection(
            &read_pcap(&bytes)?,
            PATH1.client_addr,
            server_addr,
            [
                profiles::parse_mac(PATH1.client_mac).expect("lab MAC"),
                profiles::parse_mac(PATH1.server_mac).expect("lab MAC"),
            ],
        )
        .ok_or_else(|| LabError::parse("the victim's handshake capture", "no MPTCP keys"))?;
        let settings = Settings {
            count: 16,
            ..Settings::default()
        };
        profiles::write_all(&conn, &settings, &dir).map_err(|e| LabError::Io {
            what: format!("writing the victim's profiles: {e}"),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut victim = Victim {
            server,
            client,
            conn,
            dir,
            control: None,
        };
        if control {
            let before = self.lab.server.counters()?;
            let mut one = self.trafgen(&victim.cfg(Kind::AddAddrValid), 1000, 1)?;
            one.wait_exit(Duration::from_secs(10))?;
            thread::sleep(Duration::from_millis(200));
            victim.control = Some(self.lab.server.counters()?.delta(&before, mib::ADD_ADDR));
        }
        Ok(victim)
    }

    /// Opens a join of the victim connection that the server keeps pending: one MP_JOIN SYN
    /// with the victim's token (address ID 9, a fixed nonce) from [`JOIN_ADDR`] and a fresh port
    /// to the victim's server, sent by trafgen on path 1. The server's kernel must count it
    /// (`MPTcpExtMPJoinSynRx` +1) and answer with a SYN/ACK, read from a capture on the client's
    /// veth; nothing answers that SYN/ACK, so the server keeps the join pending (and, with the
    /// validator attached, so does the validator: it saw the SYN with a known token and the
    /// SYN/ACK's nonce on egress). Writes the join's `join_ack_forged` configuration: third ACKs
    /// with the right seq/ack and timestamps and random HMACs.
    ///
    /// # Errors
    /// When the SYN is not counted or no SYN/ACK comes back (three tries, each from a new port).
    pub fn open_join(&mut self, victim: &Victim) -> Result<PendingJoin> {
        let mut last = String::new();
        for _ in 0..3 {
            let port = self.join_port();
            match self.try_join(victim, port)? {
                Ok(join) => return Ok(join),
                Err(why) => last = why,
            }
            thread::sleep(Duration::from_millis(500));
        }
        Err(LabError::Unexpected {
            process: "server kernel".into(),
            request: format!("a pending MP_JOIN from {JOIN_ADDR} to {}", victim.conn.dst),
            line: last,
        })
    }

    fn join_port(&mut self) -> u16 {
        self.next_join_port = self.next_join_port.wrapping_add(1).max(40_000);
        self.next_join_port
    }

    /// A join's subflow before its SYN/ACK is known (ack 0, TSecr 0), and its folder.
    fn join_conn(victim: &Victim, port: u16) -> Result<(Connection, PathBuf)> {
        let dir = victim.dir.join(format!("join-{port}"));
        std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let isn = 0x4a01_0000u32.wrapping_add(u32::from(port).wrapping_mul(7919));
        let tsval = 3_000_000u32.wrapping_add(u32::from(port));
        let conn = Connection {
            src: SocketAddr::V4(SocketAddrV4::new(JOIN_ADDR, port)),
            dst: victim.conn.dst,
            src_mac: JOIN_MAC,
            dst_mac: victim.conn.dst_mac,
            seq: isn.wrapping_add(1),
            ack: 0,
            window: 502,
            timestamps: Some((tsval, 0)),
            key_a: victim.conn.key_a,
            key_b: victim.conn.key_b,
        };
        Ok((conn, dir))
    }

    /// Writes the `join_ack_forged` configuration of `conn` into `dir`.
    fn write_join_ack(conn: &Connection, dir: &Path) -> Result<PathBuf> {
        let cfg = dir.join(format!("{}.cfg", Kind::JoinAckForged.stem()));
        let text = profiles::trafgen_config(Kind::JoinAckForged, conn, &join_settings())
            .map_err(profile_err)?;
        std::fs::write(&cfg, text).map_err(io_err(format!("writing {}", cfg.display())))?;
        Ok(cfg)
    }

    /// One attempt of [`FloodLab::open_join`]: `Ok(Err(why))` when the server did not open it.
    fn try_join(
        &mut self,
        victim: &Victim,
        port: u16,
    ) -> Result<std::result::Result<PendingJoin, String>> {
        let (mut conn, dir) = Self::join_conn(victim, port)?;
        let nonce = (0x5eed_0000u32 | u32::from(port)).to_be_bytes();
        let syn_cfg = dir.join("join_syn.cfg");
        let syn = profiles::join_syn_config(&conn, &join_settings(), nonce).map_err(profile_err)?;
        std::fs::write(&syn_cfg, syn).map_err(io_err(format!("writing {}", syn_cfg.display())))?;
        let pcap = dir.join("join.pcap");
        let capture = Capture::start(
            &self.lab.client,
            PATH1.client_iface,
            &pcap,
            &format!("tcp and host {JOIN_ADDR} and port {port}"),
        )?;
        let before = self.lab.server.counters()?;
        let mut one = self.trafgen(&syn_cfg, 1000, 1)?;
        one.wait_exit(Duration::from_secs(10))?;
        thread::sleep(Duration::from_millis(200));
        let opened = self
            .lab
            .server
            .counters()?
            .delta(&before, mib::MP_JOIN_SYN_RX);
        let report = capture.stop()?;
        let bytes = std::fs::read(&report.path)
            .map_err(io_err(format!("reading {}", report.path.display())))?;
        let synack = read_pcap(&bytes)?
            .iter()
            .filter_map(|f| sniffed(f, f.len()))
            .find(|seg| {
                seg.src == (PATH1.server_addr, victim.conn.dst.port())
                    && seg.dst.1 == port
                    && seg.flags & 0x12 == 0x12
            });
        let Some(synack) = synack else {
            return Ok(Err(format!(
                "no SYN/ACK to {JOIN_ADDR}:{port} ({} frames captured; {} moved by {opened})",
                report.frames,
                mib::MP_JOIN_SYN_RX
            )));
        };
        if opened != 1 {
            return Ok(Err(format!(
                "{} moved by {opened}, expected 1",
                mib::MP_JOIN_SYN_RX
            )));
        }
        conn.ack = synack.seq.wrapping_add(1);
        let tsval = conn.timestamps.map_or(0, |(v, _)| v);
        conn.timestamps = Some((tsval, synack.timestamps.map_or(0, |(v, _)| v)));
        let cfg = Self::write_join_ack(&conn, &dir)?;
        Ok(Ok(PendingJoin { conn, cfg }))
    }

    /// The trafgen configuration that floods `victim` with `attack`: the victim's own
    /// profile, or for [`Attack::JoinAck`] that of a join opened for it now. Behind the
    /// XDP_DROP floor nothing reaches the server, so no join can be opened: the third ACKs then
    /// go to the 4-tuple of a join never sent (the same frames but for seq/ack and TSecr), which
    /// XDP_DROP drops unread like any other.
    ///
    /// # Errors
    /// When the join cannot be opened.
    pub fn attack_cfg(&mut self, victim: &Victim, attack: Attack) -> Result<PathBuf> {
        match attack {
            Attack::JoinAck if self.receiver.passes_traffic() => Ok(self.open_join(victim)?.cfg),
            Attack::JoinAck => {
                let port = self.join_port();
                let (conn, dir) = Self::join_conn(victim, port)?;
                Self::write_join_ack(&conn, &dir)
            }
            _ => Ok(victim.cfg(attack.profile())),
        }
    }

    /// Starts trafgen on the client's path-1 interface: `count` packets of `cfg` at `rate`
    /// packets per second, one process on the sender CPU, SCHED_FIFO.
    ///
    /// # Errors
    /// When trafgen cannot be started.
    pub fn trafgen(&self, cfg: &Path, rate: u32, count: u64) -> Result<Proc> {
        let mut args = vec![
            "-f".to_owned(),
            TRAFGEN_PRIORITY.to_owned(),
            "trafgen".to_owned(),
        ];
        args.extend(trafgen_args(cfg, PATH1.client_iface, rate, count));
        args.push("--notouch-irq".to_owned());
        self.lab.client.spawn("trafgen", "chrt", &args)
    }

    fn validator_counts(attached: &Attached, ns: &Netns) -> Result<Option<Vec<u64>>> {
        match attached {
            Attached::Validator(v) => {
                let stats = v.stats(ns)?;
                Ok(Some(Counter::ALL.iter().map(|c| stats.get(*c)).collect()))
            }
            _ => Ok(None),
        }
    }

    /// Floods the victim with `attack` at `rate` for `duration` and measures the receiver.
    ///
    /// # Errors
    /// When trafgen fails or a counter cannot be read.
    pub fn flood(
        &mut self,
        victim: &Victim,
        attached: &Attached,
        attack: Attack,
        rate: u32,
        duration: Duration,
    ) -> Result<FloodWindow> {
        let rx_path = format!(
            "/sys/class/net/{}/statistics/rx_packets",
            PATH1.server_iface
        );
        let drop_path = format!(
            "/sys/class/net/{}/statistics/tx_dropped",
            PATH1.client_iface
        );
        let count = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
        let cfg = self.attack_cfg(victim, attack)?;
        let (k0, v0, prog0) = (
            self.lab.server.counters()?,
            Self::validator_counts(attached, &self.lab.server)?,
            self.program_runs()?,
        );
        let (rx0, drops0) = (
            read_u64(&self.lab.server, &rx_path)?,
            read_u64(&self.lab.client, &drop_path)?,
        );
        let (cpu0, stat0, t0) = (
            self.receiver_cpu_ns(),
            CpuStat::read(RECEIVER_CPU),
            Instant::now(),
        );
        let mut trafgen = self.trafgen(&cfg, rate, count)?;
        let status = trafgen.wait_exit(duration * 3 + Duration::from_secs(10))?;
        // Let the receiver finish what is queued.
        thread::sleep(Duration::from_millis(50));
        let (cpu1, stat1, secs) = (
            self.receiver_cpu_ns(),
            CpuStat::read(RECEIVER_CPU),
            t0.elapsed().as_secs_f64(),
        );
        if !status.success() {
            return Err(LabError::Unexpected {
                process: "trafgen".into(),
                request: format!("{count} packets at {rate} pps"),
                line: trafgen.log(),
            });
        }
        let (rx1, drops1) = (
            read_u64(&self.lab.server, &rx_path)?,
            read_u64(&self.lab.client, &drop_path)?,
        );
        let k1 = self.lab.server.counters()?;
        let v1 = Self::validator_counts(attached, &self.lab.server)?;
        let program = prog0
            .zip(self.program_runs()?)
            .map(|(before, after)| after.since(before));
        let kernel = [
            mib::TCP_IN_SEGS,
            OUT_RSTS,
            JOIN_NO_TOKEN,
            mib::ADD_ADDR,
            JOIN_ACK_HMAC_FAILURE,
        ]
        .iter()
        .map(|name| ((*name).to_owned(), k1.delta(&k0, name)))
        .filter(|(_, d)| *d != 0)
        .collect();
        let moved: Vec<(Counter, u64)> = match (v0, v1) {
            (Some(a), Some(b)) => Counter::ALL
                .iter()
                .zip(a.iter().zip(&b))
                .map(|(c, (a, b))| (*c, b.saturating_sub(*a)))
                .filter(|(_, d)| *d != 0)
                .collect(),
            _ => Vec::new(),
        };
        let validator_dropped = matches!(attached, Attached::Validator(_)).then(|| {
            moved
                .iter()
                .filter(|(c, _)| attack.validator_counters().contains(c))
                .map(|(_, d)| *d)
                .sum::<u64>()
        });
        Ok(FloodWindow {
            sent: count,
            ring_drops: drops1.saturating_sub(drops0),
            processed: rx1.saturating_sub(rx0),
            secs,
            cpu_ns: cpu1.saturating_sub(cpu0),
            stat: stat1.since(&stat0),
            kernel,
            validator_dropped,
            validator: moved.into_iter().map(|(c, d)| (c.name(), d)).collect(),
            program,
        })
    }

    /// The receiver's `/proc/stat` and thread CPU time over `duration` with no flood.
    #[must_use]
    pub fn idle(&self, duration: Duration) -> (CpuStat, u64, f64) {
        let (cpu0, stat0, t0) = (
            self.receiver_cpu_ns(),
            CpuStat::read(RECEIVER_CPU),
            Instant::now(),
        );
        thread::sleep(duration);
        (
            CpuStat::read(RECEIVER_CPU).since(&stat0),
            self.receiver_cpu_ns().saturating_sub(cpu0),
            t0.elapsed().as_secs_f64(),
        )
    }

    /// A genuine MPTCP transfer from the client to a fresh server for `duration`, optionally
    /// while `flood` (victim, attack, rate) runs. The server application runs on the receiving
    /// CPU, the client on the sender CPU, both SCHED_FIFO below the NAPI threads and trafgen.
    ///
    /// # Errors
    /// When an endpoint fails.
    pub fn transfer(
        &mut self,
        duration: Duration,
        flood: Option<(&Victim, Attack, u32)>,
    ) -> Result<Transfer> {
        let flood = match flood {
            Some((victim, attack, rate)) => Some((self.attack_cfg(victim, attack)?, rate)),
            None => None,
        };
        let port = self.port();
        let addr = SocketAddrV4::new(PATH1.server_addr, port);
        let mut server = self.lab.server.spawn(
            "transfer server",
            &self.exe,
            &["serve".to_owned(), addr.to_string()],
        )?;
        server.wait_for_prefix("LISTENING", Duration::from_secs(10))?;
        cpu::pin(server.pid(), RECEIVER_CPU)
            .map_err(io_err("pinning the transfer server".into()))?;
        cpu::set_fifo(server.pid(), ENDPOINT_PRIORITY)
            .map_err(io_err("SCHED_FIFO for the transfer server".into()))?;
        let drops_before = self.ring_drops()?;
        let client_before = self.lab.client.counters()?;
        let lead = Duration::from_millis(500);
        let mut trafgen = match flood {
            Some((cfg, rate)) => {
                let secs = (duration + lead * 3).as_secs_f64();
                let count = (f64::from(rate) * secs).round() as u64;
                let t = self.trafgen(&cfg, rate, count)?;
                thread::sleep(lead);
                Some(t)
            }
            None => None,
        };
        let mut client = self.lab.client.spawn(
            "transfer client",
            &self.exe,
            &[
                "send".to_owned(),
                addr.to_string(),
                "--seconds".into(),
                format!("{:.3}", duration.as_secs_f64()),
            ],
        )?;
        cpu::set_fifo(client.pid(), ENDPOINT_PRIORITY)
            .map_err(io_err("SCHED_FIFO for the transfer client".into()))?;
        let line = server.wait_for_prefix("RECEIVED", duration + Duration::from_mins(1))?;
        client.wait_exit(Duration::from_secs(30))?;
        if let Some(t) = trafgen.as_mut() {
            t.wait_exit(duration + Duration::from_secs(30))?;
        }
        let ring_drops = self.ring_drops()?.saturating_sub(drops_before);
        let retransmits = self
            .lab
            .client
            .counters()?
            .delta(&client_before, "TcpRetransSegs");
        let mut words = line.split_whitespace();
        let bytes = words.next().and_then(|w| w.parse().ok());
        let secs = words.next().and_then(|w| w.parse().ok());
        match (bytes, secs) {
            (Some(bytes), Some(secs)) => Ok(Transfer {
                bytes,
                secs,
                ring_drops,
                retransmits,
            }),
            _ => Err(LabError::parse("the transfer server's report", line)),
        }
    }

    /// Packets dropped so far by the client's veths because the server side's ring was full.
    fn ring_drops(&self) -> Result<u64> {
        let mut total = 0;
        for path in PATHS {
            total += read_u64(
                &self.lab.client,
                &format!("/sys/class/net/{}/statistics/tx_dropped", path.client_iface),
            )?;
        }
        Ok(total)
    }

    /// The loader's process CPU time (user + system, ns), if a validator runs in the server
    /// namespace.
    #[must_use]
    pub fn loader_cpu_ns(&self) -> Option<u64> {
        let ns_inode = std::fs::metadata(self.lab.server.path())
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))?;
        cpu::pids_by_comm(|c| c == "mptcp-loader")
            .into_iter()
            .find(|pid| {
                std::fs::metadata(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ns_inode)
            })
            .and_then(cpu::process_cpu_ns)
    }
}

impl Victim {
    /// The trafgen configuration of `kind` for this connection.
    #[must_use]
    pub fn cfg(&self, kind: Kind) -> PathBuf {
        self.dir.join(format!("{}.cfg", kind.stem()))
    }

    /// Closes the connection (the client closes, the server reads the end).
    pub fn close(mut self) {
        let _ = self.client.send_line("close");
        let _ = self
            .server
            .wait_for_prefix("RECEIVED", Duration::from_secs(10));
        let _ = self.client.wait_exit(Duration::from_secs(10));
    }
}

/// What the join profiles are written with.
fn join_settings() -> Settings {
    Settings {
        count: 16,
        ..Settings::default()
    }
}

fn profile_err(e: profiles::ProfileError) -> LabError {
    LabError::Io {
        what: format!("writing the join's profiles: {e}"),
        source: std::io::Error::other(e),
    }
}

/// Follows the initial subflow `client -> server` through captured frames (both directions) and
/// returns it as the client sends on it at the end: its latest sequence, acknowledgement,
/// window and timestamps, and both MP_CAPABLE keys (`None` without them). `macs` are the
/// client's and the server's.
#[must_use]
pub fn victim_connection(
    frames: &[Vec<u8>],
    client: Ipv4Addr,
    server: SocketAddrV4,
    macs: [[u8; 6]; 2],
) -> Option<Connection> {
    const SYN: u8 = 0x02;
    const FIN: u8 = 0x01;
    const ACK: u8 = 0x10;
    let (mut snd_nxt, mut rcv_nxt) = (None, None);
    let (mut tsval, mut tsecr) = (None, None);
    let (mut sport, mut window) = (0, 0);
    let mut keys = None;
    for seg in frames.iter().filter_map(|f| sniffed(f, f.len())) {
        let to_server = seg.src.0 == client && seg.dst.1 == server.port();
        let to_client = seg.src == (*server.ip(), server.port());
        if !(to_server || to_client) {
            continue;
        }
        let end = seg
            .seq
            .wrapping_add(seg.payload)
            .wrapping_add(u32::from(seg.flags & SYN != 0))
            .wrapping_add(u32::from(seg.flags & FIN != 0));
        if to_server {
            sport = seg.src.1;
            window = seg.window;
            snd_nxt = later(snd_nxt, end);
            if seg.flags & ACK != 0 {
                rcv_nxt = later(rcv_nxt, seg.ack);
            }
            if let Some((v, _)) = seg.timestamps {
                tsval = later(tsval, v);
            }
            if keys.is_none() {
                keys = seg.capable_keys;
            }
        } else {
            rcv_nxt = later(rcv_nxt, end);
            if seg.flags & ACK != 0 {
                snd_nxt = later(snd_nxt, seg.ack);
            }
            if let Some((v, _)) = seg.timestamps {
                tsecr = later(tsecr, v);
            }
        }
    }
    let (key_a, key_b) = keys?;
    Some(Connection {
        src: SocketAddr::V4(SocketAddrV4::new(client, sport)),
        dst: SocketAddr::V4(server),
        src_mac: macs[0],
        dst_mac: macs[1],
        seq: snd_nxt?,
        ack: rcv_nxt?,
        window,
        timestamps: tsval.zip(tsecr),
        key_a,
        key_b,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mptcp_common::testing::Frame;

    fn seg(
        from_client: bool,
        seq: u32,
        ack: u32,
        flags: u8,
        opts: &[u8],
        payload: usize,
    ) -> Vec<u8> {
        let mut f = Frame::v4(opts);
        f.src[..4].copy_from_slice(&[198, 18, 1, 1]);
        f.dst[..4].copy_from_slice(&[198, 18, 1, 2]);
        f.ports = (40_000, 10_000);
        f.flags = flags;
        f.payload = vec![0; payload];
        if !from_client {
            f = f.reversed(opts);
        }
        let mut bytes = f.bytes();
        bytes[14 + 20 + 4..14 + 20 + 8].copy_from_slice(&seq.to_be_bytes());
        bytes[14 + 20 + 8..14 + 20 + 12].copy_from_slice(&ack.to_be_bytes());
        bytes
    }

    #[test]
    fn snapshot_follows_both_directions() {
        let ts =
            |v: u32, e: u32| [&[1u8, 1, 8, 10][..], &v.to_be_bytes(), &e.to_be_bytes()].concat();
        let mpc = crate::mptcp_frames::mpc_third_ack(&[1; 8], &[2; 8]);
        let frames = vec![
            seg(true, 100, 0, 0x02, &ts(10, 0), 0),
            seg(false, 500, 101, 0x12, &ts(70, 10), 0),
            seg(true, 101, 501, 0x10, &[ts(11, 70), mpc].concat(), 0),
            seg(true, 101, 501, 0x18, &ts(12, 70), 1000),
            seg(false, 501, 1101, 0x10, &ts(71, 12), 0),
        ];
        let server = SocketAddrV4::new(Ipv4Addr::new(198, 18, 1, 2), 10_000);
        let client = Ipv4Addr::new(198, 18, 1, 1);
        let macs = [[2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2]];
        let s = victim_connection(&frames, client, server, macs).unwrap();
        assert_eq!((s.src.port(), s.seq, s.ack), (40_000, 1101, 501));
        assert_eq!(s.timestamps, Some((12, 71)));
        assert_eq!((s.key_a, s.key_b), ([1; 8], [2; 8]));
        assert!(victim_connection(&frames[..2], client, server, macs).is_none());
    }
}
