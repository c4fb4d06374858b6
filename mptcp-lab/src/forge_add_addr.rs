//! Forges MPTCP ADD_ADDR segments (and state-changing segments) into a live connection, from the
//! client side (`mptcp-peer forge-add-addr`, or [`AddAddrForger`] in this process after
//! [`crate::netns::Netns::enter`]). Runs in the client namespace, as root.
//!
//! It sniffs the interface (both directions) for the connection between CLIENT and SERVER:PORT
//! and keeps the state of its initial subflow, seen from the client:
//!
//! - snd_nxt: the highest end of a client -> server segment, or the highest ack of a
//!   server -> client segment (whichever is later: the two directions back each other up when
//!   the sniffer misses packets during a burst);
//! - rcv_nxt: the highest ack of a client -> server segment, or the highest end of a
//!   server -> client segment;
//! - TSval/TSecr: the latest client TSval (or server TSecr) and the latest server TSval;
//! - the window, the MAC addresses, and the two MPTCP keys of the MP_CAPABLE third ACK
//!   (they travel in clear: key A = client, key B = server).
//!
//! Then it obeys commands, one a line ([`AddAddrForger::command`]):
//!
//! ```text
//! inject <bad|good> <addr-id> <ipv4-address> <count> [interval-ms]
//!     Sends <count> pure ACKs shaped like Linux's own ADD_ADDR: seq = snd_nxt,
//!     ack = rcv_nxt, NOP NOP TS when the connection uses timestamps (Linux drops segments
//!     without TS on a TS connection), then the 16-byte ADD_ADDR option (E=0, no port).
//!     "bad" carries 8 random HMAC bytes; "good" carries the right truncated HMAC computed
//!     from the sniffed keys (a positive control: the kernel must accept it).
//!     Answers `SENT n=<count> ...` or `ERR <reason>`.
//! rst [seq-offset]
//!     Sends one blind RST (flags RST only, ack 0, no options: all a blind attacker needs is
//!     the 4-tuple) with seq = snd_nxt + seq-offset (default 2^31: as far outside the
//!     server's receive window as a sequence number can be, so Linux silently discards it and
//!     the connection lives on). Answers `SENT n=1 kind=rst sport=.. seq=..` or `ERR ...`.
//! capable [seq-offset]
//!     Sends one segment shaped like an MP_CAPABLE third ACK (flags ACK, NOP NOP TS when the
//!     connection uses timestamps, then kind 30, length 20, version 1, flags 0x01 (H), sender
//!     key, receiver key) carrying 16 random key bytes instead of the connection's keys, with
//!     seq = snd_nxt + seq-offset (default 2^31, out of window) and ack = rcv_nxt. Answers
//!     `SENT n=1 kind=capable sport=.. seq=.. ack=.. key_a=<hex> key_b=<hex>` or `ERR ...`.
//! state
//!     Answers `STATE ...` with what has been learned.
//! quit  (or end of input)
//! ```
//!
//! It prints `READY` once sniffing.

use std::{
    collections::HashSet,
    fmt::Write as _,
    io,
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use mptcp_common::packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

use crate::{
    mptcp_frames::{add_addr, mpc_third_ack},
    wire::{
        ipv4_frame, later, random_bytes, sniffed, timestamps_option, PacketSocket, Segment, Sniffed,
    },
};

/// Default sequence offset of the state-changing segments: half the sequence space away from
/// snd_nxt, outside any receive window (before(seq, rcv_nxt) holds for the server).
pub const OUT_OF_WINDOW: u32 = 1 << 31;
/// Before injecting, wait until the connection has been quiet this long, so the state is final.
const QUIET: Duration = Duration::from_millis(150);
const QUIET_MAX_WAIT: Duration = Duration::from_secs(5);
/// Headers are all a forger needs from a frame: Ethernet 14 + IPv4 <= 60 + TCP <= 60.
pub(crate) const SNAP: usize = 256;
/// How often a sniffing thread looks at its stop flag.
pub(crate) const SNIFF_POLL: Duration = Duration::from_millis(200);
/// Default time between two forged ADD_ADDRs.
const INJECT_INTERVAL: Duration = Duration::from_millis(20);

/// Which HMAC a forged ADD_ADDR carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HmacKind {
    /// 8 random bytes: what an attacker who did not see the keys can send.
    Bad,
    /// The right truncated HMAC (from the keys sniffed in the handshake).
    Good,
}

impl HmacKind {
    /// The word of the `inject` command.
    #[must_use]
    pub fn word(self) -> &'static str {
        match self {
            HmacKind::Bad => "bad",
            HmacKind::Good => "good",
        }
    }
}

/// The connection a forger watches: its client address and the server's address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Client address of the initial subflow.
    pub client: Ipv4Addr,
    /// Server address.
    pub server: Ipv4Addr,
    /// Server port.
    pub port: u16,
}

/// What has been learned about the connection's initial subflow, from the client's side.
#[derive(Default)]
struct Conn {
    sport: Option<u16>,
    snd_nxt: Option<u32>,
    rcv_nxt: Option<u32>,
    window: Option<u16>,
    /// The client's latest TSval.
    tsval: Option<u32>,
    /// The server's latest TSval.
    tsecr: Option<u32>,
    mac_client: Option<[u8; 6]>,
    mac_server: Option<[u8; 6]>,
    /// The client's key (MP_CAPABLE initiator), then the server's.
    keys: Option<([u8; 8], [u8; 8])>,
    segments: u64,
    last_seen: Option<Instant>,
    /// Sequence numbers of the out-of-window segments this forger sent (`rst`, `capable`): the
    /// sniffer sees them too, and must not learn from them.
    own_seqs: HashSet<u32>,
}

impl Conn {
    /// Forgets everything: a new connection (or the first one seen).
    fn reset(&mut self, sport: u16) {
        *self = Conn {
            sport: Some(sport),
            ..Conn::default()
        };
    }

    fn describe(&self) -> String {
        let opt = |v: Option<u32>| v.map_or_else(|| "None".to_owned(), |v| v.to_string());
        format!(
            "sport={} seq={} ack={} ts={} keys={} segments={}",
            self.sport
                .map_or_else(|| "None".to_owned(), |p| p.to_string()),
            opt(self.snd_nxt),
            opt(self.rcv_nxt),
            self.ts_text(),
            if self.keys.is_some() { "yes" } else { "no" },
            self.segments
        )
    }

    fn ts_text(&self) -> String {
        match self.tsval {
            Some(v) => format!(
                "{v}/{}",
                self.tsecr
                    .map_or_else(|| "None".to_owned(), |e| e.to_string())
            ),
            None => "none".to_owned(),
        }
    }

    fn observe(&mut self, target: &Target, p: &Sniffed) {
        let to_server = p.src.0 == target.client && p.dst == (target.server, target.port);
        let to_client = p.src == (target.server, target.port) && p.dst.0 == target.client;
        if !(to_server || to_client) {
            return;
        }
        let client_port = if to_server { p.src.1 } else { p.dst.1 };
        let (syn, fin, has_ack) = (
            p.flags & TCP_SYN != 0,
            p.flags & TCP_FIN != 0,
            p.flags & TCP_ACK != 0,
        );
        let end = p
            .seq
            .wrapping_add(p.payload)
            .wrapping_add(u32::from(syn))
            .wrapping_add(u32::from(fin));
        if (to_server && syn && !has_ack) || self.sport.is_none() {
            // A new connection, or one that started before the forger: keys stay unknown.
            self.reset(client_port);
        }
        if Some(client_port) != self.sport || (to_server && self.own_seqs.contains(&p.seq)) {
            return;
        }
        if to_server {
            if let Some(keys) = p.capable_keys {
                self.keys.get_or_insert(keys);
            }
            self.snd_nxt = later(self.snd_nxt, end);
            if has_ack {
                self.rcv_nxt = later(self.rcv_nxt, p.ack);
            }
            self.window = Some(p.window);
            self.mac_client = Some(p.mac_src);
            self.mac_server = Some(p.mac_dst);
            if let Some((val, ecr)) = p.timestamps {
                self.tsval = later(self.tsval, val);
                if ecr != 0 {
                    self.tsecr = later(self.tsecr, ecr);
                }
            }
        } else {
            self.rcv_nxt = later(self.rcv_nxt, end);
            if has_ack {
                self.snd_nxt = later(self.snd_nxt, p.ack);
            }
            self.mac_client = Some(p.mac_dst);
            self.mac_server = Some(p.mac_src);
            if let Some((val, ecr)) = p.timestamps {
                self.tsecr = later(self.tsecr, val);
                if ecr != 0 {
                    self.tsval = later(self.tsval, ecr);
                }
            }
        }
        self.segments += 1;
        self.last_seen = Some(Instant::now());
    }
}

/// What a forged segment needs of the connection, once it has been quiet.
#[derive(Clone, Copy)]
struct Snapshot {
    sport: u16,
    seq: u32,
    ack: u32,
    window: u16,
    timestamps: Option<(u32, u32)>,
    mac_client: [u8; 6],
    mac_server: [u8; 6],
    keys: Option<([u8; 8], [u8; 8])>,
}

const NOT_SEEN: &str = "the connection has not been seen yet";

/// Where forged frames go instead of the sniffed interface and its next hop: another interface
/// and next hop, as when a segment of the subflow reaches another box than the one its path
/// goes through (an ECMP rehash, a failover).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detour {
    /// Interface the forged frames leave by.
    pub iface: String,
    /// Their source MAC.
    pub src_mac: [u8; 6],
    /// Their destination MAC (the other box's interface).
    pub dst_mac: [u8; 6],
}

/// Sniffs one connection and forges segments into it.
pub struct AddAddrForger {
    target: Target,
    conn: Arc<Mutex<Conn>>,
    tx: PacketSocket,
    /// Source and destination MACs of a [`Detour`].
    detour_macs: Option<([u8; 6], [u8; 6])>,
    stop: Arc<AtomicBool>,
    sniffer: Option<JoinHandle<()>>,
}

impl AddAddrForger {
    /// Starts sniffing `iface` (of the calling thread's namespace) for the connection `target`;
    /// forged frames leave by `iface` too.
    ///
    /// # Errors
    /// When the packet sockets cannot be opened (not root, no such interface).
    pub fn start(iface: &str, target: Target) -> io::Result<AddAddrForger> {
        AddAddrForger::start_via(iface, target, None)
    }

    /// [`AddAddrForger::start`], the forged frames leaving by `detour` if given.
    ///
    /// # Errors
    /// When the packet sockets cannot be opened.
    pub fn start_via(
        iface: &str,
        target: Target,
        detour: Option<Detour>,
    ) -> io::Result<AddAddrForger> {
        let rx = PacketSocket::sniffer(Some(iface), SNIFF_POLL)?;
        let tx = PacketSocket::sender(detour.as_ref().map_or(iface, |d| d.iface.as_str()))?;
        let detour_macs = detour.map(|d| (d.src_mac, d.dst_mac));
        let conn = Arc::new(Mutex::new(Conn::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let sniffer = {
            let (conn, stop) = (Arc::clone(&conn), Arc::clone(&stop));
            thread::spawn(move || {
                let mut buf = [0u8; SNAP];
                while !stop.load(Ordering::Relaxed) {
                    match rx.recv(&mut buf) {
                        Ok(Some((n, wire))) => {
                            if let Some(p) = sniffed(&buf[..n], wire) {
                                lock(&conn).observe(&target, &p);
                            }
                        }
                        Ok(None) => {}
                        Err(_) => return,
                    }
                }
            })
        };
        Ok(AddAddrForger {
            target,
            conn,
            tx,
            detour_macs,
            stop,
            sniffer: Some(sniffer),
        })
    }

    /// `STATE ...`: what has been learned.
    #[must_use]
    pub fn state(&self) -> String {
        format!("STATE {}", lock(&self.conn).describe())
    }

    /// Once the connection has been quiet, what a forged segment needs of it (`None` if unseen).
    fn snapshot(&self) -> Option<Snapshot> {
        let deadline = Instant::now() + QUIET_MAX_WAIT;
        while Instant::now() < deadline {
            if lock(&self.conn)
                .last_seen
                .is_none_or(|t| t.elapsed() >= QUIET)
            {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let c = lock(&self.conn);
        Some(Snapshot {
            sport: c.sport?,
            seq: c.snd_nxt?,
            ack: c.rcv_nxt?,
            window: c.window.unwrap_or(0),
            timestamps: c.tsval.map(|v| (v, c.tsecr.unwrap_or(0))),
            mac_client: c.mac_client?,
            mac_server: c.mac_server?,
            keys: c.keys,
        })
    }

    /// A segment from the client to the server on the initial subflow: a pure ACK at
    /// snd_nxt/rcv_nxt unless told otherwise, `NOP NOP TS` in front of `option` when the
    /// connection uses timestamps and `timestamps`.
    fn send(
        &self,
        snap: &Snapshot,
        option: &[u8],
        header: (u8, u32, u32),
        timestamps: bool,
    ) -> io::Result<()> {
        let (flags, seq, ack) = header;
        let mut options = Vec::new();
        if let (true, Some((val, ecr))) = (timestamps, snap.timestamps) {
            options.extend(timestamps_option(val, ecr));
        }
        options.extend_from_slice(option);
        let (mac_client, mac_server) = self
            .detour_macs
            .unwrap_or((snap.mac_client, snap.mac_server));
        let seg = Segment {
            macs: (mac_server, mac_client),
            src: (self.target.client, snap.sport),
            dst: (self.target.server, self.target.port),
            seq,
            ack,
            flags,
            window: snap.window,
        };
        self.tx.send(&ipv4_frame(&seg, &options, &[]).wire_bytes())
    }

    /// Sends `count` forged ADD_ADDRs announcing `addr` with address ID `id`, `interval` apart,
    /// once the connection has been quiet for 150 ms. The answer line (`SENT n=..`).
    ///
    /// # Errors
    /// A reason, when the connection was not seen (or its keys, for a good HMAC), or a send
    /// failed.
    pub fn inject(
        &self,
        kind: HmacKind,
        id: u8,
        addr: Ipv4Addr,
        count: u32,
        interval: Duration,
    ) -> Result<String, String> {
        let snap = self.snapshot().ok_or(NOT_SEEN)?;
        // The client is the MP_CAPABLE initiator (A) and the announcer: key A || key B.
        let right = snap
            .keys
            .map(|(a, b)| add_addr(&a, &b, id, &addr.octets(), None));
        if kind == HmacKind::Good && right.is_none() {
            return Err("keys unknown (MP_CAPABLE third ACK not seen)".to_owned());
        }
        for i in 0..count {
            let option = match (&right, kind) {
                (Some(right), HmacKind::Good) => right.clone(),
                _ => {
                    let mut forged = add_addr(&[0; 8], &[0; 8], id, &addr.octets(), None);
                    let tag = forged.len() - 8;
                    loop {
                        forged[tag..].copy_from_slice(&random_bytes::<8>());
                        // 2^-64, but stay honest.
                        if right.as_ref() != Some(&forged) {
                            break;
                        }
                    }
                    forged
                }
            };
            self.send(&snap, &option, (TCP_ACK, snap.seq, snap.ack), true)
                .map_err(|e| e.to_string())?;
            if i + 1 < count {
                thread::sleep(interval);
            }
        }
        let ts = match snap.timestamps {
            Some((v, e)) => format!("{v}/{e}"),
            None => "none".to_owned(),
        };
        Ok(format!(
            "SENT n={count} kind={} id={id} addr={addr} sport={} seq={} ack={} ts={ts}",
            kind.word(),
            snap.sport,
            snap.seq,
            snap.ack
        ))
    }

    /// Notes that the forger sends an out-of-window segment at `seq`; returns it.
    fn remember_own(&self, seq: u32) -> u32 {
        lock(&self.conn).own_seqs.insert(seq);
        seq
    }

    /// One blind RST (no ACK, no options) at snd_nxt + `offset`. The answer line.
    ///
    /// # Errors
    /// A reason, when the connection was not seen or the send failed.
    pub fn rst(&self, offset: u32) -> Result<String, String> {
        let snap = self.snapshot().ok_or(NOT_SEEN)?;
        let seq = self.remember_own(snap.seq.wrapping_add(offset));
        self.send(&snap, &[], (TCP_RST, seq, 0), false)
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "SENT n=1 kind=rst sport={} seq={seq} snd_nxt={}",
            snap.sport, snap.seq
        ))
    }

    /// One MP_CAPABLE third ACK with random keys (never the connection's) at snd_nxt +
    /// `offset`. The answer line.
    ///
    /// # Errors
    /// A reason, when the connection was not seen or the send failed.
    pub fn capable(&self, offset: u32) -> Result<String, String> {
        let snap = self.snapshot().ok_or(NOT_SEEN)?;
        let (key_a, key_b) = loop {
            let keys = (random_bytes::<8>(), random_bytes::<8>());
            // 2^-64, but stay honest.
            if snap.keys.is_none_or(|(a, b)| a != keys.0 && b != keys.1) {
                break keys;
            }
        };
        let seq = self.remember_own(snap.seq.wrapping_add(offset));
        self.send(
            &snap,
            &mpc_third_ack(&key_a, &key_b),
            (TCP_ACK, seq, snap.ack),
            true,
        )
        .map_err(|e| e.to_string())?;
        Ok(format!(
            "SENT n=1 kind=capable sport={} seq={seq} ack={} snd_nxt={} key_a={} key_b={}",
            snap.sport,
            snap.ack,
            snap.seq,
            hex(&key_a),
            hex(&key_b)
        ))
    }

    /// Obeys one command line; its answer, or `None` for `quit`.
    #[must_use]
    pub fn command(&self, line: &str) -> Option<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["quit"] => return None,
            [] => return Some(String::new()),
            ["state"] => Ok(self.state()),
            ["inject", ..] => self.inject_command(&words),
            ["rst", rest @ ..] => {
                seq_offset(rest, "usage: rst [seq-offset]").and_then(|o| self.rst(o))
            }
            ["capable", rest @ ..] => {
                seq_offset(rest, "usage: capable [seq-offset]").and_then(|o| self.capable(o))
            }
            [other, ..] => Err(format!("unknown command {other:?}")),
        };
        Some(answer.unwrap_or_else(|e| format!("ERR {e}")))
    }

    fn inject_command(&self, words: &[&str]) -> Result<String, String> {
        const USAGE: &str = "usage: inject <bad|good> <addr-id> <ipv4> <count> [interval-ms]";
        let (kind, id, addr, count, interval) = match words {
            [_, kind, id, addr, count] => (kind, id, addr, count, None),
            [_, kind, id, addr, count, ms] => (kind, id, addr, count, Some(ms)),
            _ => return Err(USAGE.to_owned()),
        };
        let kind = match *kind {
            "bad" => HmacKind::Bad,
            "good" => HmacKind::Good,
            _ => return Err(USAGE.to_owned()),
        };
        let number = |w: &str| w.parse::<u32>().map_err(|e| format!("{w}: {e}"));
        let id = u8::try_from(number(id)?).map_err(|e| format!("{id}: {e}"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
        let interval = match interval {
            Some(ms) => Duration::from_millis(u64::from(number(ms)?)),
            None => INJECT_INTERVAL,
        };
        self.inject(kind, id, addr, number(count)?, interval)
    }
}

impl Drop for AddAddrForger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sniffer) = self.sniffer.take() {
            let _ = sniffer.join();
        }
    }
}

/// The optional sequence offset argument of `rst` and `capable` (default 2^31; decimal or
/// `0x` hex).
fn seq_offset(rest: &[&str], usage: &str) -> Result<u32, String> {
    match rest {
        [] => Ok(OUT_OF_WINDOW),
        [w] => {
            let parsed = match w.strip_prefix("0x") {
                Some(hex) => i64::from_str_radix(hex, 16),
                None => w.parse::<i64>(),
            };
            // Taken mod 2^32, as a sequence number.
            parsed
                .map(|v| (v & 0xffff_ffff) as u32)
                .map_err(|e| format!("{w}: {e}"))
        }
        _ => Err(usage.to_owned()),
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking sniffer must not take the command loop down with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lower-case hex digits of `bytes`.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::seq_after;

    #[test]
    fn sequence_numbers_compare_mod_2_32() {
        assert!(seq_after(1, 0));
        assert!(seq_after(0, 0xffff_fff0));
        assert!(!seq_after(0, 1));
        assert!(!seq_after(5, 5));
        assert_eq!(later(None, 7), Some(7));
        assert_eq!(later(Some(7), 3), Some(7));
        assert_eq!(later(Some(0xffff_fff0), 2), Some(2));
    }

    #[test]
    fn offsets_parse_like_the_commands_say() {
        assert_eq!(seq_offset(&[], "u"), Ok(OUT_OF_WINDOW));
        assert_eq!(seq_offset(&["10"], "u"), Ok(10));
        assert_eq!(seq_offset(&["0x10"], "u"), Ok(16));
        assert_eq!(seq_offset(&["-1"], "u"), Ok(0xffff_ffff));
        assert!(seq_offset(&["1", "2"], "u").is_err());
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
    }

    #[test]
    fn the_connection_is_learned_from_both_directions() {
        let target = Target {
            client: Ipv4Addr::new(198, 18, 1, 1),
            server: Ipv4Addr::new(198, 18, 1, 2),
            port: 10000,
        };
        let seg = |src, dst, seq, ack, flags, payload, ts| Sniffed {
            mac_src: [1; 6],
            mac_dst: [2; 6],
            src,
            dst,
            seq,
            ack,
            flags,
            window: 9,
            payload,
            timestamps: ts,
            capable_keys: None,
            join: None,
        };
        let c = (target.client, 40000);
        let s = (target.server, 10000);
        let mut conn = Conn::default();
        conn.observe(&target, &seg(c, s, 100, 0, TCP_SYN, 0, Some((5, 0))));
        conn.observe(
            &target,
            &seg(s, c, 900, 101, TCP_SYN | TCP_ACK, 0, Some((70, 5))),
        );
        let mut third = seg(c, s, 101, 901, TCP_ACK, 10, Some((6, 70)));
        third.capable_keys = Some(([1; 8], [2; 8]));
        conn.observe(&target, &third);
        assert_eq!((conn.snd_nxt, conn.rcv_nxt), (Some(111), Some(901)));
        assert_eq!((conn.tsval, conn.tsecr), (Some(6), Some(70)));
        assert_eq!(conn.keys, Some(([1; 8], [2; 8])));
        assert_eq!(
            (conn.mac_client, conn.mac_server),
            (Some([1; 6]), Some([2; 6]))
        );
        // The server's data moves rcv_nxt; its ack of more data moves snd_nxt.
        conn.observe(&target, &seg(s, c, 901, 131, TCP_ACK, 50, Some((80, 6))));
        assert_eq!((conn.snd_nxt, conn.rcv_nxt), (Some(131), Some(951)));
        assert_eq!(conn.tsecr, Some(80));
        // Its own out-of-window segments teach it nothing.
        conn.own_seqs.insert(5000);
        conn.observe(&target, &seg(c, s, 5000, 951, TCP_ACK, 0, None));
        assert_eq!(conn.snd_nxt, Some(131));
        assert_eq!(conn.segments, 4);
        assert!(conn
            .describe()
            .starts_with("sport=40000 seq=131 ack=951 ts=6/80 keys=yes"));
    }
}
