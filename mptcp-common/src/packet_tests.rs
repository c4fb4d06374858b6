//! Host tests of the packet parser and a replay of the real Linux captures through the shared
//! classification and HMAC code.

use crate::counters::Counter;
use crate::hmac::midstate;
use crate::maps::{FlowKey, FAMILY_V4, FAMILY_V6};
use crate::packet::*;
use crate::testing::Frame;
use crate::validate::add_addr_hmac_ok;
use std::collections::{HashMap, HashSet};
use std::vec::Vec;

const ADD_ADDR_V4: [u8; 16] = [30, 16, 0x30, 1, 198, 18, 9, 9, 1, 2, 3, 4, 5, 6, 7, 8];
const ECHO_V4: [u8; 8] = [30, 8, 0x31, 1, 198, 18, 9, 9];
const MPC_ACK: [u8; 20] = [
    30, 20, 0x01, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
];

fn parse(frame: &[u8]) -> Result<(TcpSegment, MptcpOptions), Counter> {
    let seg = parse_tcp(frame)?;
    Ok((seg, walk_options(frame, &seg)))
}

#[test]
fn plain_ipv4_add_addr() {
    let f = Frame::v4(&ADD_ADDR_V4).bytes();
    let (seg, o) = parse(&f).unwrap();
    assert_eq!(seg.flow.family, FAMILY_V4);
    assert_eq!(&seg.flow.saddr[..4], &[198, 18, 0, 1]);
    assert_eq!(seg.flow.sport, [0x9c, 0x40]);
    assert_eq!(o.count, 1);
    let a = read_add_addr(f.as_slice(), o.add_addrs[0].unwrap()).unwrap();
    assert_eq!(
        (a.id, a.family, &a.addr[..4], a.port, a.hmac),
        (
            1,
            FAMILY_V4,
            &[198, 18, 9, 9][..],
            [0, 0],
            [1, 2, 3, 4, 5, 6, 7, 8]
        )
    );
}

#[test]
fn ipv4_options_vlan_and_qinq() {
    let mut f = Frame::v4(&ADD_ADDR_V4);
    f.ip_opts = std::vec![1, 1, 1, 0, 0x94, 4, 0, 0]; // NOPs, EOL, router alert
    f.vlans = std::vec![1, 2];
    let (_, o) = parse(&f.bytes()).unwrap();
    assert!(o.add_addrs[0].is_some());
    f.vlans = std::vec![1, 2, 3];
    assert_eq!(parse(&f.bytes()).unwrap_err(), Counter::HeaderChainTooLong);
}

#[test]
fn ipv6_extension_headers() {
    let mut f = Frame::v6(&ADD_ADDR_V4);
    f.v6_ext = std::vec![
        (IPV6_HOPOPTS, std::vec![1, 4, 0, 0, 0, 0]),
        (IPV6_DSTOPTS, std::vec![0; 14]),
        (IPV6_ROUTING, std::vec![0; 6])
    ];
    let (seg, o) = parse(&f.bytes()).unwrap();
    assert_eq!(seg.flow.family, FAMILY_V6);
    assert!(o.add_addrs[0].is_some());
    f.v6_ext = std::vec![(IPV6_FRAGMENT, std::vec![0; 6])];
    assert_eq!(parse(&f.bytes()).unwrap_err(), Counter::Fragment);
    f.v6_ext = (0..=MAX_IPV6_EXT_HEADERS)
        .map(|_| (IPV6_DSTOPTS, std::vec![0; 6]))
        .collect();
    assert_eq!(parse(&f.bytes()).unwrap_err(), Counter::HeaderChainTooLong);
}

#[test]
fn ipv4_fragments_and_non_tcp() {
    let mut b = Frame::v4(&ADD_ADDR_V4).bytes();
    b[14 + 6] = 0x20; // MF
    assert_eq!(parse(&b).unwrap_err(), Counter::Fragment);
    let mut b = Frame::v4(&[]).bytes();
    b[14 + 9] = 17;
    assert_eq!(parse(&b).unwrap_err(), Counter::NotTcp);
    let mut b = Frame::v4(&[]).bytes();
    b[12] = 0x08;
    b[13] = 0x06; // ARP
    assert_eq!(parse(&b).unwrap_err(), Counter::NotTcp);
}

#[test]
fn every_truncation_is_safe() {
    for frame in [Frame::v4(&ADD_ADDR_V4).bytes(), Frame::v6(&MPC_ACK).bytes()] {
        for cut in 0..frame.len() {
            let r = parse(&frame[..cut]);
            assert!(matches!(r, Err(Counter::Truncated)), "cut {cut}: {r:?}");
        }
    }
}

#[test]
fn hostile_option_lengths() {
    // Length 0 and 1 are malformed; a length past the header end is malformed.
    for opts in [
        &[30u8, 0, 0x30, 0][..],
        &[30, 1, 0, 0],
        &[30, 40, 0x30, 1],
        &[8, 0, 0, 0],
    ] {
        let (_, o) = parse(&Frame::v4(opts).bytes()).unwrap();
        assert!(o.malformed, "{opts:?}");
        assert!(o.add_addrs[0].is_none());
    }
    // EOL stops the walk before a following ADD_ADDR.
    let mut opts = std::vec![0u8, 0, 0, 0];
    opts.extend_from_slice(&ADD_ADDR_V4);
    let (_, o) = parse(&Frame::v4(&opts).bytes()).unwrap();
    assert_eq!(o.count, 0);
    // v0-style ADD_ADDR (E=0 at an echo length) and an echo at an HMAC length are malformed.
    let (_, o) = parse(&Frame::v4(&[30, 8, 0x34, 1, 1, 2, 3, 4]).bytes()).unwrap();
    assert!(o.malformed);
    let (_, o) =
        parse(&Frame::v4(&[30, 16, 0x31, 1, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]).bytes()).unwrap();
    assert!(o.malformed);
}

#[test]
fn every_mptcp_option_is_seen() {
    let mut opts = ECHO_V4.to_vec();
    opts.extend_from_slice(&ADD_ADDR_V4);
    opts.extend_from_slice(&ADD_ADDR_V4);
    let (_, o) = parse(&Frame::v4(&opts).bytes()).unwrap();
    assert_eq!((o.count, o.echoes), (3, 1));
    assert!(o.add_addrs[0].is_some() && o.add_addrs[1].is_some());
    assert_eq!(
        o.add_addrs[1].unwrap().off,
        o.add_addrs[0].unwrap().off + 16
    );
}

#[test]
fn capable_rules() {
    assert_eq!(
        classify_mptcp(20, 0x01, 0x01, TCP_ACK),
        MptcpKind::CapableKeys
    );
    assert_eq!(
        classify_mptcp(24, 0x01, 0x81, TCP_ACK),
        MptcpKind::CapableKeys
    );
    assert_eq!(
        classify_mptcp(20, 0x01, 0x01, TCP_SYN | TCP_ACK),
        MptcpKind::Other
    );
    assert_eq!(classify_mptcp(12, 0x01, 0x01, TCP_ACK), MptcpKind::Other);
    assert_eq!(
        classify_mptcp(20, 0x00, 0x01, TCP_ACK),
        MptcpKind::Malformed
    );
    assert_eq!(
        classify_mptcp(20, 0x01, 0x41, TCP_ACK),
        MptcpKind::Malformed
    );
    assert_eq!(
        classify_mptcp(20, 0x01, 0x03, TCP_ACK),
        MptcpKind::Malformed
    );
    let (_, o) = parse(&Frame::v4(&MPC_ACK).bytes()).unwrap();
    let f = Frame::v4(&MPC_ACK).bytes();
    let (ks, kr) = read_capable_keys(f.as_slice(), o.capable_keys.unwrap()).unwrap();
    assert_eq!(
        (ks, kr),
        ([1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16])
    );
}

/// A connection's (Key-A, Key-B).
type Keys = ([u8; 8], [u8; 8]);

/// Replays a capture: learns keys from MP_CAPABLE, checks every ADD_ADDR. Returns (valid, invalid, unknown).
fn replay(path: &str, flip: bool) -> (usize, usize, usize, HashMap<FlowKey, Keys>) {
    let mut conns: HashMap<FlowKey, Keys> = HashMap::new();
    let (mut valid, mut invalid, mut unknown) = (0, 0, 0);
    for mut f in crate::testing::pcap_frames(path) {
        let Ok((seg, o)) = parse(&f) else { continue };
        if let Some(c) = o.capable_keys {
            let keys = read_capable_keys(f.as_slice(), c).unwrap();
            conns.entry(seg.flow).or_insert(keys);
        }
        for opt in o.add_addrs.into_iter().flatten() {
            if flip {
                let last = opt.off + usize::from(opt.len) - 1;
                f[last] ^= 0x01;
            }
            let a = read_add_addr(f.as_slice(), opt).unwrap();
            let mid = if let Some((ka, kb)) = conns.get(&seg.flow) {
                midstate(ka, kb)
            } else if let Some((ka, kb)) = conns.get(&seg.flow.reversed()) {
                midstate(kb, ka)
            } else {
                unknown += 1;
                continue;
            };
            if add_addr_hmac_ok(&mid, &a) {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
    }
    (valid, invalid, unknown, conns)
}

/// Every capture in the fixture directory (`tests/fixtures/`, or `$MPTCP_FIXTURES_DIR`, e.g. a
/// new recording of `cargo xtask record-fixtures`) replays as its `.expected` file, tshark's
/// reading of it, says: the keys of every connection are learned, every ADD_ADDR with an HMAC
/// validates, and none does with one HMAC bit flipped.
#[test]
fn linux_captures_validate() {
    let captures = crate::testing::fixture_captures();
    assert!(captures.len() >= 2, "{captures:?}");
    for capture in &captures {
        let path = crate::testing::fixture(capture);
        let expected = crate::testing::fixture_expected(capture);
        let (valid, invalid, unknown, conns) = replay(&path, false);
        assert_eq!(
            (valid, invalid, unknown),
            (expected.add_addr_hmac, 0, 0),
            "{capture}"
        );
        assert_eq!(replay(&path, true).1, expected.add_addr_hmac, "{capture}");
        let learned: HashSet<_> = conns.values().copied().collect();
        let want: HashSet<_> = expected.connections.iter().copied().collect();
        assert_eq!(learned, want, "{capture}");
    }
}

/// The checked-in captures hold what `docs/protocol.md` §7.4 and `tests/fixtures/README.md`
/// quote (read from the repository whatever `$MPTCP_FIXTURES_DIR` says: a new recording has
/// other keys).
#[test]
fn checked_in_captures_hold_the_documented_values() {
    let read = |name: &str| {
        let path = crate::testing::checked_in_fixture(&std::format!("{name}.expected"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        crate::testing::Expected::parse(&text).unwrap()
    };
    let mixed = read("linux-6.18-mptcp-mixed");
    assert_eq!(
        (mixed.add_addr_hmac, mixed.add_addr_echo, mixed.mp_join_syn),
        (14, 12, 10)
    );
    assert_eq!(
        mixed.connections[0],
        (
            [0xfd, 0xcf, 0x3c, 0x40, 0xbd, 0x10, 0x4a, 0x60],
            [0x06, 0x0f, 0x78, 0x48, 0x4a, 0xb9, 0x85, 0xd8]
        )
    );
    let (valid, ..) = replay(
        &crate::testing::checked_in_fixture("linux-6.18-mptcp-mixed.pcap"),
        false,
    );
    assert_eq!(valid, 14);
    let other = read("linux-6.18-mptcp-v6-backup-csum");
    assert_eq!(
        other.connections[0],
        (
            [0x53, 0x9a, 0x02, 0x90, 0x2a, 0x56, 0x1f, 0x75],
            [0xe1, 0xb7, 0x28, 0x21, 0x36, 0x96, 0x12, 0x35]
        )
    );
    assert_eq!(other.connections.len(), 3);
}

#[test]
fn of_two_joins_the_last_is_judged_as_linux_acts_on_it() {
    let first = [30u8, 12, 0x10, 1, 1, 1, 1, 1, 9, 9, 9, 9];
    let second = [30u8, 12, 0x10, 1, 2, 2, 2, 2, 9, 9, 9, 9];
    let mut f = Frame::v4(&[&first[..], &second[..]].concat());
    f.flags = TCP_SYN;
    let bytes = f.bytes();
    let (_, o) = parse(&bytes).unwrap();
    match read_join(bytes.as_slice(), o.join.unwrap()).unwrap() {
        Join::Syn { token, .. } => assert_eq!(token, [2, 2, 2, 2]),
        other => panic!("{other:?}"),
    }
}

/// The general parser's reason for a segment whose options ask for no state: `None` when its
/// options carry something the fast path must look at (keys, a join, an ADD_ADDR, a fast close).
fn general_reason(frame: &[u8], end_flags: u8) -> Option<Counter> {
    let seg = match parse_tcp(frame) {
        Ok(seg) => seg,
        Err(reason) => return Some(reason),
    };
    if seg.opts_start >= seg.opts_end && seg.flags & end_flags == 0 {
        return Some(Counter::TcpNoMptcp);
    }
    let opts = walk_options(frame, &seg);
    match crate::validate::options_reason(&opts) {
        core::ops::ControlFlow::Break(reason) => Some(reason),
        core::ops::ControlFlow::Continue(reason) => {
            let plain = opts.capable_keys.is_none()
                && opts.join.is_none()
                && opts.add_addrs[0].is_none()
                && opts.fastclose.is_none();
            plain.then_some(reason)
        }
    }
}

/// Wherever the everyday shortcut answers, the general parser gives the same reason (and a DSS
/// segment's subflow is the one it parses): over the Linux captures, hand-made everyday frames,
/// and every single-byte change of those in their first 96 bytes.
#[test]
fn everyday_shapes_agree_with_the_general_parser() {
    let mut frames: Vec<Vec<u8>> = crate::testing::fixture_captures()
        .iter()
        .flat_map(|c| crate::testing::pcap_frames(&crate::testing::fixture(c)))
        .collect();
    let ts = [1u8, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    let dss = [
        30u8, 22, 0x20, 0x0d, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 1, 5, 0xa8,
    ];
    let with_dss: Vec<u8> = ts.iter().chain(dss.iter()).copied().collect();
    for opts in [&[][..], &ts[..], &with_dss[..]] {
        frames.push(Frame::v4(opts).bytes());
        frames.push(Frame::v6(opts).bytes());
    }
    let mut answered = 0;
    let mut seeds = frames.clone();
    for frame in &frames {
        for at in 0..frame.len().min(96) {
            for value in [
                0u8,
                1,
                2,
                0x10,
                0x45,
                0xff,
                frame[at] ^ 0x01,
                frame[at] ^ 0x80,
            ] {
                let mut mutated = frame.clone();
                mutated[at] = value;
                seeds.push(mutated);
            }
        }
        for cut in 0..frame.len() {
            seeds.push(frame[..cut].to_vec());
        }
    }
    for end_flags in [TCP_FIN | TCP_RST, TCP_FIN | TCP_RST | TCP_SYN] {
        for frame in &seeds {
            let Some(shape) = everyday(frame.as_slice(), end_flags) else {
                continue;
            };
            answered += 1;
            assert_eq!(
                Some(shape.reason()),
                general_reason(frame, end_flags),
                "{shape:?} for {frame:02x?}"
            );
            if let Everyday::Dss { .. } = shape {
                let flow = everyday_flow(frame.as_slice());
                assert_eq!(flow, Some(parse_tcp(frame.as_slice()).unwrap().flow));
            }
        }
    }
    assert!(answered > 1000, "only {answered} frames took the shortcut");
}
