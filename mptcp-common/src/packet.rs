//! Packet classification shared by the XDP program and host code: Ethernet, VLAN, IPv4/IPv6,
//! TCP and the bounded TCP option walk that finds every MPTCP (kind 30) option.
//!
//! Everything reads through [`PacketView::load`], which returns `None` past the end of the frame,
//! so hostile lengths can only make a parse stop, never read out of bounds. All loops have
//! constant bounds for the verifier. Offsets are from the start of the Ethernet header.

use crate::counters::Counter;
use crate::maps::{FlowKey, FAMILY_V4, FAMILY_V6};

/// Bytes of a frame, read with bounds checks.
pub trait PacketView {
    /// `N` bytes at `off`, or `None` if any of them is past the end of the frame.
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]>;
}

impl PacketView for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        let end = off.checked_add(N)?;
        let bytes = self.get(off..end)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Some(out)
    }
}

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// EtherType IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType 802.1ad (QinQ) service tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags the parser walks (outer 802.1ad + inner 802.1Q).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers the parser walks before giving up (counted, passed).
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IPv6 next-header values the parser walks through.
pub const IPV6_HOPOPTS: u8 = 0;
/// IPv6 routing header.
pub const IPV6_ROUTING: u8 = 43;
/// IPv6 fragment header: the segment passes untouched.
pub const IPV6_FRAGMENT: u8 = 44;
/// IPv6 destination options header.
pub const IPV6_DSTOPTS: u8 = 60;
/// Maximum TCP header length (doff = 15).
pub const MAX_TCP_HLEN: usize = 60;
/// Upper bound on TCP option walk steps: 40 bytes of options, each step consumes >= 1 byte.
pub const MAX_TCP_OPT_STEPS: usize = 40;
/// TCP option kind: end of option list.
pub const TCPOPT_EOL: u8 = 0;
/// TCP option kind: no-operation.
pub const TCPOPT_NOP: u8 = 1;
/// TCP option kind of MPTCP (RFC 8684).
pub const TCPOPT_MPTCP: u8 = 30;

/// TCP flag bits (byte 13 of the TCP header).
pub const TCP_FIN: u8 = 0x01;
/// SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// RST flag.
pub const TCP_RST: u8 = 0x04;
/// ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// MPTCP subtype MP_CAPABLE.
pub const MPTCP_SUB_CAPABLE: u8 = 0x0;
/// MPTCP subtype MP_JOIN.
pub const MPTCP_SUB_JOIN: u8 = 0x1;
/// MPTCP subtype ADD_ADDR.
pub const MPTCP_SUB_ADD_ADDR: u8 = 0x3;
/// MPTCP subtype MP_FASTCLOSE.
pub const MPTCP_SUB_FASTCLOSE: u8 = 0x7;
/// MP_JOIN length on a SYN (token, nonce).
pub const MPJ_LEN_SYN: u8 = 12;
/// MP_JOIN length on a SYN/ACK (64-bit truncated HMAC, nonce).
pub const MPJ_LEN_SYNACK: u8 = 16;
/// MP_JOIN length on the third ACK (160-bit HMAC).
pub const MPJ_LEN_ACK: u8 = 24;
/// MP_FASTCLOSE length (receiver's key).
pub const FASTCLOSE_LEN: u8 = 12;
/// MP_CAPABLE third-ACK length (both keys).
pub const MPC_LEN_ACK: u8 = 20;
/// MP_CAPABLE with data: both keys and Data-Level Length.
pub const MPC_LEN_ACK_DATA: u8 = 22;
/// MP_CAPABLE with data and DSS checksum.
pub const MPC_LEN_ACK_DATA_CSUM: u8 = 24;
/// MP_CAPABLE flags bit H (HMAC-SHA256); `flags & 0x1f` must equal it (protocol doc §2.3).
pub const MPC_FLAG_H: u8 = 0x01;
/// MP_CAPABLE flags bit B (extensibility): Linux ignores options with it set.
pub const MPC_FLAG_B: u8 = 0x40;
/// ADD_ADDR echo bit (E) in `opt[2]`.
pub const ADD_ADDR_ECHO: u8 = 0x01;
/// Most E=0 ADD_ADDRs one segment can hold (each is >= 16 bytes, options are <= 40).
pub const MAX_ADD_ADDRS: usize = 2;

/// A TCP segment's addresses and where its options are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpSegment {
    /// Source -> destination, as on the wire.
    pub flow: FlowKey,
    /// TCP flags byte.
    pub flags: u8,
    /// Offset of the first option byte.
    pub opts_start: usize,
    /// Offset one past the last option byte (end of the TCP header).
    pub opts_end: usize,
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses L2-L4 up to the TCP options. `Err` carries the reason the frame is not examined further.
///
/// # Errors
/// [`Counter::NotTcp`], [`Counter::Fragment`], [`Counter::Truncated`],
/// [`Counter::HeaderChainTooLong`] or [`Counter::Malformed`] (TCP data offset < 5).
#[inline(always)]
pub fn parse_tcp<P: PacketView + ?Sized>(p: &P) -> Result<TcpSegment, Counter> {
    let mut off = 12;
    let mut ethertype = be16(p.load(off).ok_or(Counter::Truncated)?);
    off += 2;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // Tag = TCI (2 bytes) then the next EtherType.
        ethertype = be16(p.load(off + 2).ok_or(Counter::Truncated)?);
        off += 4;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Err(Counter::HeaderChainTooLong);
    }
    let mut flow = FlowKey::default();
    let l4 = match ethertype {
        ETH_P_IP => {
            let h: [u8; 20] = p.load(off).ok_or(Counter::Truncated)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            if h[0] >> 4 != 4 || ihl < 20 {
                return Err(Counter::Malformed);
            }
            // MF flag or a non-zero fragment offset.
            if be16([h[6], h[7]]) & 0x3fff != 0 {
                return Err(Counter::Fragment);
            }
            if h[9] != IPPROTO_TCP {
                return Err(Counter::NotTcp);
            }
            flow.family = FAMILY_V4;
            flow.saddr[..4].copy_from_slice(&h[12..16]);
            flow.daddr[..4].copy_from_slice(&h[16..20]);
            off + ihl
        }
        ETH_P_IPV6 => {
            let h: [u8; 40] = p.load(off).ok_or(Counter::Truncated)?;
            if h[0] >> 4 != 6 {
                return Err(Counter::Malformed);
            }
            flow.family = FAMILY_V6;
            flow.saddr.copy_from_slice(&h[8..24]);
            flow.daddr.copy_from_slice(&h[24..40]);
            let mut next = h[6];
            let mut ext = off + 40;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                if next != IPV6_HOPOPTS && next != IPV6_ROUTING && next != IPV6_DSTOPTS {
                    break;
                }
                let e: [u8; 2] = p.load(ext).ok_or(Counter::Truncated)?;
                next = e[0];
                ext += (usize::from(e[1]) + 1) * 8;
            }
            match next {
                IPPROTO_TCP => ext,
                IPV6_FRAGMENT => return Err(Counter::Fragment),
                IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                    return Err(Counter::HeaderChainTooLong)
                }
                _ => return Err(Counter::NotTcp),
            }
        }
        _ => return Err(Counter::NotTcp),
    };
    let t: [u8; 20] = p.load(l4).ok_or(Counter::Truncated)?;
    let doff = usize::from(t[12] >> 4) * 4;
    if doff < 20 {
        return Err(Counter::Malformed);
    }
    // The whole TCP header, options included, must be in the frame.
    if doff > 20 {
        p.load::<1>(l4 + doff - 1).ok_or(Counter::Truncated)?;
    }
    flow.sport = [t[0], t[1]];
    flow.dport = [t[2], t[3]];
    Ok(TcpSegment {
        flow,
        flags: t[13],
        opts_start: l4 + 20,
        opts_end: l4 + doff,
    })
}

/// Where one MPTCP option is: offset of its Kind byte and its Length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OptRef {
    /// Offset of the Kind byte.
    pub off: usize,
    /// Value of the Length byte.
    pub len: u8,
}

/// The MPTCP options of one segment that the validator acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MptcpOptions {
    /// Number of kind-30 options seen.
    pub count: u8,
    /// The last valid key-carrying MP_CAPABLE (lengths 20/22/24 on a non-SYN, version 1, flags
    /// ok). The last of each kind, because that is the one Linux acts on.
    pub capable_keys: Option<OptRef>,
    /// E=0 ADD_ADDRs (lengths 16/18/28/30).
    pub add_addrs: [Option<OptRef>; MAX_ADD_ADDRS],
    /// ADD_ADDR echoes (E=1, lengths 8/10/20/22).
    pub echoes: u8,
    /// The last MP_JOIN whose length fits the segment's SYN/ACK flags.
    pub join: Option<OptRef>,
    /// The last MP_FASTCLOSE.
    pub fastclose: Option<OptRef>,
    /// A TCP option length was invalid, or an MPTCP option had a length/flag combination that
    /// Linux ignores.
    pub malformed: bool,
}

/// What one MPTCP option is, from its length and first two subtype bytes (pure, host-tested).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MptcpKind {
    /// MP_CAPABLE carrying both keys.
    CapableKeys,
    /// ADD_ADDR with HMAC (E=0).
    AddAddr,
    /// ADD_ADDR echo (E=1).
    AddAddrEcho,
    /// MP_JOIN on a SYN (length 12).
    JoinSyn,
    /// MP_JOIN on a SYN/ACK (length 16).
    JoinSynAck,
    /// MP_JOIN on a third ACK (length 24).
    JoinAck,
    /// MP_FASTCLOSE (length 12).
    Fastclose,
    /// Any other well-formed MPTCP option.
    Other,
    /// A length/flag combination Linux rejects or ignores.
    Malformed,
}

/// Classifies one MPTCP option. `b2`, `b3` are option bytes 2 and 3 (`b3` only matters for
/// MP_CAPABLE); `tcp_flags` are the segment's TCP flags.
#[inline(always)]
#[must_use]
pub fn classify_mptcp(len: u8, b2: u8, b3: u8, tcp_flags: u8) -> MptcpKind {
    if len < 3 {
        return MptcpKind::Malformed;
    }
    match b2 >> 4 {
        MPTCP_SUB_CAPABLE => {
            let keys_len = matches!(len, MPC_LEN_ACK | MPC_LEN_ACK_DATA | MPC_LEN_ACK_DATA_CSUM);
            if !keys_len || tcp_flags & TCP_SYN != 0 {
                return MptcpKind::Other;
            }
            // Linux ignores (falls back on) these: version != 1, H unset or D..G set, B set.
            if b2 & 0x0f != 1 || b3 & 0x1f != MPC_FLAG_H || b3 & MPC_FLAG_B != 0 {
                return MptcpKind::Malformed;
            }
            MptcpKind::CapableKeys
        }
        MPTCP_SUB_ADD_ADDR => match (len, b2 & ADD_ADDR_ECHO) {
            (16 | 18 | 28 | 30, 0) => MptcpKind::AddAddr,
            (8 | 10 | 20 | 22, ADD_ADDR_ECHO) => MptcpKind::AddAddrEcho,
            _ => MptcpKind::Malformed,
        },
        // Linux ignores an MP_JOIN whose length does not fit the segment type (no join).
        MPTCP_SUB_JOIN => match (len, tcp_flags & (TCP_SYN | TCP_ACK)) {
            (MPJ_LEN_SYN, TCP_SYN) => MptcpKind::JoinSyn,
            (MPJ_LEN_SYNACK, f) if f == TCP_SYN | TCP_ACK => MptcpKind::JoinSynAck,
            (MPJ_LEN_ACK, TCP_ACK) => MptcpKind::JoinAck,
            _ => MptcpKind::Malformed,
        },
        MPTCP_SUB_FASTCLOSE => {
            if len == FASTCLOSE_LEN {
                MptcpKind::Fastclose
            } else {
                MptcpKind::Malformed
            }
        }
        _ => MptcpKind::Other,
    }
}

/// `IPPROTO_UDP`.
const IPPROTO_UDP: u8 = 17;
/// `IPPROTO_ICMPV6`.
const IPPROTO_ICMPV6: u8 = 58;
/// TCP option kind: timestamps.
const TCPOPT_TIMESTAMP: u8 = 8;
/// The DSS subtype.
const MPTCP_SUB_DSS: u8 = 0x2;

/// What [`everyday`] decided about a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Everyday {
    /// Not TCP (IPv4 without options, or IPv6 carrying UDP or ICMPv6).
    NotTcp,
    /// TCP without options, or with only Linux's timestamps (NOP NOP TS).
    TcpNoMptcp,
    /// Linux's data segment: timestamps, one DSS, NOP padding; `sample` when it is one of the
    /// one in [`crate::maps::ACTIVITY_SAMPLE_ONE_IN`] that refresh their subflow's activity
    /// ([`everyday_flow`] gives the subflow).
    Dss {
        /// Whether this segment refreshes its subflow's activity.
        sample: bool,
    },
}

impl Everyday {
    /// The segment's reason, the one the general parser gives it.
    #[must_use]
    pub const fn reason(&self) -> Counter {
        match self {
            Everyday::NotTcp => Counter::NotTcp,
            Everyday::TcpNoMptcp => Counter::TcpNoMptcp,
            Everyday::Dss { .. } => Counter::MptcpOther,
        }
    }
}

/// The everyday shapes, decided from fixed offsets before the general parser: untagged
/// Ethernet; IPv4 without options (not a fragment) or the fixed IPv6 header; TCP without any of
/// `end_flags` (the flags that make a segment look at its subflow's end) and with no options,
/// only NOP NOP TS, or NOP NOP TS then one DSS and NOP padding (the layout Linux writes).
/// Anything else, or anything cut short, is `None`: the general parser decides. Wherever this
/// gives an answer it is the one the general parser gives (a host test checks it).
#[inline(always)]
pub fn everyday<P: PacketView + ?Sized>(p: &P, end_flags: u8) -> Option<Everyday> {
    let l4 = match be16(p.load(12)?) {
        ETH_P_IP => {
            let h: [u8; 20] = p.load(ETH_HLEN)?;
            // Version 4, no options, not a fragment.
            if h[0] != 0x45 || be16([h[6], h[7]]) & 0x3fff != 0 {
                return None;
            }
            if h[9] != IPPROTO_TCP {
                return Some(Everyday::NotTcp);
            }
            ETH_HLEN + 20
        }
        ETH_P_IPV6 => {
            let h: [u8; 40] = p.load(ETH_HLEN)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            match h[6] {
                IPPROTO_TCP => ETH_HLEN + 40,
                IPPROTO_UDP | IPPROTO_ICMPV6 => return Some(Everyday::NotTcp),
                _ => return None,
            }
        }
        _ => return None,
    };
    let t: [u8; 20] = p.load(l4)?;
    if t[13] & end_flags != 0 {
        return None;
    }
    let opts_len = usize::from(t[12] >> 4) * 4;
    if opts_len == 20 {
        return Some(Everyday::TcpNoMptcp);
    }
    let ts: [u8; 4] = p.load(l4 + 20)?;
    if ts != [TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, 10] || opts_len < 32 {
        return None;
    }
    // The whole header must be in the frame (as the general parser requires).
    p.load::<1>(l4 + opts_len - 1)?;
    if opts_len == 32 {
        return Some(Everyday::TcpNoMptcp);
    }
    let [kind, len, subtype] = p.load::<3>(l4 + 32)?;
    let dss_end = 32 + usize::from(len);
    if kind != TCPOPT_MPTCP || subtype >> 4 != MPTCP_SUB_DSS || len < 4 || dss_end > opts_len {
        return None;
    }
    // At most three bytes of NOP padding after it.
    if opts_len - dss_end > 3 {
        return None;
    }
    let mut at = dss_end;
    for _ in 0..3 {
        if at < opts_len {
            if p.load::<1>(l4 + at)? != [TCPOPT_NOP] {
                return None;
            }
            at += 1;
        }
    }
    // The sample is drawn from the sequence and acknowledgement numbers, already at hand: one
    // of them moves with every segment (data one way, acknowledgements the other), and 1448-
    // byte steps spread bits 7..11 evenly. A random-number helper call would cost more than
    // the rest of the segment.
    let moving = u32::from_be_bytes([t[4], t[5], t[6], t[7]])
        .wrapping_add(u32::from_be_bytes([t[8], t[9], t[10], t[11]]));
    let sample = (moving >> 7) & (crate::maps::ACTIVITY_SAMPLE_ONE_IN - 1) == 0;
    Some(Everyday::Dss { sample })
}

/// The subflow of a segment [`everyday`] decided (untagged Ethernet, IPv4 without options or
/// the fixed IPv6 header): built only for the sampled few that refresh their activity.
#[inline(always)]
pub fn everyday_flow<P: PacketView + ?Sized>(p: &P) -> Option<FlowKey> {
    let mut flow = FlowKey::default();
    let l4 = if be16(p.load(12)?) == ETH_P_IP {
        let h: [u8; 20] = p.load(ETH_HLEN)?;
        flow.family = FAMILY_V4;
        flow.saddr[..4].copy_from_slice(&h[12..16]);
        flow.daddr[..4].copy_from_slice(&h[16..20]);
        ETH_HLEN + 20
    } else {
        let h: [u8; 40] = p.load(ETH_HLEN)?;
        flow.family = FAMILY_V6;
        flow.saddr.copy_from_slice(&h[8..24]);
        flow.daddr.copy_from_slice(&h[24..40]);
        ETH_HLEN + 40
    };
    let ports: [u8; 4] = p.load(l4)?;
    flow.sport = [ports[0], ports[1]];
    flow.dport = [ports[2], ports[3]];
    Some(flow)
}

/// One step of the option walk.
enum Step {
    /// Continue at this offset.
    Next(usize),
    /// End of the options (EOL or header end).
    Done,
}

#[inline(always)]
fn walk_step<P: PacketView + ?Sized>(
    p: &P,
    seg: &TcpSegment,
    off: usize,
    out: &mut MptcpOptions,
) -> Step {
    if off >= seg.opts_end {
        return Step::Done;
    }
    let Some([kind]) = p.load::<1>(off) else {
        return Step::Done;
    };
    match kind {
        TCPOPT_EOL => return Step::Done,
        TCPOPT_NOP => return Step::Next(off + 1),
        _ => {}
    }
    let remaining = seg.opts_end - off;
    let len = match p.load::<2>(off) {
        Some([_, len]) if remaining >= 2 && len >= 2 && usize::from(len) <= remaining => len,
        _ => {
            out.malformed = true;
            return Step::Done;
        }
    };
    if kind == TCPOPT_MPTCP {
        out.count = out.count.saturating_add(1);
        // Bytes 2 and 3 (byte 3 only read when the option is at least 4 long).
        let b2 = if len >= 3 {
            p.load::<3>(off).map_or(0, |b| b[2])
        } else {
            0
        };
        let b3 = if len >= 4 {
            p.load::<4>(off).map_or(0, |b| b[3])
        } else {
            0
        };
        let here = OptRef { off, len };
        match classify_mptcp(len, b2, b3, seg.flags) {
            // Linux parses every MPTCP option into one set of fields, so of two options of the
            // same kind the last one is what it acts on: judge that one too.
            MptcpKind::CapableKeys => out.capable_keys = Some(here),
            MptcpKind::AddAddr => {
                if out.add_addrs[0].is_none() {
                    out.add_addrs[0] = Some(here);
                } else if out.add_addrs[1].is_none() {
                    out.add_addrs[1] = Some(here);
                }
            }
            MptcpKind::AddAddrEcho => out.echoes = out.echoes.saturating_add(1),
            MptcpKind::JoinSyn | MptcpKind::JoinSynAck | MptcpKind::JoinAck => {
                out.join = Some(here);
            }
            MptcpKind::Fastclose => out.fastclose = Some(here),
            MptcpKind::Other => {}
            MptcpKind::Malformed => out.malformed = true,
        }
    }
    Step::Next(off + usize::from(len))
}

/// Option-walk state. The XDP program keeps it in a per-CPU map value instead of on the stack:
/// the verifier does not track map memory precisely, so every path through one walk step
/// reaches the next step in the same abstract state and is pruned there. Kept on the stack,
/// each combination of offsets and findings is verified separately and the program exceeds
/// the verifier's budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WalkState {
    /// The segment whose options are walked.
    pub seg: TcpSegment,
    /// Offset of the next option byte.
    pub off: usize,
    /// What was found so far.
    pub found: MptcpOptions,
}

/// Walks the TCP options of `seg` (at most [`MAX_TCP_OPT_STEPS`] steps) and collects every
/// MPTCP option the validator acts on. Stops at EOL, at the header end, or at a bad length.
#[inline(always)]
pub fn walk_options<P: PacketView + ?Sized>(p: &P, seg: &TcpSegment) -> MptcpOptions {
    let mut state = WalkState {
        seg: *seg,
        ..WalkState::default()
    };
    walk_options_in(p, &mut state);
    state.found
}

/// [`walk_options`] over `state.seg` with caller-provided state; the result is in `state.found`.
#[inline(always)]
pub fn walk_options_in<P: PacketView + ?Sized>(p: &P, state: &mut WalkState) {
    state.off = state.seg.opts_start;
    state.found = MptcpOptions::default();
    for _ in 0..MAX_TCP_OPT_STEPS {
        // Make the compiler reload the state from memory each step (see WalkState).
        let st = core::hint::black_box(&mut *state);
        match walk_step(p, &st.seg, st.off, &mut st.found) {
            Step::Next(n) => st.off = n,
            Step::Done => break,
        }
    }
}

/// The fields of an E=0 ADD_ADDR needed for its HMAC check. (Aligned to 8: the fast path then
/// fills and copies it in words, not bytes.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(align(8))]
pub struct AddAddr {
    /// Address ID.
    pub id: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Address (IPv4 in bytes 0..4).
    pub addr: [u8; 16],
    /// Port, wire bytes; `[0, 0]` when the option has none (that is also what the HMAC hashes).
    pub port: [u8; 2],
    /// The carried truncated HMAC (last 8 bytes of the option).
    pub hmac: [u8; 8],
}

/// Reads an E=0 ADD_ADDR located by [`walk_options`]. `None` if it is not one of the four
/// HMAC-carrying lengths or the frame is too short.
#[inline(always)]
pub fn read_add_addr<P: PacketView + ?Sized>(p: &P, opt: OptRef) -> Option<AddAddr> {
    let mut a = AddAddr {
        id: 0,
        family: FAMILY_V4,
        addr: [0; 16],
        port: [0; 2],
        hmac: [0; 8],
    };
    match opt.len {
        16 | 18 => {
            let o: [u8; 18] = if opt.len == 18 {
                p.load(opt.off)?
            } else {
                let s: [u8; 16] = p.load(opt.off)?;
                let mut o = [0u8; 18];
                o[..8].copy_from_slice(&s[..8]);
                o[10..].copy_from_slice(&s[8..]);
                o
            };
            a.id = o[3];
            a.addr[..4].copy_from_slice(&o[4..8]);
            a.port = if opt.len == 18 { [o[8], o[9]] } else { [0, 0] };
            a.hmac.copy_from_slice(&o[10..18]);
        }
        28 | 30 => {
            let o: [u8; 30] = if opt.len == 30 {
                p.load(opt.off)?
            } else {
                let s: [u8; 28] = p.load(opt.off)?;
                let mut o = [0u8; 30];
                o[..20].copy_from_slice(&s[..20]);
                o[22..].copy_from_slice(&s[20..]);
                o
            };
            a.family = FAMILY_V6;
            a.id = o[3];
            a.addr.copy_from_slice(&o[4..20]);
            a.port = if opt.len == 30 {
                [o[20], o[21]]
            } else {
                [0, 0]
            };
            a.hmac.copy_from_slice(&o[22..30]);
        }
        _ => return None,
    }
    Some(a)
}

/// The fields of an MP_JOIN, by segment type (protocol doc §1.3, §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Join {
    /// SYN: the responder's token and the initiator's nonce R-A.
    Syn {
        addr_id: u8,
        backup: bool,
        token: [u8; 4],
        nonce: [u8; 4],
    },
    /// SYN/ACK: the 64-bit truncated HMAC and the responder's nonce R-B.
    SynAck {
        addr_id: u8,
        backup: bool,
        hmac: [u8; 8],
        nonce: [u8; 4],
    },
    /// Third ACK: the 160-bit HMAC.
    Ack { hmac: [u8; 20] },
}

/// Reads an MP_JOIN located by [`walk_options`] (its length already matched the segment type).
#[inline(always)]
pub fn read_join<P: PacketView + ?Sized>(p: &P, opt: OptRef) -> Option<Join> {
    match opt.len {
        MPJ_LEN_SYN => {
            let o: [u8; 12] = p.load(opt.off)?;
            Some(Join::Syn {
                addr_id: o[3],
                backup: o[2] & 1 != 0,
                token: [o[4], o[5], o[6], o[7]],
                nonce: [o[8], o[9], o[10], o[11]],
            })
        }
        MPJ_LEN_SYNACK => {
            let o: [u8; 16] = p.load(opt.off)?;
            Some(Join::SynAck {
                addr_id: o[3],
                backup: o[2] & 1 != 0,
                hmac: [o[4], o[5], o[6], o[7], o[8], o[9], o[10], o[11]],
                nonce: [o[12], o[13], o[14], o[15]],
            })
        }
        MPJ_LEN_ACK => {
            let o: [u8; 24] = p.load(opt.off)?;
            let mut hmac = [0u8; 20];
            hmac.copy_from_slice(&o[4..24]);
            Some(Join::Ack { hmac })
        }
        _ => None,
    }
}

/// Reads the key an MP_FASTCLOSE carries (the receiver's key, wire bytes).
#[inline(always)]
pub fn read_fastclose_key<P: PacketView + ?Sized>(p: &P, opt: OptRef) -> Option<[u8; 8]> {
    let o: [u8; 12] = p.load(opt.off)?;
    Some([o[4], o[5], o[6], o[7], o[8], o[9], o[10], o[11]])
}

/// Reads the two keys of a key-carrying MP_CAPABLE: (sender's key, receiver's key).
#[inline(always)]
pub fn read_capable_keys<P: PacketView + ?Sized>(p: &P, opt: OptRef) -> Option<([u8; 8], [u8; 8])> {
    let o: [u8; 20] = p.load(opt.off)?;
    let mut ks = [0u8; 8];
    let mut kr = [0u8; 8];
    ks.copy_from_slice(&o[4..12]);
    kr.copy_from_slice(&o[12..20]);
    Some((ks, kr))
}
