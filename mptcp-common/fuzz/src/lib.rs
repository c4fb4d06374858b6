//! Checks shared by the fuzz targets of `mptcp-common`.
//!
//! [`check_frame`] parses a frame the way the XDP program does and panics (which libFuzzer
//! reports as a crash) as soon as the parser breaks one of its promises: offsets outside the
//! frame or the TCP header, a result that depends on bytes past the TCP header, an option walk
//! that disagrees with a plain slice-based walk, a located option whose length or flags do not
//! fit its kind, a reader that fails on an option the walk located, or a reader that reads
//! outside the frame.

use mptcp_common::counters::Counter;
use mptcp_common::maps::{FAMILY_V4, FAMILY_V6};
use mptcp_common::packet::{
    classify_mptcp, parse_tcp, read_add_addr, read_capable_keys, read_fastclose_key, read_join,
    walk_options, walk_options_in, AddAddr, Join, MptcpKind, MptcpOptions, OptRef, TcpSegment,
    WalkState, ETH_HLEN, MAX_ADD_ADDRS, MAX_TCP_HLEN, MAX_TCP_OPT_STEPS, TCPOPT_EOL, TCPOPT_MPTCP,
    TCPOPT_NOP, TCP_ACK, TCP_SYN,
};

pub mod options_input;

/// Smallest TCP header.
const TCP_HLEN: usize = 20;
/// Smallest IPv4 header.
const IPV4_HLEN: usize = 20;

/// Parses `frame` with [`parse_tcp`], checks the result and, when it is a TCP segment, its
/// option walk and every option reader. Returns what [`parse_tcp`] returned.
///
/// # Errors
/// The reason [`parse_tcp`] gave for not examining the frame further.
///
/// # Panics
/// When the parser breaks one of its invariants (that is the point).
pub fn check_frame(frame: &[u8]) -> Result<TcpSegment, Counter> {
    let parsed = parse_tcp(frame);
    match parsed {
        Ok(seg) => check_segment(frame, &seg),
        Err(reason) => assert!(
            matches!(
                reason,
                Counter::NotTcp
                    | Counter::Fragment
                    | Counter::Truncated
                    | Counter::HeaderChainTooLong
                    | Counter::Malformed
            ),
            "parse_tcp returned a reason it does not document: {reason:?}"
        ),
    }
    // Hostile offsets: every reader says `None`, none panics or wraps around.
    for off in [frame.len(), frame.len() + 1, usize::MAX - 3, usize::MAX] {
        check_reads_outside(frame, OptRef { off, len: 30 });
    }
    parsed
}

/// Checks a segment [`parse_tcp`] accepted, its option walk and the readers.
fn check_segment(frame: &[u8], seg: &TcpSegment) {
    let (start, end) = (seg.opts_start, seg.opts_end);
    assert!(
        start >= ETH_HLEN + IPV4_HLEN + TCP_HLEN,
        "options start at {start}, before the smallest headers end"
    );
    assert!(
        start <= end && end <= frame.len(),
        "options {start}..{end} not inside a {}-byte frame",
        frame.len()
    );
    let l4 = start - TCP_HLEN;
    assert!(
        end - l4 <= MAX_TCP_HLEN && (end - l4).is_multiple_of(4),
        "TCP header length {} is not what a data offset can say",
        end - l4
    );
    assert_eq!(
        usize::from(frame[l4 + 12] >> 4) * 4,
        end - l4,
        "data offset"
    );
    assert_eq!(seg.flags, frame[l4 + 13], "flags");
    assert_eq!(seg.flow.sport, [frame[l4], frame[l4 + 1]], "source port");
    assert_eq!(
        seg.flow.dport,
        [frame[l4 + 2], frame[l4 + 3]],
        "destination port"
    );
    assert!(
        seg.flow.family == FAMILY_V4 || seg.flow.family == FAMILY_V6,
        "family {}",
        seg.flow.family
    );
    assert_eq!(seg.flow.pad, [0; 3], "flow key padding");

    // Nothing past the TCP header matters, and its last byte does.
    assert_eq!(
        parse_tcp(&frame[..end]),
        Ok(*seg),
        "the parse depends on bytes past the TCP header"
    );
    assert_eq!(
        parse_tcp(&frame[..end - 1]),
        Err(Counter::Truncated),
        "a frame one byte short of its TCP header parsed"
    );

    let found = walk_options(frame, seg);
    let reference = reference_walk(&frame[start..end], start, seg.flags);
    assert_eq!(
        found, reference.found,
        "walk_options disagrees with the reference walk"
    );
    assert!(
        reference.add_addrs <= MAX_ADD_ADDRS,
        "{} E=0 ADD_ADDRs in one segment, the walk keeps only {MAX_ADD_ADDRS}",
        reference.add_addrs
    );
    assert_eq!(
        walk_options(&frame[..end], seg),
        found,
        "the walk reads past the TCP header"
    );
    // The per-CPU state the XDP program reuses starts dirty: the walk must reset it.
    let mut state = WalkState {
        seg: *seg,
        off: usize::MAX,
        found: MptcpOptions {
            count: u8::MAX,
            malformed: true,
            echoes: 7,
            join: Some(OptRef { off: 1, len: 12 }),
            ..MptcpOptions::default()
        },
    };
    walk_options_in(frame, &mut state);
    assert_eq!(state.found, found, "walk_options_in kept stale state");

    check_found(frame, seg, &found);
    for &opt in &reference.all {
        check_reads_any(frame, opt);
    }
}

/// What the reference walk found: the expected [`MptcpOptions`], every kind-30 option, and how
/// many E=0 `ADD_ADDRs` there were (the walk has room for [`MAX_ADD_ADDRS`]).
struct Reference {
    found: MptcpOptions,
    all: Vec<OptRef>,
    add_addrs: usize,
}

/// The option walk written plainly over the option bytes, with no step bound: it shows that
/// [`MAX_TCP_OPT_STEPS`] never cuts a walk short. `base` is the frame offset of `opts[0]`.
fn reference_walk(opts: &[u8], base: usize, tcp_flags: u8) -> Reference {
    let mut r = Reference {
        found: MptcpOptions::default(),
        all: Vec::new(),
        add_addrs: 0,
    };
    let mut i = 0;
    let mut steps = 0;
    while i < opts.len() {
        steps += 1;
        match opts[i] {
            TCPOPT_EOL => break,
            TCPOPT_NOP => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let len = match opts.get(i + 1) {
            Some(&len) if len >= 2 && i + usize::from(len) <= opts.len() => len,
            _ => {
                r.found.malformed = true;
                break;
            }
        };
        if opts[i] == TCPOPT_MPTCP {
            let here = OptRef { off: base + i, len };
            r.all.push(here);
            r.found.count += 1;
            let b2 = if len >= 3 { opts[i + 2] } else { 0 };
            let b3 = if len >= 4 { opts[i + 3] } else { 0 };
            let f = &mut r.found;
            match classify_mptcp(len, b2, b3, tcp_flags) {
                // The last of each kind: the one Linux acts on.
                MptcpKind::CapableKeys => f.capable_keys = Some(here),
                MptcpKind::AddAddr => {
                    if let Some(slot) = f.add_addrs.iter_mut().find(|slot| slot.is_none()) {
                        *slot = Some(here);
                    }
                    r.add_addrs += 1;
                }
                MptcpKind::AddAddrEcho => f.echoes += 1,
                MptcpKind::JoinSyn | MptcpKind::JoinSynAck | MptcpKind::JoinAck => {
                    f.join = Some(here);
                }
                MptcpKind::Fastclose => f.fastclose = Some(here),
                MptcpKind::Other => {}
                MptcpKind::Malformed => f.malformed = true,
            }
        }
        i += usize::from(len);
    }
    assert!(
        steps <= MAX_TCP_OPT_STEPS,
        "{steps} steps for {} option bytes",
        opts.len()
    );
    r
}

/// Option bytes 0..len of a located option (inside the TCP header, checked first).
fn option_bytes<'a>(frame: &'a [u8], seg: &TcpSegment, opt: OptRef) -> &'a [u8] {
    let end = opt.off + usize::from(opt.len);
    assert!(
        opt.off >= seg.opts_start && end <= seg.opts_end,
        "{opt:?} is not inside the TCP options {}..{}",
        seg.opts_start,
        seg.opts_end
    );
    let o = &frame[opt.off..end];
    assert_eq!(o[0], TCPOPT_MPTCP, "{opt:?} is not a kind-30 option");
    assert_eq!(o[1], opt.len, "{opt:?} length byte");
    o
}

/// Every option the walk kept: inside the TCP header, its length and flags fit its kind (the
/// rules of RFC 8684 and Linux, written here independently of `classify_mptcp`), and its
/// reader returns exactly its bytes.
fn check_found(frame: &[u8], seg: &TcpSegment, found: &MptcpOptions) {
    let syn_ack = seg.flags & (TCP_SYN | TCP_ACK);
    if let Some(opt) = found.capable_keys {
        let o = option_bytes(frame, seg, opt);
        assert!(matches!(opt.len, 20 | 22 | 24), "MP_CAPABLE keys, {opt:?}");
        assert_eq!(seg.flags & TCP_SYN, 0, "MP_CAPABLE keys on a SYN");
        assert_eq!(o[2], 0x01, "MP_CAPABLE subtype 0, version 1");
        assert_eq!(
            o[3] & 0x5f,
            0x01,
            "MP_CAPABLE flags: H set, B and D..G clear"
        );
        let keys = read_capable_keys(frame, opt).expect("MP_CAPABLE keys unreadable");
        assert_eq!(keys.0[..], o[4..12], "sender's key");
        assert_eq!(keys.1[..], o[12..20], "receiver's key");
    }
    assert!(
        found.add_addrs[0].is_some() || found.add_addrs[1].is_none(),
        "second ADD_ADDR slot filled before the first"
    );
    for opt in found.add_addrs.into_iter().flatten() {
        let o = option_bytes(frame, seg, opt);
        assert_eq!(o[2] >> 4, 3, "ADD_ADDR subtype");
        assert_eq!(o[2] & 1, 0, "ADD_ADDR with E=1 kept as E=0");
        let a = read_add_addr(frame, opt).expect("ADD_ADDR unreadable");
        assert_eq!(a, expected_add_addr(o), "ADD_ADDR fields");
    }
    if let (Some(a), Some(b)) = (found.add_addrs[0], found.add_addrs[1]) {
        assert!(
            a.off + usize::from(a.len) <= b.off,
            "ADD_ADDRs overlap: {a:?} {b:?}"
        );
    }
    if let Some(opt) = found.join {
        let o = option_bytes(frame, seg, opt);
        assert_eq!(o[2] >> 4, 1, "MP_JOIN subtype");
        let join = read_join(frame, opt).expect("MP_JOIN unreadable");
        match (opt.len, syn_ack) {
            (12, TCP_SYN) => assert_eq!(
                join,
                Join::Syn {
                    addr_id: o[3],
                    backup: o[2] & 1 == 1,
                    token: o[4..8].try_into().unwrap(),
                    nonce: o[8..12].try_into().unwrap(),
                }
            ),
            (16, f) if f == TCP_SYN | TCP_ACK => assert_eq!(
                join,
                Join::SynAck {
                    addr_id: o[3],
                    backup: o[2] & 1 == 1,
                    hmac: o[4..12].try_into().unwrap(),
                    nonce: o[12..16].try_into().unwrap(),
                }
            ),
            (24, TCP_ACK) => assert_eq!(
                join,
                Join::Ack {
                    hmac: o[4..24].try_into().unwrap()
                }
            ),
            (len, f) => panic!("MP_JOIN of length {len} kept on a segment with flags {f:#04x}"),
        }
    }
    if let Some(opt) = found.fastclose {
        let o = option_bytes(frame, seg, opt);
        assert_eq!(
            (o[2] >> 4, opt.len),
            (7, 12),
            "MP_FASTCLOSE subtype and length"
        );
        let key = read_fastclose_key(frame, opt).expect("MP_FASTCLOSE unreadable");
        assert_eq!(key[..], o[4..12], "MP_FASTCLOSE key");
    }
}

/// An `ADD_ADDR`'s fields read straight from its bytes (`o` is the whole option).
fn expected_add_addr(o: &[u8]) -> AddAddr {
    let (family, addr_len) = if o.len() >= 28 {
        (FAMILY_V6, 16)
    } else {
        (FAMILY_V4, 4)
    };
    let mut addr = [0; 16];
    addr[..addr_len].copy_from_slice(&o[4..4 + addr_len]);
    let after = 4 + addr_len;
    let port = if o.len() == after + 2 + 8 {
        [o[after], o[after + 1]]
    } else {
        [0, 0]
    };
    AddAddr {
        id: o[3],
        family,
        addr,
        port,
        hmac: o[o.len() - 8..].try_into().unwrap(),
    }
}

/// Every reader on any kind-30 option, whatever its length: none panics, and what one returns
/// are the option's own bytes (they may run past the option when its length is too short for
/// the reader, but never past the frame).
fn check_reads_any(frame: &[u8], opt: OptRef) {
    let fits = |n: usize| opt.off + n <= frame.len();
    let keys = read_capable_keys(frame, opt);
    assert_eq!(keys.is_some(), fits(20), "read_capable_keys at {opt:?}");
    if let Some((ks, kr)) = keys {
        assert_eq!(ks[..], frame[opt.off + 4..opt.off + 12]);
        assert_eq!(kr[..], frame[opt.off + 12..opt.off + 20]);
    }
    let key = read_fastclose_key(frame, opt);
    assert_eq!(key.is_some(), fits(12), "read_fastclose_key at {opt:?}");
    if let Some(key) = key {
        assert_eq!(key[..], frame[opt.off + 4..opt.off + 12]);
    }
    let add_addr = read_add_addr(frame, opt);
    let add_addr_len = matches!(opt.len, 16 | 18 | 28 | 30);
    assert_eq!(
        add_addr.is_some(),
        add_addr_len && fits(usize::from(opt.len)),
        "read_add_addr at {opt:?}"
    );
    if let Some(a) = add_addr {
        let end = opt.off + usize::from(opt.len);
        assert_eq!(a, expected_add_addr(&frame[opt.off..end]));
    }
    let join = read_join(frame, opt);
    let join_len = matches!(opt.len, 12 | 16 | 24);
    assert_eq!(
        join.is_some(),
        join_len && fits(usize::from(opt.len)),
        "read_join at {opt:?}"
    );
}

/// Every reader at an offset where the frame has too few bytes: `None` from each.
fn check_reads_outside(frame: &[u8], opt: OptRef) {
    assert_eq!(read_capable_keys(frame, opt), None);
    assert_eq!(read_fastclose_key(frame, opt), None);
    for len in [16, 18, 28, 30] {
        assert_eq!(read_add_addr(frame, OptRef { len, ..opt }), None);
    }
    for len in [12, 16, 24] {
        assert_eq!(read_join(frame, OptRef { len, ..opt }), None);
    }
}
