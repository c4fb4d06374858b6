//! Packet-generator profiles for one MPTCP connection: trafgen (netsniff-ng) configurations and
//! classic pcaps (for tcpreplay, T-Rex, MoonGen, ...) of
//!
//! - `add_addr_valid`: ADD_ADDRs with the right truncated HMAC (what the connection's own
//!   sender would send; a positive control),
//! - `add_addr_forged`: the same segments with a random, wrong HMAC (the ADD_ADDR attack),
//! - `join_syn_random_token`: MP_JOIN SYNs naming random tokens (a blind-join flood),
//! - `dss`: data segments with a DSS mapping (benign MPTCP traffic, a load baseline),
//! - `add_addr_random_address`: the pure ACKs of `add_addr_forged`, but with a random address ID,
//!   a random address and a random HMAC in every packet: no two announce the same (ID, address),
//!   so a receiver that caches the tags of the ADD_ADDRs it has checked never finds one there (the
//!   ADD_ADDR attack against a tag cache),
//! - `join_ack_forged`: MP_JOIN third ACKs (kind 30, length 24, subtype 1, then 20 random HMAC
//!   bytes) on the connection's 4-tuple. Meant for the 4-tuple of a pending join: `src` is the
//!   join's initiator, `seq` its ISN + 1, `ack` the responder's ISN + 1, the timestamps those of
//!   the SYN and SYN/ACK ([`join_syn_config`] writes the SYN that opens such a join). On an
//!   established subflow the same bytes are only a pure ACK to Linux.
//!
//! Every segment goes from `src` (host A) to `dst` (host B) of [`Connection`]. ADD_ADDR, third-ACK
//! and DSS segments use its sequence numbers, so they are in window when they are fresh; the
//! MP_JOIN SYNs only reuse the addresses and the destination port. The first four profiles are
//! unchanged by the two later ones (same bytes, same pcap seeds). A profile is one [`Template`]: fixed
//! bytes, random bytes and checksum slots. Rendered for trafgen, random bytes become `drnd()`
//! and checksums `csumip()`/`csumtcp()`/`csumtcp6()`, recomputed for every packet sent;
//! rendered into a pcap, they are drawn from a seeded generator and computed once per frame.

use std::{
    fmt::Write as _,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use mptcp_common::{
    hex::Hex,
    hmac::{add_addr_truncated, add_addr_v4_block, add_addr_v6_block, finish, midstate},
};

use mptcp_common::testing::internet_checksum;

/// The protocol doc's synthetic keys (§7.3), the keys of [`Connection::example`].
pub use mptcp_common::testing::{KEY_A, KEY_B};

/// Token of a key: SHA-256(key)[0..4] (protocol doc §3).
#[must_use]
pub fn token(key: &[u8; 8]) -> [u8; 4] {
    mptcp_common::hmac::token_and_idsn(key).0
}

/// The connection the profiles target, as seen by its sender `src` (host A).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// Sender address and port (host A).
    pub src: SocketAddr,
    /// Receiver address and port (host B). Same family as `src`.
    pub dst: SocketAddr,
    /// Ethernet source (A's interface).
    pub src_mac: [u8; 6],
    /// Ethernet destination (B's interface, or the next hop's).
    pub dst_mac: [u8; 6],
    /// A's next sequence number (B's `rcv_nxt`): what makes ADD_ADDR and DSS segments in window.
    pub seq: u32,
    /// A's acknowledgement number (B's `snd_nxt` or a little less).
    pub ack: u32,
    /// The (scaled) window A advertises.
    pub window: u16,
    /// `(TSval, TSecr)` when the connection uses TCP timestamps. Linux drops segments without
    /// the option on a connection that negotiated it, and PAWS drops a TSval older than the
    /// last one it saw from A.
    pub timestamps: Option<(u32, u32)>,
    /// A's MPTCP key: an ADD_ADDR's HMAC is keyed with the announcer's key first.
    pub key_a: [u8; 8],
    /// B's MPTCP key.
    pub key_b: [u8; 8],
}

impl Connection {
    /// A made-up connection for tests: 198.18.1.1:43210 -> 198.18.1.2:10000, or
    /// [2001:db8:1::1]:43210 -> [2001:db8:1::2]:10000 with `v6`, between the lab's path-1 MACs,
    /// and the test keys [`KEY_A`] and [`KEY_B`].
    #[must_use]
    pub fn example(v6: bool) -> Connection {
        let (src, dst): (IpAddr, IpAddr) = if v6 {
            (
                Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1).into(),
                Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2).into(),
            )
        } else {
            (
                Ipv4Addr::new(198, 18, 1, 1).into(),
                Ipv4Addr::new(198, 18, 1, 2).into(),
            )
        };
        Connection {
            src: SocketAddr::new(src, 43210),
            dst: SocketAddr::new(dst, 10000),
            src_mac: [2, 0, 0, 0, 1, 1],
            dst_mac: [2, 0, 0, 0, 1, 2],
            seq: 0x1234_5678,
            ack: 0x9abc_def0,
            window: 502,
            timestamps: Some((1_000_000, 2_000_000)),
            key_a: KEY_A,
            key_b: KEY_B,
        }
    }
}

/// What the profiles announce and how many frames the pcaps hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Frames per pcap.
    pub count: u32,
    /// Address ID of the ADD_ADDRs, and of the MP_JOIN SYNs (`add_addr_random_address` draws
    /// its own).
    pub addr_id: u8,
    /// Address the ADD_ADDRs announce (IPv4 or IPv6, whatever the connection's family);
    /// `add_addr_random_address` takes only its family.
    pub announce: IpAddr,
    /// Payload bytes of each DSS segment.
    pub dss_payload: u16,
    /// Seed of the generator that draws the random bytes of the pcaps.
    pub seed: u64,
    /// Microseconds between two pcap timestamps (replay tools honour them unless told to
    /// replay at a fixed rate).
    pub pcap_gap_us: u32,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            count: 1000,
            addr_id: 9,
            announce: IpAddr::V4(Ipv4Addr::new(198, 18, 3, 66)),
            dss_payload: 1000,
            seed: 1,
            pcap_gap_us: 10,
        }
    }
}

/// The profiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// ADD_ADDR with the right HMAC.
    AddAddrValid,
    /// ADD_ADDR with a random HMAC.
    AddAddrForged,
    /// MP_JOIN SYN with a random token.
    JoinSynRandomToken,
    /// Data segments with a DSS mapping.
    Dss,
    /// ADD_ADDR with a random address ID, address and HMAC (defeats a tag cache).
    AddAddrRandomAddress,
    /// MP_JOIN third ACK with a random HMAC.
    JoinAckForged,
}

impl Kind {
    /// Every profile, in the order files are written. New profiles go last: a profile's pcap
    /// seed depends on its position here.
    pub const ALL: [Kind; 6] = [
        Kind::AddAddrValid,
        Kind::AddAddrForged,
        Kind::JoinSynRandomToken,
        Kind::Dss,
        Kind::AddAddrRandomAddress,
        Kind::JoinAckForged,
    ];

    /// File name without extension (`<stem>.cfg`, `<stem>.pcap`).
    #[must_use]
    pub fn stem(self) -> &'static str {
        match self {
            Kind::AddAddrValid => "add_addr_valid",
            Kind::AddAddrForged => "add_addr_forged",
            Kind::JoinSynRandomToken => "join_syn_random_token",
            Kind::Dss => "dss",
            Kind::AddAddrRandomAddress => "add_addr_random_address",
            Kind::JoinAckForged => "join_ack_forged",
        }
    }

    /// One line saying what the profile sends.
    #[must_use]
    pub fn summary(self) -> &'static str {
        match self {
            Kind::AddAddrValid => {
                "pure ACKs carrying an ADD_ADDR (E=0) with the right truncated HMAC, \
                 HMAC-SHA256(key A || key B, id || address || 00 00)[24..32]"
            }
            Kind::AddAddrForged => {
                "the same pure ACKs with 8 random HMAC bytes: right 4-tuple, in-window \
                 sequence numbers, wrong HMAC (the ADD_ADDR attack)"
            }
            Kind::JoinSynRandomToken => {
                "SYNs with MP_JOIN naming a random token (and random nonce, source port, ISN \
                 and TSval): a blind-join flood at the port of B"
            }
            Kind::Dss => {
                "data segments with a DSS mapping (64-bit data ACK and DSN, as Linux sends \
                 them) and a payload: benign MPTCP traffic"
            }
            Kind::AddAddrRandomAddress => {
                "the pure ACKs of add_addr_forged with a random address ID, a random address and \
                 8 random HMAC bytes in every packet: no (ID, address) repeats, so no cached tag \
                 ever matches (the ADD_ADDR attack against a tag cache)"
            }
            Kind::JoinAckForged => {
                "MP_JOIN third ACKs (kind 30, length 24, subtype 1) with 20 random HMAC bytes on \
                 the 4-tuple of a pending join, in-window seq/ack and timestamps (a third-ACK \
                 flood on a known 4-tuple)"
            }
        }
    }

    /// Whether the profile carries an ADD_ADDR.
    #[must_use]
    pub fn is_add_addr(self) -> bool {
        matches!(
            self,
            Kind::AddAddrValid | Kind::AddAddrForged | Kind::AddAddrRandomAddress
        )
    }
}

/// One piece of a frame template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Fixed bytes, with what they are.
    Bytes(Vec<u8>, &'static str),
    /// Random bytes, drawn again for every packet. A pcap never uses `avoid` (e.g. the right
    /// HMAC, the real token); trafgen's `drnd()` can hit it, with probability 2^-(8 * len).
    Random {
        /// Number of bytes.
        len: usize,
        /// What they are.
        what: &'static str,
        /// A value the pcap frames must not take.
        avoid: Option<Vec<u8>>,
    },
    /// The IPv4 header checksum (2 bytes).
    Ipv4Checksum,
    /// The TCP checksum (2 bytes), IPv4 or IPv6 pseudo-header.
    TcpChecksum,
    /// A repeated byte (payload).
    Fill(u8, usize, &'static str),
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Bytes(b, _) => b.len(),
            Piece::Random { len, .. } => *len,
            Piece::Ipv4Checksum | Piece::TcpChecksum => 2,
            Piece::Fill(_, n, _) => *n,
        }
    }
}

/// A frame: Ethernet, IPv4 or IPv6, TCP with options, payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// The pieces, in wire order.
    pub pieces: Vec<Piece>,
    /// IPv6 instead of IPv4.
    pub v6: bool,
}

/// Offset of the IP header (Ethernet II, no VLAN).
const IP_OFF: usize = 14;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const TCP_SYN: u8 = 0x02;
const MPTCP_KIND: u8 = 30;
const NOP: u8 = 1;

impl Template {
    fn tcp_off(&self) -> usize {
        IP_OFF + if self.v6 { 40 } else { 20 }
    }

    /// Total frame length.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Piece::len).sum()
    }

    /// Whether the template has no bytes (never, for the profiles).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The trafgen packet block: `{ ... }` with one line per piece and a `#` comment saying
    /// what it is (trafgen 0.6 rejects a `/* */` comment after an element on the same line).
    #[must_use]
    pub fn trafgen(&self) -> String {
        let tcp = self.tcp_off();
        let mut out = String::from("{\n");
        for piece in &self.pieces {
            let (body, what) = match piece {
                Piece::Bytes(bytes, what) => (
                    bytes
                        .iter()
                        .map(|b| format!("0x{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    (*what).to_owned(),
                ),
                Piece::Random { len, what, .. } => (format!("drnd({len})"), (*what).to_owned()),
                Piece::Ipv4Checksum => (
                    format!("csumip({IP_OFF}, {})", tcp - 1),
                    "IPv4 header checksum".to_owned(),
                ),
                Piece::TcpChecksum if self.v6 => (
                    format!("csumtcp6({IP_OFF}, {tcp})"),
                    "TCP checksum".to_owned(),
                ),
                Piece::TcpChecksum => (
                    format!("csumtcp({IP_OFF}, {tcp})"),
                    "TCP checksum".to_owned(),
                ),
                Piece::Fill(byte, n, what) => {
                    (format!("fill(0x{byte:02x}, {n})"), (*what).to_owned())
                }
            };
            let _ = writeln!(out, "  {body}, # {what}");
        }
        out.push_str("}\n");
        out
    }

    /// The frame's bytes with random pieces drawn from `rng` and checksums computed.
    #[must_use]
    pub fn render(&self, rng: &mut SplitMix64) -> Vec<u8> {
        let mut frame = Vec::with_capacity(self.len());
        let mut slots = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Bytes(bytes, _) => frame.extend_from_slice(bytes),
                Piece::Random { len, avoid, .. } => loop {
                    let drawn = rng.bytes(*len);
                    if avoid.as_deref() != Some(drawn.as_slice()) {
                        frame.extend_from_slice(&drawn);
                        break;
                    }
                },
                Piece::Ipv4Checksum | Piece::TcpChecksum => {
                    slots.push((frame.len(), piece.clone()));
                    frame.extend_from_slice(&[0, 0]);
                }
                Piece::Fill(byte, n, _) => frame.extend(std::iter::repeat_n(*byte, *n)),
            }
        }
        let tcp = self.tcp_off();
        for (at, piece) in slots {
            let sum = if piece == Piece::Ipv4Checksum {
                internet_checksum(&[&frame[IP_OFF..tcp]])
            } else {
                tcp_checksum(&frame, self.v6, tcp)
            };
            frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        }
        frame
    }
}

fn tcp_checksum(frame: &[u8], v6: bool, tcp: usize) -> u16 {
    let segment = &frame[tcp..];
    let len = u32::try_from(segment.len()).expect("segment length");
    let mut pseudo = Vec::with_capacity(40);
    if v6 {
        pseudo.extend_from_slice(&frame[IP_OFF + 8..IP_OFF + 40]);
        pseudo.extend_from_slice(&len.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 6]);
    } else {
        pseudo.extend_from_slice(&frame[IP_OFF + 12..IP_OFF + 20]);
        pseudo.extend_from_slice(&[0, 6]);
        pseudo.extend_from_slice(&u16::try_from(len).expect("IPv4 segment").to_be_bytes());
    }
    internet_checksum(&[&pseudo, segment])
}

/// A small deterministic generator (SplitMix64) for the pcaps' random bytes.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator with this seed.
    #[must_use]
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next_u64().to_be_bytes());
        }
        out.truncate(n);
        out
    }
}

/// Why a profile cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// `src` and `dst` are of different families.
    #[error("--src {src} and --dst {dst} must both be IPv4 or both IPv6")]
    MixedFamilies {
        /// Sender.
        src: SocketAddr,
        /// Receiver.
        dst: SocketAddr,
    },
    /// The options do not fit in the TCP header or the frame is too long.
    #[error("{0}")]
    TooLong(String),
    /// Writing a file failed.
    #[error("writing {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// IDSN of a key: SHA-256(key)[24..32] as a big-endian integer (protocol doc §3).
#[must_use]
pub fn idsn(key: &[u8; 8]) -> u64 {
    mptcp_common::hmac::token_and_idsn(key).1
}

fn ip_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The ADD_ADDR option fields the HMAC covers, and the right truncated HMAC (sender A, no port),
/// computed with `mptcp_common::hmac` like the fast path checks it.
fn add_addr_parts(conn: &Connection, settings: &Settings) -> (Vec<u8>, [u8; 8]) {
    let no_port = [0, 0];
    let block = match settings.announce {
        IpAddr::V4(a) => add_addr_v4_block(settings.addr_id, &a.octets(), &no_port),
        IpAddr::V6(a) => add_addr_v6_block(settings.addr_id, &a.octets(), &no_port),
    };
    let digest = finish(&midstate(&conn.key_a, &conn.key_b), &block);
    (ip_bytes(settings.announce), add_addr_truncated(&digest))
}

/// Builds the template of `kind` for `conn`. The trafgen rendering and every pcap frame come
/// from it.
///
/// # Errors
/// When `src` and `dst` are of different families, or a DSS payload does not fit in a frame.
pub fn template(
    kind: Kind,
    conn: &Connection,
    settings: &Settings,
) -> Result<Template, ProfileError> {
    build(kind, conn, settings, 0)
}

/// [`template`], for the DSS segment `offset` bytes into the data.
fn build(
    kind: Kind,
    conn: &Connection,
    settings: &Settings,
    offset: u32,
) -> Result<Template, ProfileError> {
    let v6 = family(conn)?;
    let mut options: Vec<Piece> = Vec::new();
    let mut payload: Vec<Piece> = Vec::new();
    let in_window = || Header {
        flags: TCP_ACK,
        sport: Piece::Bytes(conn.src.port().to_be_bytes().to_vec(), "source port"),
        seq: Piece::Bytes(conn.seq.to_be_bytes().to_vec(), "sequence number"),
        ack: Piece::Bytes(conn.ack.to_be_bytes().to_vec(), "acknowledgement number"),
        window: conn.window,
    };
    let header = match kind {
        Kind::AddAddrValid | Kind::AddAddrForged | Kind::AddAddrRandomAddress => {
            options.extend(timestamps(conn));
            let (addr, right) = add_addr_parts(conn, settings);
            let len = 4 + u8::try_from(addr.len()).expect("address length") + 8;
            if kind == Kind::AddAddrRandomAddress {
                options.push(Piece::Bytes(
                    vec![MPTCP_KIND, len, 0x30],
                    "MPTCP ADD_ADDR: kind 30, length, subtype 3 with E=0",
                ));
                options.push(Piece::Random {
                    len: 1,
                    what: "address ID: random",
                    avoid: None,
                });
                options.push(Piece::Random {
                    len: addr.len(),
                    what: "announced address (no port): random",
                    avoid: None,
                });
                // The right tag depends on the random ID and address: a random one is wrong but
                // for a 2^-64 chance.
                options.push(Piece::Random {
                    len: 8,
                    what: "truncated HMAC: random, hence wrong",
                    avoid: None,
                });
            } else {
                options.push(Piece::Bytes(
                    vec![MPTCP_KIND, len, 0x30, settings.addr_id],
                    "MPTCP ADD_ADDR: kind 30, length, subtype 3 with E=0, address ID",
                ));
                options.push(Piece::Bytes(addr, "announced address (no port)"));
                options.push(if kind == Kind::AddAddrValid {
                    Piece::Bytes(
                        right.to_vec(),
                        "truncated HMAC: HMAC-SHA256(key A || key B, id || address || 00 00)[24..32]",
                    )
                } else {
                    Piece::Random {
                        len: 8,
                        what: "truncated HMAC: random, hence wrong",
                        avoid: Some(right.to_vec()),
                    }
                });
            }
            in_window()
        }
        Kind::JoinAckForged => {
            options.extend(timestamps(conn));
            options.push(Piece::Bytes(
                vec![MPTCP_KIND, 24, 0x10, 0x00],
                "MPTCP MP_JOIN (third ACK): kind 30, length 24, subtype 1, reserved",
            ));
            // The right HMAC depends on both nonces, which the profile does not know: a random
            // one is wrong but for a 2^-160 chance.
            options.push(Piece::Random {
                len: 20,
                what: "sender's HMAC (160 bits): random, hence wrong",
                avoid: None,
            });
            in_window()
        }
        Kind::JoinSynRandomToken => {
            options.extend(join_syn_options(
                v6,
                settings.addr_id,
                Piece::Random {
                    len: 4,
                    what: "TSval",
                    avoid: None,
                },
                Piece::Random {
                    len: 4,
                    what: "token: random, so it names no connection of B",
                    avoid: Some(token(&conn.key_b).to_vec()),
                },
                Piece::Random {
                    len: 4,
                    what: "sender's nonce",
                    avoid: None,
                },
            ));
            Header {
                flags: TCP_SYN,
                sport: Piece::Random {
                    len: 2,
                    what: "source port",
                    avoid: None,
                },
                seq: Piece::Random {
                    len: 4,
                    what: "initial sequence number",
                    avoid: None,
                },
                ack: Piece::Bytes(vec![0; 4], "acknowledgement number"),
                window: 64_240,
            }
        }
        Kind::Dss => {
            options.extend(timestamps(conn));
            let data_ack = idsn(&conn.key_b).wrapping_add(1);
            let dsn = idsn(&conn.key_a)
                .wrapping_add(1)
                .wrapping_add(u64::from(offset));
            let mut dss = vec![MPTCP_KIND, 26, 0x20, 0x0f];
            dss.extend_from_slice(&data_ack.to_be_bytes());
            dss.extend_from_slice(&dsn.to_be_bytes());
            dss.extend_from_slice(&offset.wrapping_add(1).to_be_bytes());
            dss.extend_from_slice(&settings.dss_payload.to_be_bytes());
            options.push(Piece::Bytes(
                dss,
                "MPTCP DSS: kind 30, length 26, flags m M a A; data ACK = IDSN(B)+1, \
                 DSN = IDSN(A)+1+offset, subflow sequence 1+offset, data-level length",
            ));
            payload.push(Piece::Fill(
                0x5a,
                usize::from(settings.dss_payload),
                "payload",
            ));
            Header {
                flags: TCP_ACK | TCP_PSH,
                seq: Piece::Bytes(
                    conn.seq.wrapping_add(offset).to_be_bytes().to_vec(),
                    "sequence number",
                ),
                ..in_window()
            }
        }
    };
    assemble(conn, v6, kind.stem(), header, options, payload)
}

/// The fields of a TCP header that differ between profiles.
struct Header {
    flags: u8,
    sport: Piece,
    seq: Piece,
    ack: Piece,
    window: u16,
}

/// Whether `conn` is IPv6 (both ends of one family).
fn family(conn: &Connection) -> Result<bool, ProfileError> {
    match (conn.src.ip(), conn.dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => Ok(false),
        (IpAddr::V6(_), IpAddr::V6(_)) => Ok(true),
        _ => Err(ProfileError::MixedFamilies {
            src: conn.src,
            dst: conn.dst,
        }),
    }
}

/// `NOP NOP TS` with the connection's timestamps, if it uses them.
fn timestamps(conn: &Connection) -> Vec<Piece> {
    conn.timestamps.map_or_else(Vec::new, |(tsval, tsecr)| {
        vec![
            Piece::Bytes(
                vec![NOP, NOP, 8, 10],
                "NOP, NOP, timestamps (kind 8, length 10)",
            ),
            Piece::Bytes(
                [tsval.to_be_bytes(), tsecr.to_be_bytes()].concat(),
                "TSval, TSecr",
            ),
        ]
    })
}

/// The options of an MP_JOIN SYN as Linux writes them: MSS, SACK permitted, timestamps, window
/// scale, MP_JOIN.
fn join_syn_options(v6: bool, addr_id: u8, tsval: Piece, token: Piece, nonce: Piece) -> Vec<Piece> {
    let mss: u16 = if v6 { 1440 } else { 1460 };
    let [m1, m2] = mss.to_be_bytes();
    vec![
        Piece::Bytes(vec![2, 4, m1, m2], "MSS"),
        Piece::Bytes(
            vec![4, 2, 8, 10],
            "SACK permitted, timestamps (kind 8, length 10)",
        ),
        tsval,
        Piece::Bytes(vec![0; 4], "TSecr"),
        Piece::Bytes(vec![NOP, 3, 3, 7], "NOP, window scale 7"),
        Piece::Bytes(
            vec![MPTCP_KIND, 12, 0x10, addr_id],
            "MPTCP MP_JOIN (SYN): kind 30, length 12, subtype 1, B=0, address ID",
        ),
        token,
        nonce,
    ]
}

/// Ethernet, IP and TCP headers around `options` (padded with NOPs) and `payload`.
fn assemble(
    conn: &Connection,
    v6: bool,
    name: &str,
    header: Header,
    mut options: Vec<Piece>,
    payload: Vec<Piece>,
) -> Result<Template, ProfileError> {
    let options_len: usize = options.iter().map(Piece::len).sum();
    let pad = (4 - options_len % 4) % 4;
    if pad > 0 {
        options.push(Piece::Bytes(vec![NOP; pad], "NOP padding"));
    }
    let options_len = options_len + pad;
    if options_len > 40 {
        return Err(ProfileError::TooLong(format!(
            "{name} needs {options_len} bytes of TCP options (at most 40)"
        )));
    }
    let payload_len: usize = payload.iter().map(Piece::len).sum();
    let tcp_len = 20 + options_len + payload_len;
    let doff = u8::try_from((20 + options_len) / 4).expect("at most 15 words");

    let mut pieces = vec![
        Piece::Bytes(conn.dst_mac.to_vec(), "Ethernet destination"),
        Piece::Bytes(conn.src_mac.to_vec(), "Ethernet source"),
    ];
    let too_long = || ProfileError::TooLong(format!("{name} frame is too long"));
    if v6 {
        let plen = u16::try_from(tcp_len).map_err(|_| too_long())?;
        pieces.push(Piece::Bytes(vec![0x86, 0xdd], "EtherType IPv6"));
        pieces.push(Piece::Bytes(
            [&[0x60, 0, 0, 0][..], &plen.to_be_bytes(), &[6, 64]].concat(),
            "IPv6: version, flow label 0, payload length, next header TCP, hop limit 64",
        ));
        pieces.push(Piece::Bytes(ip_bytes(conn.src.ip()), "source address"));
        pieces.push(Piece::Bytes(ip_bytes(conn.dst.ip()), "destination address"));
    } else {
        let total = u16::try_from(20 + tcp_len).map_err(|_| too_long())?;
        pieces.push(Piece::Bytes(vec![0x08, 0x00], "EtherType IPv4"));
        pieces.push(Piece::Bytes(
            [&[0x45, 0][..], &total.to_be_bytes()].concat(),
            "IPv4: version 4, IHL 5, TOS 0, total length",
        ));
        pieces.push(Piece::Random {
            len: 2,
            what: "IPv4 identification",
            avoid: None,
        });
        pieces.push(Piece::Bytes(
            vec![0x40, 0, 64, 6],
            "flags DF, fragment offset 0, TTL 64, protocol TCP",
        ));
        pieces.push(Piece::Ipv4Checksum);
        pieces.push(Piece::Bytes(ip_bytes(conn.src.ip()), "source address"));
        pieces.push(Piece::Bytes(ip_bytes(conn.dst.ip()), "destination address"));
    }
    if 14 + 40 + tcp_len > 1514 {
        return Err(too_long());
    }
    pieces.push(header.sport);
    pieces.push(Piece::Bytes(
        conn.dst.port().to_be_bytes().to_vec(),
        "destination port",
    ));
    pieces.push(header.seq);
    pieces.push(header.ack);
    pieces.push(Piece::Bytes(
        [&[doff << 4, header.flags][..], &header.window.to_be_bytes()].concat(),
        "data offset, flags, window",
    ));
    pieces.push(Piece::TcpChecksum);
    pieces.push(Piece::Bytes(vec![0, 0], "urgent pointer"));
    pieces.extend(options);
    pieces.extend(payload);
    Ok(Template { pieces, v6 })
}

/// The MP_JOIN SYN that opens a join from `conn.src` (port included) to `conn.dst`: the
/// genuine token of B (so Linux answers with a SYN/ACK and keeps a request socket), address ID
/// `settings.addr_id`, the initiator's nonce `nonce`, initial sequence number `conn.seq - 1`
/// (so a third ACK of `conn` has the right sequence number) and TSval from `conn.timestamps`
/// (0 without). Every byte but the IPv4 identification is fixed. Used with `join_ack_forged`:
/// the flood's target is a join that Linux really has pending.
///
/// # Errors
/// When `src` and `dst` are of different families.
pub fn join_syn_template(
    conn: &Connection,
    settings: &Settings,
    nonce: [u8; 4],
) -> Result<Template, ProfileError> {
    let v6 = family(conn)?;
    let tsval = conn.timestamps.map_or(0, |(v, _)| v);
    let options = join_syn_options(
        v6,
        settings.addr_id,
        Piece::Bytes(tsval.to_be_bytes().to_vec(), "TSval"),
        Piece::Bytes(
            token(&conn.key_b).to_vec(),
            "token of B: SHA-256(key B)[0..4], the connection to join",
        ),
        Piece::Bytes(nonce.to_vec(), "sender's nonce"),
    );
    let header = Header {
        flags: TCP_SYN,
        sport: Piece::Bytes(conn.src.port().to_be_bytes().to_vec(), "source port"),
        seq: Piece::Bytes(
            conn.seq.wrapping_sub(1).to_be_bytes().to_vec(),
            "initial sequence number",
        ),
        ack: Piece::Bytes(vec![0; 4], "acknowledgement number"),
        window: 64_240,
    };
    assemble(conn, v6, "join_syn", header, options, Vec::new())
}

/// The trafgen configuration of [`join_syn_template`]: one SYN that opens a join.
///
/// # Errors
/// See [`join_syn_template`].
pub fn join_syn_config(
    conn: &Connection,
    settings: &Settings,
    nonce: [u8; 4],
) -> Result<String, ProfileError> {
    let t = join_syn_template(conn, settings, nonce)?;
    let mut out = String::new();
    let _ = writeln!(out, "# mptcp-profiles: join_syn");
    let _ = writeln!(
        out,
        "# One MP_JOIN SYN with the token of B ({}) and nonce {}: opens a join {} -> {} that \
         join_ack_forged then floods.",
        Hex(&token(&conn.key_b)),
        Hex(&nonce),
        conn.src,
        conn.dst
    );
    let _ = writeln!(
        out,
        "# Run: trafgen --dev IFACE --conf join_syn.cfg --cpus 1 --num 1"
    );
    out.push_str(&t.trafgen());
    Ok(out)
}

/// The pcap frames of `kind`: `settings.count` renderings of its template. DSS frames are
/// consecutive segments (sequence number, DSN and subflow sequence advance by the payload).
///
/// # Errors
/// See [`template`].
pub fn frames(
    kind: Kind,
    conn: &Connection,
    settings: &Settings,
) -> Result<Vec<Vec<u8>>, ProfileError> {
    let template = template(kind, conn, settings)?;
    let stream = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0) as u64;
    let mut rng = SplitMix64::new(settings.seed ^ stream.wrapping_mul(0x1000_0001));
    let mut out = Vec::new();
    for i in 0..settings.count {
        if kind == Kind::Dss && i > 0 {
            let offset = u32::from(settings.dss_payload).wrapping_mul(i);
            out.push(build(kind, conn, settings, offset)?.render(&mut rng));
        } else {
            out.push(template.render(&mut rng));
        }
    }
    Ok(out)
}

/// A classic pcap (little-endian, microseconds, Ethernet) of `frames`, `gap_us` apart.
#[must_use]
pub fn pcap(frames: &[Vec<u8>], gap_us: u32) -> Vec<u8> {
    use pcap_file::{
        pcap::{PcapHeader, PcapPacket, PcapWriter},
        Endianness,
    };
    let header = PcapHeader {
        endianness: Endianness::Little,
        ..PcapHeader::default()
    };
    let mut out = PcapWriter::with_header(Vec::new(), header).expect("writing to memory");
    for (i, frame) in frames.iter().enumerate() {
        let len = u32::try_from(frame.len()).expect("frame length");
        let at = std::time::Duration::from_micros(u64::from(gap_us) * i as u64);
        out.write_packet(&PcapPacket::new(at, len, frame))
            .expect("a frame within the snap length");
    }
    out.into_writer()
}

/// The whole trafgen configuration of `kind`: a comment saying what it is and how to run it,
/// then the packet block.
///
/// # Errors
/// See [`template`].
pub fn trafgen_config(
    kind: Kind,
    conn: &Connection,
    settings: &Settings,
) -> Result<String, ProfileError> {
    let t = template(kind, conn, settings)?;
    let ts = conn.timestamps.map_or_else(
        || "none".to_owned(),
        |(v, e)| format!("TSval {v}, TSecr {e}"),
    );
    let mut out = String::new();
    let _ = writeln!(out, "# mptcp-profiles: {}", kind.stem());
    let _ = writeln!(out, "# {}.", kind.summary());
    let _ = writeln!(
        out,
        "# Connection: {} -> {}, seq {}, ack {}, window {}, timestamps: {ts}.",
        conn.src, conn.dst, conn.seq, conn.ack, conn.window
    );
    let _ = writeln!(
        out,
        "# Key A {}, key B {} (token of B: {}).",
        Hex(&conn.key_a),
        Hex(&conn.key_b),
        Hex(&token(&conn.key_b))
    );
    match kind {
        Kind::AddAddrValid | Kind::AddAddrForged => {
            let _ = writeln!(
                out,
                "# Announces address ID {} = {} (no port).",
                settings.addr_id, settings.announce
            );
        }
        Kind::AddAddrRandomAddress => {
            let _ = writeln!(
                out,
                "# Announces a random address ID and a random {} address (no port) in every packet.",
                if settings.announce.is_ipv6() {
                    "IPv6"
                } else {
                    "IPv4"
                }
            );
        }
        Kind::JoinAckForged => {
            let _ = writeln!(
                out,
                "# The 4-tuple must be a pending join's: seq = the initiator's ISN + 1, ack = the \
                 responder's ISN + 1, TSecr = the SYN/ACK's TSval."
            );
        }
        Kind::JoinSynRandomToken | Kind::Dss => {}
    }
    let _ = writeln!(
        out,
        "# drnd() bytes are drawn again and csum*() recomputed for every packet."
    );
    let _ = writeln!(
        out,
        "# Run: trafgen --dev IFACE --conf {}.cfg --cpus 1 --rate 100000pps",
        kind.stem()
    );
    out.push_str(&t.trafgen());
    Ok(out)
}

/// Writes `<stem>.cfg` and `<stem>.pcap` of every profile into `dir` (created if needed) and
/// returns the paths written.
///
/// # Errors
/// When a template cannot be built or a file cannot be written.
pub fn write_all(
    conn: &Connection,
    settings: &Settings,
    dir: &Path,
) -> Result<Vec<PathBuf>, ProfileError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ProfileError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut written = Vec::new();
    for kind in Kind::ALL {
        let cfg = dir.join(format!("{}.cfg", kind.stem()));
        fs::write(&cfg, trafgen_config(kind, conn, settings)?).map_err(io_err(&cfg))?;
        written.push(cfg);
        let pcap_path = dir.join(format!("{}.pcap", kind.stem()));
        let data = pcap(&frames(kind, conn, settings)?, settings.pcap_gap_us);
        fs::write(&pcap_path, data).map_err(io_err(&pcap_path))?;
        written.push(pcap_path);
    }
    Ok(written)
}

/// Parses `02:00:00:00:01:01`.
///
/// # Errors
/// When it is not six colon-separated hex bytes.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{text}: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{text}: a MAC address has six bytes"))
}

/// Parses a 64-bit key written as 16 hex digits (an optional `0x` is accepted).
///
/// # Errors
/// When it is not 16 hex digits.
pub fn parse_key(text: &str) -> Result<[u8; 8], String> {
    let digits = text.trim_start_matches("0x");
    if digits.len() != 16 {
        return Err(format!("{text}: a key is 16 hex digits"));
    }
    let value = u64::from_str_radix(digits, 16).map_err(|e| format!("{text}: {e}"))?;
    Ok(value.to_be_bytes())
}

/// The address the ADD_ADDR profiles announce by default: 198.18.3.66 on an IPv4 connection,
/// 2001:db8:3::66 on an IPv6 one.
#[must_use]
pub fn default_announce(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x66))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 18, 3, 66))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HMAC-SHA256 keyed `sender key || receiver key` (protocol doc §6.1) by the `hmac` crate,
    /// independent of `mptcp_common::hmac`.
    fn hmac_sha256(key_sender: &[u8; 8], key_receiver: &[u8; 8], msg: &[u8]) -> [u8; 32] {
        use hmac::{Hmac, Mac as _};
        let key = [&key_sender[..], key_receiver].concat();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length works");
        mac.update(msg);
        mac.finalize().into_bytes().into()
    }

    fn settings(v6: bool) -> Settings {
        Settings {
            count: 4,
            announce: default_announce(v6),
            ..Settings::default()
        }
    }

    #[test]
    fn checksums_verify() {
        for v6 in [false, true] {
            for kind in Kind::ALL {
                for frame in frames(kind, &Connection::example(v6), &settings(v6)).unwrap() {
                    let tcp = if v6 { 54 } else { 34 };
                    if !v6 {
                        assert_eq!(internet_checksum(&[&frame[14..34]]), 0, "{kind:?}");
                    }
                    // A segment with its checksum in place sums to zero.
                    let mut pseudo = Vec::new();
                    let len = u32::try_from(frame.len() - tcp).unwrap();
                    if v6 {
                        pseudo.extend_from_slice(&frame[22..54]);
                        pseudo.extend_from_slice(&len.to_be_bytes());
                        pseudo.extend_from_slice(&[0, 0, 0, 6]);
                    } else {
                        pseudo.extend_from_slice(&frame[26..34]);
                        pseudo.extend_from_slice(&[0, 6]);
                        pseudo.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
                    }
                    assert_eq!(
                        internet_checksum(&[&pseudo, &frame[tcp..]]),
                        0,
                        "{kind:?} v6={v6}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_add_addr_hmac_is_the_hmac_crate_one() {
        for v6 in [false, true] {
            let (c, s) = (Connection::example(v6), settings(v6));
            let (addr, right) = add_addr_parts(&c, &s);
            let msg = [&[s.addr_id][..], &addr, &[0, 0]].concat();
            assert_eq!(right[..], hmac_sha256(&c.key_a, &c.key_b, &msg)[24..32]);
        }
    }

    #[test]
    fn the_fast_path_parser_reads_them_as_intended() {
        use mptcp_common::packet::{parse_tcp, read_add_addr, walk_options};
        let c = Connection::example(false);
        let s = settings(false);
        let (_, right) = add_addr_parts(&c, &s);
        for (kind, hmac_is_right) in [(Kind::AddAddrValid, true), (Kind::AddAddrForged, false)] {
            for frame in frames(kind, &c, &s).unwrap() {
                let seg = parse_tcp(frame.as_slice()).unwrap();
                let opts = walk_options(frame.as_slice(), &seg);
                let a = read_add_addr(frame.as_slice(), opts.add_addrs[0].unwrap()).unwrap();
                assert_eq!((a.id, &a.addr[..4]), (9, &[198, 18, 3, 66][..]));
                assert_eq!(a.hmac == right, hmac_is_right);
            }
        }
        let joins = frames(Kind::JoinSynRandomToken, &c, &s).unwrap();
        let tokens: std::collections::BTreeSet<Vec<u8>> = joins
            .iter()
            .map(|f| {
                let seg = parse_tcp(f.as_slice()).unwrap();
                let opts = walk_options(f.as_slice(), &seg);
                let j = opts.join.unwrap();
                f[j.off + 4..j.off + 8].to_vec()
            })
            .collect();
        assert_eq!(tokens.len(), joins.len(), "tokens differ");
        assert!(!tokens.contains(token(&KEY_B).as_slice()));

        // Random address: every (ID, address) differs, so a tag cache never hits.
        let random = frames(Kind::AddAddrRandomAddress, &c, &s).unwrap();
        let mut announced = std::collections::BTreeSet::new();
        for frame in &random {
            let seg = parse_tcp(frame.as_slice()).unwrap();
            assert_eq!((be32(&frame[38..]), be32(&frame[42..])), (c.seq, c.ack));
            let opts = walk_options(frame.as_slice(), &seg);
            let a = read_add_addr(frame.as_slice(), opts.add_addrs[0].unwrap()).unwrap();
            let msg = [&[a.id][..], &a.addr[..4], &[0, 0]].concat();
            let right = hmac_sha256(&c.key_a, &c.key_b, &msg);
            assert_ne!(a.hmac, right[24..32]);
            announced.insert((a.id, a.addr));
        }
        assert_eq!(announced.len(), random.len(), "(ID, address) pairs differ");
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes(b[..4].try_into().unwrap())
    }

    #[test]
    fn join_third_acks_and_the_opening_syn() {
        use mptcp_common::packet::{parse_tcp, read_join, walk_options, Join};
        let c = Connection::example(false);
        let s = settings(false);
        let acks = frames(Kind::JoinAckForged, &c, &s).unwrap();
        let mut hmacs = std::collections::BTreeSet::new();
        for frame in &acks {
            let seg = parse_tcp(frame.as_slice()).unwrap();
            let fields = (be32(&frame[38..]), be32(&frame[42..]), seg.flags);
            assert_eq!(fields, (c.seq, c.ack, TCP_ACK));
            let opts = walk_options(frame.as_slice(), &seg);
            let Some(Join::Ack { hmac }) = read_join(frame.as_slice(), opts.join.unwrap()) else {
                panic!("not a third ACK");
            };
            hmacs.insert(hmac);
        }
        assert_eq!(hmacs.len(), acks.len(), "HMACs are random");
        // NOP NOP TS, then the 24-byte MP_JOIN: 36 bytes of options.
        assert_eq!(acks[0].len(), 14 + 20 + 20 + 36);

        let syn = join_syn_template(&c, &s, [1, 2, 3, 4])
            .unwrap()
            .render(&mut SplitMix64::new(1));
        let seg = parse_tcp(syn.as_slice()).unwrap();
        assert_eq!((be32(&syn[38..]), seg.flags), (c.seq - 1, TCP_SYN));
        let opts = walk_options(syn.as_slice(), &seg);
        let Some(Join::Syn {
            token: t, nonce, ..
        }) = read_join(syn.as_slice(), opts.join.unwrap())
        else {
            panic!("not a join SYN");
        };
        assert_eq!((t, nonce), (token(&KEY_B), [1, 2, 3, 4]));
        let cfg = join_syn_config(&c, &s, [1, 2, 3, 4]).unwrap();
        assert!(!cfg.contains("drnd(4)"), "{cfg}");
    }

    #[test]
    fn dss_segments_follow_each_other() {
        let c = Connection::example(false);
        let s = settings(false);
        let f = frames(Kind::Dss, &c, &s).unwrap();
        let seq = |f: &[u8]| u32::from_be_bytes(f[38..42].try_into().unwrap());
        assert_eq!(seq(&f[0]), 0x1234_5678);
        assert_eq!(seq(&f[1]), 0x1234_5678 + 1000);
        assert_eq!(f[0].len(), 14 + 20 + 20 + 40 + 1000);
    }

    #[test]
    fn trafgen_block_has_dynamic_elements() {
        let (c4, c6) = (Connection::example(false), Connection::example(true));
        let cfg = trafgen_config(Kind::AddAddrForged, &c4, &settings(false)).unwrap();
        assert!(cfg.contains("csumip(14, 33)"), "{cfg}");
        assert!(cfg.contains("csumtcp(14, 34)"), "{cfg}");
        assert!(cfg.contains("drnd(8)"), "{cfg}");
        let cfg6 = trafgen_config(Kind::JoinSynRandomToken, &c6, &settings(true)).unwrap();
        assert!(cfg6.contains("csumtcp6(14, 54)"), "{cfg6}");
        assert!(!cfg6.contains("csumip"), "{cfg6}");
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_mac("02:00:00:00:01:0a").unwrap(), [2, 0, 0, 0, 1, 10]);
        assert!(parse_mac("02:00").is_err());
        assert_eq!(parse_key("0102030405060708").unwrap(), KEY_A);
        assert_eq!(parse_key("0x1112131415161718").unwrap(), KEY_B);
        assert!(parse_key("0102").is_err());
    }
}
