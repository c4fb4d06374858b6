//! Forges MPTCP MP_JOIN handshakes against a live connection's server, from the client side
//! (`mptcp-peer forge-join`). Runs in the client namespace, as root.
//!
//! It sniffs every interface of the namespace (one unbound packet socket) for two things:
//!
//! - the MP_CAPABLE third ACK (or MPC + data) of the connection CLIENT -> SERVER:PORT, which
//!   carries both keys in clear: key A (client) and key B (server). The server's token is
//!   SHA-256(key B)[0..4], the client's SHA-256(key A)[0..4];
//! - SYN/ACKs with MP_JOIN from SERVER:PORT to SRC, the answers to its own forged SYNs.
//!
//! SRC is an address the client kernel does not own (the server has a static neighbour entry for
//! it pointing at the client's interface): the server's SYN/ACKs and RSTs reach the wire and this
//! sniffer, and the client kernel drops them silently (not its address, no forwarding) instead of
//! answering with a RST. Frames leave TX_IFACE from SRC_MAC to DST_MAC.
//!
//! Commands, one a line ([`JoinForger::command`]):
//!
//! ```text
//! syn-unknown <count>
//!     <count> SYNs with MP_JOIN carrying random tokens that name neither key of the
//!     connection (a blind join), each from its own source port. Answers
//!     `SENT n=<count> kind=syn-unknown-token ...`.
//! join <bad|good> <count>
//!     <count> join handshakes, one after the other: a SYN with MP_JOIN and the server's right
//!     token, then, once the server's SYN/ACK has been sniffed (up to 3 s), the third ACK with
//!     MP_JOIN whose 160-bit HMAC is random ("bad") or right ("good", computed from the
//!     sniffed keys and both nonces). After a "good" third ACK the forger waits 200 ms and
//!     resets the subflow it opened. Answers
//!     `SENT n=<count> kind=join-<bad|good> syns=<n> synacks=<n> synack_hmac_ok=<n>
//!     acks=<n> rsts=<n> ...` (synacks/acks: handshakes that got a SYN/ACK and the third ACK
//!     sent for them).
//! state
//!     Answers `STATE keys=<yes|no> token_a=<hex> token_b=<hex> ...`.
//! quit  (or end of input)
//! ```
//!
//! `ERR <reason>` answers a command that could not run. `READY` is printed once sniffing.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use mptcp_common::packet::{Join, TCP_ACK, TCP_RST, TCP_SYN};

use crate::{
    forge_add_addr::{hex, lock, Target, SNAP, SNIFF_POLL},
    mptcp_frames::{hmac_sha256, join_ack, join_syn, token},
    wire::{ipv4_frame, random_bytes, random_u32, sniffed, PacketSocket, Segment, Sniffed},
};

/// How long a forged SYN waits for the server's SYN/ACK.
const SYNACK_WAIT: Duration = Duration::from_secs(3);
/// How long a subflow opened by a good third ACK lives before the forger resets it.
const GOOD_ACK_HOLD: Duration = Duration::from_millis(200);
/// Between two blind SYNs.
const BLIND_SYN_GAP: Duration = Duration::from_millis(10);
/// Address ID the forged joins announce for themselves.
const FORGED_ADDR_ID: u8 = 7;
/// What Linux itself advertises on the lab's veths.
const MSS_OPTION: [u8; 4] = [2, 4, 0x05, 0xb4];
const WINDOW: u16 = 64240;

/// Which HMAC the forged third ACKs carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckHmac {
    /// 20 random bytes: what someone who did not see the keys can send.
    Bad,
    /// The right HMAC (from the sniffed keys and both nonces).
    Good,
}

impl AckHmac {
    /// The word of the `join` command.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            AckHmac::Bad => "bad",
            AckHmac::Good => "good",
        }
    }
}

/// Where forged frames come from and go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The interface they leave by.
    pub tx_iface: String,
    /// Their source address, which the client kernel does not own.
    pub addr: Ipv4Addr,
    /// Their Ethernet source.
    pub mac: [u8; 6],
    /// Their Ethernet destination (the server's interface).
    pub dst_mac: [u8; 6],
}

/// A SYN/ACK answering a forged SYN: the server's ISN, truncated HMAC and nonce.
#[derive(Clone, Copy)]
struct SynAck {
    isn: u32,
    hmac: [u8; 8],
    nonce: [u8; 4],
}

/// What the sniffer learned: the connection's keys and the SYN/ACKs to the forged joins.
#[derive(Default)]
struct Learned {
    conn_sport: Option<u16>,
    /// Key A (client), key B (server).
    keys: Option<([u8; 8], [u8; 8])>,
    /// Forged source port -> the SYN/ACK that answered it (the first one).
    synacks: HashMap<u16, SynAck>,
}

impl Learned {
    fn observe(&mut self, target: &Target, forged_src: Ipv4Addr, p: &Sniffed) -> bool {
        if p.src.0 == target.client && p.dst == (target.server, target.port) {
            if let Some(keys) = p.capable_keys {
                if self.conn_sport != Some(p.src.1) {
                    self.conn_sport = Some(p.src.1);
                    self.keys = Some(keys);
                    return true;
                }
            }
        } else if p.src == (target.server, target.port)
            && p.dst.0 == forged_src
            && p.flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK
        {
            if let Some(Join::SynAck { hmac, nonce, .. }) = p.join {
                self.synacks.entry(p.dst.1).or_insert(SynAck {
                    isn: p.seq,
                    hmac,
                    nonce,
                });
                return true;
            }
        }
        false
    }

    fn describe(&self) -> String {
        match (self.keys, self.conn_sport) {
            (Some((a, b)), Some(sport)) => format!(
                "keys=yes conn_sport={sport} token_a={} token_b={}",
                hex(&token(&a)),
                hex(&token(&b))
            ),
            _ => "keys=no".to_owned(),
        }
    }
}

/// Sniffs for the connection's keys and forges join handshakes against its server.
pub struct JoinForger {
    target: Target,
    source: Source,
    learned: Arc<(Mutex<Learned>, Condvar)>,
    tx: PacketSocket,
    used_ports: Mutex<HashSet<u16>>,
    stop: Arc<AtomicBool>,
    sniffer: Option<JoinHandle<()>>,
}

impl JoinForger {
    /// Starts sniffing every interface of the calling thread's namespace for `target`; forged
    /// frames come from `source`.
    ///
    /// # Errors
    /// When the packet sockets cannot be opened (not root, no such interface).
    pub fn start(target: Target, source: Source) -> io::Result<JoinForger> {
        let rx = PacketSocket::sniffer(None, SNIFF_POLL)?;
        let tx = PacketSocket::sender(&source.tx_iface)?;
        let learned = Arc::new((Mutex::new(Learned::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let sniffer = {
            let (learned, stop, forged_src) =
                (Arc::clone(&learned), Arc::clone(&stop), source.addr);
            thread::spawn(move || {
                let mut buf = [0u8; SNAP];
                while !stop.load(Ordering::Relaxed) {
                    match rx.recv(&mut buf) {
                        Ok(Some((n, wire))) => {
                            let Some(p) = sniffed(&buf[..n], wire) else {
                                continue;
                            };
                            if lock(&learned.0).observe(&target, forged_src, &p) {
                                learned.1.notify_all();
                            }
                        }
                        Ok(None) => {}
                        Err(_) => return,
                    }
                }
            })
        };
        Ok(JoinForger {
            target,
            source,
            learned,
            tx,
            used_ports: Mutex::new(HashSet::new()),
            stop,
            sniffer: Some(sniffer),
        })
    }

    /// `STATE ...`: what has been learned.
    #[must_use]
    pub fn state(&self) -> String {
        format!("STATE {}", lock(&self.learned.0).describe())
    }

    fn keys(&self) -> Option<([u8; 8], [u8; 8])> {
        lock(&self.learned.0).keys
    }

    /// A source port no forged join has used yet.
    fn fresh_port(&self) -> u16 {
        let mut used = lock(&self.used_ports);
        loop {
            let port = 20000 + u16::from_be_bytes(random_bytes()) % 40000;
            if used.insert(port) {
                return port;
            }
        }
    }

    fn send(&self, sport: u16, header: (u8, u32, u32), options: &[u8]) -> io::Result<()> {
        let (flags, seq, ack) = header;
        let seg = Segment {
            macs: (self.source.dst_mac, self.source.mac),
            src: (self.source.addr, sport),
            dst: (self.target.server, self.target.port),
            seq,
            ack,
            flags,
            window: WINDOW,
        };
        self.tx.send(&ipv4_frame(&seg, options, &[]).wire_bytes())
    }

    /// A SYN with MSS 1460 and a 12-byte MP_JOIN (B=0, address ID, token, nonce).
    fn syn(&self, sport: u16, isn: u32, token: &[u8; 4], nonce: &[u8; 4]) -> io::Result<()> {
        let options = [&MSS_OPTION[..], &join_syn(FORGED_ADDR_ID, token, nonce)].concat();
        self.send(sport, (TCP_SYN, isn, 0), &options)
    }

    fn wait_synack(&self, sport: u16) -> Option<SynAck> {
        let deadline = Instant::now() + SYNACK_WAIT;
        let (learned, cond) = &*self.learned;
        let mut guard = lock(learned);
        loop {
            if let Some(answer) = guard.synacks.get(&sport) {
                return Some(*answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            guard = cond
                .wait_timeout(guard, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// `count` SYNs with MP_JOIN and random tokens (none of the connection's two). The answer
    /// line.
    ///
    /// # Errors
    /// A reason, when a send failed.
    pub fn syn_unknown(&self, count: u32) -> Result<String, String> {
        let keys = self.keys();
        let known: Vec<[u8; 4]> = keys.map_or_else(Vec::new, |(a, b)| vec![token(&a), token(&b)]);
        let mut tokens = Vec::new();
        for _ in 0..count {
            let forged = loop {
                let t: [u8; 4] = random_bytes();
                if !known.contains(&t) {
                    break t;
                }
            };
            tokens.push(hex(&forged));
            self.syn(self.fresh_port(), random_u32(), &forged, &random_bytes())
                .map_err(|e| e.to_string())?;
            thread::sleep(BLIND_SYN_GAP);
        }
        Ok(format!(
            "SENT n={count} kind=syn-unknown-token keys_known={} tokens={}",
            if keys.is_some() { "yes" } else { "no" },
            tokens.join(",")
        ))
    }

    /// `count` join handshakes with the server's right token and a `kind` third ACK. The
    /// answer line.
    ///
    /// # Errors
    /// A reason, when the keys were not sniffed or a send failed.
    pub fn join(&self, kind: AckHmac, count: u32) -> Result<String, String> {
        let (key_a, key_b) = self
            .keys()
            .ok_or("keys unknown (MP_CAPABLE third ACK not seen)")?;
        let server_token = token(&key_b);
        let (mut syns, mut synacks, mut synack_ok, mut acks, mut rsts) = (0, 0, 0, 0, 0);
        let mut ports = Vec::new();
        let io = |e: io::Error| e.to_string();
        for _ in 0..count {
            let sport = self.fresh_port();
            let isn = random_u32();
            let nonce_a: [u8; 4] = random_bytes();
            self.syn(sport, isn, &server_token, &nonce_a).map_err(io)?;
            syns += 1;
            ports.push(sport.to_string());
            let Some(answer) = self.wait_synack(sport) else {
                continue;
            };
            synacks += 1;
            // SYN/ACK, sent by the server (B): HMAC(Key-B || Key-A, R-B || R-A), leftmost 64 bits.
            let expected = hmac_sha256(&key_b, &key_a, &[answer.nonce, nonce_a].concat());
            if expected[..8] == answer.hmac {
                synack_ok += 1;
            }
            // Third ACK, sent by us as the client (A): HMAC(Key-A || Key-B, R-A || R-B), 160 bits.
            let right = join_ack(&key_a, &key_b, &nonce_a, &answer.nonce);
            let option = match kind {
                AckHmac::Good => right,
                AckHmac::Bad => {
                    let mut forged = right.clone();
                    while forged == right {
                        forged[4..].copy_from_slice(&random_bytes::<20>());
                    }
                    forged
                }
            };
            let seq = isn.wrapping_add(1);
            self.send(sport, (TCP_ACK, seq, answer.isn.wrapping_add(1)), &option)
                .map_err(io)?;
            acks += 1;
            if kind == AckHmac::Good {
                // The server now holds an established subflow nobody serves: take it down again.
                thread::sleep(GOOD_ACK_HOLD);
                self.send(sport, (TCP_RST, seq, 0), &[]).map_err(io)?;
                rsts += 1;
            }
        }
        Ok(format!(
            "SENT n={count} kind=join-{} syns={syns} synacks={synacks} \
             synack_hmac_ok={synack_ok} acks={acks} rsts={rsts} token={} ports={}",
            kind.word(),
            hex(&server_token),
            ports.join(",")
        ))
    }

    /// Obeys one command line; its answer, or `None` for `quit`.
    #[must_use]
    pub fn command(&self, line: &str) -> Option<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let count = |w: &str| w.parse::<u32>().map_err(|e| format!("{w}: {e}"));
        let answer = match words.as_slice() {
            ["quit"] => return None,
            [] => return Some(String::new()),
            ["state"] => Ok(self.state()),
            ["syn-unknown", n] => count(n).and_then(|n| self.syn_unknown(n)),
            ["syn-unknown", ..] => Err("usage: syn-unknown <count>".to_owned()),
            ["join", "bad", n] => count(n).and_then(|n| self.join(AckHmac::Bad, n)),
            ["join", "good", n] => count(n).and_then(|n| self.join(AckHmac::Good, n)),
            ["join", ..] => Err("usage: join <bad|good> <count>".to_owned()),
            [other, ..] => Err(format!("unknown command {other:?}")),
        };
        Some(answer.unwrap_or_else(|e| format!("ERR {e}")))
    }
}

impl Drop for JoinForger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sniffer) = self.sniffer.take() {
            let _ = sniffer.join();
        }
    }
}
