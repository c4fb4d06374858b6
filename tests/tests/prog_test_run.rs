//! BPF_PROG_TEST_RUN tests of the real XDP object in the real kernel (root only).
//!
//! Every frame of the Linux 6.18 captures is replayed in order; key learning and every ADD_ADDR
//! verdict are checked against an independent host model (hmac/sha2 crates), then the same frames
//! with one HMAC bit flipped are replayed in enforce and in monitor mode. Hand-made frames cover
//! VLAN tags, IPv4 options, IPv6 extension headers, truncation and hostile option lengths.

use std::collections::{HashMap, HashSet};

use mptcp_common::{
    counters::Counter,
    maps::{
        Config, FlowKey, FIN_FROM_DST, FIN_FROM_SRC, MODE_ENFORCE, MODE_MONITOR, PROG_XDP_INGRESS,
        PROG_XDP_PASS_BASELINE, READY_A, READY_B, RST_SEEN,
    },
    packet::{parse_tcp, read_add_addr, read_capable_keys, read_join, walk_options, Join, TCP_SYN},
    testing::{checked_in_fixture, fixture, pcap_frames, Frame},
};
use mptcp_tests::{
    bpf::{hex, BpfValidator as Validator, XDP_DROP, XDP_PASS},
    mptcp_frames::{
        add_addr, hmac_sha256, join_syn, join_synack, mpc_third_ack, token, KEY_A, KEY_B,
    },
};

#[path = "prog_test_run/multiprog.rs"]
mod multiprog;

const CAPTURES: [&str; 2] = [
    "linux-6.18-mptcp-mixed.pcap",
    "linux-6.18-mptcp-v6-backup-csum.pcap",
];

/// What the protocol doc predicts for a capture: for each frame, whether it carries an ADD_ADDR
/// with HMAC (and where the HMAC is), and the keys of each connection.
struct Expected {
    add_addr_frames: Vec<(usize, usize)>, // (frame index, offset of the carried HMAC's last byte)
    connections: HashMap<FlowKey, ([u8; 8], [u8; 8])>,
    echo_frames: usize,
    /// MP_JOIN frames: (frame index, offset of the option, kind).
    joins: Vec<(usize, usize, JoinKind)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum JoinKind {
    Syn,
    SynAck,
    Ack,
}

/// A join waiting for its next segment: (initiator key, responder key, R-A, R-B).
type PendingJoin = ([u8; 8], [u8; 8], [u8; 4], Option<[u8; 4]>);

fn model(frames: &[Vec<u8>]) -> Expected {
    let mut connections = HashMap::new();
    let mut add_addr_frames = Vec::new();
    let mut echo_frames = 0;
    let mut joins = Vec::new();
    // Pending joins by initiator -> responder subflow.
    let mut pending: HashMap<FlowKey, PendingJoin> = HashMap::new();
    for (i, f) in frames.iter().enumerate() {
        let Ok(seg) = parse_tcp(f.as_slice()) else {
            continue;
        };
        let opts = walk_options(f.as_slice(), &seg);
        if let Some(c) = opts.capable_keys {
            connections
                .entry(seg.flow)
                .or_insert_with(|| read_capable_keys(f.as_slice(), c).unwrap());
        }
        if let Some(opt) = opts.join {
            match read_join(f.as_slice(), opt).unwrap() {
                Join::Syn {
                    token: wire_token,
                    nonce,
                    ..
                } => {
                    // The token names the responder's key.
                    let (ka, kb) = *connections
                        .values()
                        .find(|(ka, kb)| token(ka) == wire_token || token(kb) == wire_token)
                        .unwrap_or_else(|| panic!("frame {i}: MP_JOIN SYN with an unknown token"));
                    let (init, resp) = if token(&kb) == wire_token {
                        (ka, kb)
                    } else {
                        (kb, ka)
                    };
                    pending.insert(seg.flow, (init, resp, nonce, None));
                    joins.push((i, opt.off, JoinKind::Syn));
                }
                Join::SynAck { hmac, nonce, .. } => {
                    let p = pending
                        .get_mut(&seg.flow.reversed())
                        .expect("SYN/ACK without SYN");
                    let digest = hmac_sha256(&p.1, &p.0, &[nonce, p.2].concat());
                    assert_eq!(
                        digest[..8],
                        hmac,
                        "frame {i}: the capture's SYN/ACK HMAC must be genuine"
                    );
                    p.3 = Some(nonce);
                    joins.push((i, opt.off, JoinKind::SynAck));
                }
                Join::Ack { hmac } => {
                    let p = pending.get(&seg.flow).expect("third ACK without SYN");
                    let digest = hmac_sha256(&p.0, &p.1, &[p.2, p.3.unwrap()].concat());
                    assert_eq!(
                        digest[..20],
                        hmac,
                        "frame {i}: the capture's ACK HMAC must be genuine"
                    );
                    joins.push((i, opt.off, JoinKind::Ack));
                }
            }
        }
        if opts.echoes > 0 && opts.add_addrs[0].is_none() {
            echo_frames += 1;
        }
        for opt in opts.add_addrs.into_iter().flatten() {
            let a = read_add_addr(f.as_slice(), opt).unwrap();
            let (ks, kr) = match (
                connections.get(&seg.flow),
                connections.get(&seg.flow.reversed()),
            ) {
                (Some((ka, kb)), _) => (*ka, *kb),
                (None, Some((ka, kb))) => (*kb, *ka),
                _ => panic!("frame {i}: ADD_ADDR before its connection's keys"),
            };
            let alen = if a.family == 4 { 4 } else { 16 };
            let mut msg = vec![a.id];
            msg.extend_from_slice(&a.addr[..alen]);
            msg.extend_from_slice(&a.port);
            let digest = hmac_sha256(&ks, &kr, &msg);
            assert_eq!(
                digest[24..32],
                a.hmac,
                "frame {i}: the capture's HMAC must be genuine"
            );
            add_addr_frames.push((i, opt.off + usize::from(opt.len) - 1));
        }
    }
    Expected {
        add_addr_frames,
        connections,
        echo_frames,
        joins,
    }
}

/// The object is built for BPF CPU v3 (`mptcp-ebpf/bpf-linker-v3`): 32-bit ALU and 32-bit
/// jumps. Never 32-bit ALU without 32-bit jumps (`--cpu-features=+alu32` on v1): LLVM's BPF
/// backend then compared a subprogram's returned 32-bit -1, zero-extended, with a sign-extended
/// -1, and every frame on the general path was counted `mptcp_other` (see `parse_into`).
#[test]
fn object_is_built_for_bpf_cpu_v3() {
    const CLASS_MASK: u8 = 0x07;
    const BPF_ALU: u8 = 0x04;
    const BPF_JMP32: u8 = 0x06;
    const OP_MASK: u8 = 0xf0;
    // Byte swaps are BPF_ALU-class instructions on every CPU version.
    const BPF_END: u8 = 0xd0;
    let object = mptcp_tests::bpf::object_under_test();
    let parsed = aya_obj::Object::parse(&object).expect("parse object");
    let (mut alu32, mut jmp32) = (0usize, 0usize);
    for insn in parsed
        .functions
        .values()
        .flat_map(|f| f.instructions.iter())
    {
        match insn.code & CLASS_MASK {
            BPF_ALU if insn.code & OP_MASK != BPF_END => alu32 += 1,
            BPF_JMP32 => jmp32 += 1,
            _ => {}
        }
    }
    assert!(
        alu32 == 0 || jmp32 > 0,
        "{alu32} 32-bit ALU instructions and no 32-bit jump: built with alu32 on BPF CPU v1, \
         which LLVM miscompiles; build for v3 (mptcp-ebpf/bpf-linker-v3)"
    );
    assert!(
        jmp32 > 0,
        "no 32-bit jump: the object was not built for BPF CPU v3 (mptcp-ebpf/bpf-linker-v3, \
         which mptcp-loader/build.rs makes the linker)"
    );
}

#[test]
fn object_has_every_program_and_map() {
    let ebpf = mptcp_loader::kernel::firewall::object_loader()
        .load(&mptcp_tests::bpf::object_under_test())
        .expect("load object");
    for name in [PROG_XDP_INGRESS, PROG_XDP_PASS_BASELINE] {
        assert!(ebpf.program(name).is_some(), "program {name}");
    }
    // The shared maps as the object defines them (what a run pins), and the per-invocation ones.
    let shared = mptcp_loader::kernel::layout::ObjectLayout::embedded().expect("object layout");
    assert!(
        !shared.maps().is_empty(),
        "the object defines no shared map"
    );
    for name in shared
        .names()
        .chain(mptcp_loader::kernel::layout::PER_INVOCATION_MAPS)
    {
        assert!(ebpf.map(name).is_some(), "map {name}");
    }
}

#[test]
fn captures_replay_genuine_traffic() {
    for capture in CAPTURES {
        let frames = pcap_frames(&fixture(capture));
        let expected = model(&frames);
        let v = Validator::load(MODE_ENFORCE);
        let mut learned = HashSet::new();
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(
                v.run(f),
                XDP_PASS,
                "{capture} frame {i} must pass: {}",
                hex(f)
            );
            learned.extend(v.conns().iter().map(|s| (s.key_a, s.key_b)));
        }
        let c = v.counters();
        assert_eq!(
            c["add_addr_valid"],
            expected.add_addr_frames.len() as u64,
            "{capture}: {c:?}"
        );
        assert_eq!(
            c["add_addr_bad_hmac_dropped"] + c["add_addr_unknown_conn"] + c["untrusted_conn"],
            0,
            "{c:?}"
        );
        assert_eq!(
            c["keys_learned"],
            expected.connections.len() as u64,
            "{capture}: {c:?}"
        );
        assert_eq!(c["keys_conflict"], 0);
        let joins = |k| expected.joins.iter().filter(|j| j.2 == k).count() as u64;
        assert_eq!(
            c["join_syn_known_token"],
            joins(JoinKind::Syn),
            "{capture}: {c:?}"
        );
        assert_eq!(
            c["join_synack_valid"],
            joins(JoinKind::SynAck),
            "{capture}: {c:?}"
        );
        assert_eq!(
            c["join_ack_valid"],
            joins(JoinKind::Ack),
            "{capture}: {c:?}"
        );
        assert_eq!(c["join_state_missing"], 0, "{capture}: {c:?}");
        eprintln!("{capture}: {c:?}");
        assert_eq!(
            c["add_addr_echo"], expected.echo_frames as u64,
            "{capture}: {c:?}"
        );
        let packet_total: u64 = Counter::ALL
            .iter()
            .filter(|c| c.is_packet_reason())
            .map(|k| c[k.name()])
            .sum();
        assert_eq!(
            packet_total,
            frames.len() as u64,
            "one reason per frame: {c:?}"
        );
        // The kernel side learned exactly the keys of every connection, oriented A -> B.
        let want: HashSet<([u8; 8], [u8; 8])> = expected.connections.values().copied().collect();
        assert_eq!(learned, want, "{capture}");
        // Every connection in the capture ends (FIN on both sides or RST on each subflow, or
        // MP_FASTCLOSE). Replayed as ingress, no end is the host's own: a fast-closed
        // connection is gone, every other one is still tracked with each subflow marked
        // closing, until the host's own RST, the loader or the LRU removes it.
        for (key, flow) in v.flows() {
            assert!(
                flow.closing & RST_SEEN != 0 || flow.closing & (FIN_FROM_SRC | FIN_FROM_DST) != 0,
                "{capture}: subflow {key:?} not marked closing: {flow:?}"
            );
        }
        assert_eq!(c["aux_subflow_closed"], 0, "{capture}: {c:?}");
        assert_eq!(
            c["aux_conn_closed"] + v.conns().len() as u64,
            expected.connections.len() as u64,
            "{capture}: {c:?}"
        );
        assert_eq!(
            c["aux_conn_closed"], c["fastclose_valid"],
            "{capture}: {c:?}"
        );
        // Each connection was inserted once: inserted - closed - entries = 0 evictions.
        assert_eq!(
            c["aux_conn_inserted"],
            expected.connections.len() as u64,
            "{capture}: {c:?}"
        );
        // Without a loader, each announcing direction's midstates were computed inline once.
        assert!(c["aux_midstate_computed_inline"] <= 2 * expected.connections.len() as u64);
    }
}

#[test]
fn capture_keys_match_the_protocol_doc() {
    // The values documented for the checked-in capture, also when MPTCP_FIXTURES_DIR points
    // at a new recording.
    let frames = pcap_frames(&checked_in_fixture("linux-6.18-mptcp-mixed.pcap"));
    let v = Validator::load(MODE_ENFORCE);
    let key_a = [0xfd, 0xcf, 0x3c, 0x40, 0xbd, 0x10, 0x4a, 0x60];
    let key_b = [0x06, 0x0f, 0x78, 0x48, 0x4a, 0xb9, 0x85, 0xd8];
    let mut seen = false;
    for f in &frames {
        v.run(f);
        seen |= v
            .conns()
            .iter()
            .any(|s| s.key_a == key_a && s.key_b == key_b);
    }
    assert!(seen, "doc §7.4 keys");
    assert_eq!(
        model(&frames).add_addr_frames.len(),
        14,
        "fixture README: 14 ADD_ADDR with HMAC"
    );
}

#[test]
fn flipped_hmac_bits_are_dropped_in_enforce_and_counted_in_monitor() {
    for capture in CAPTURES {
        let frames = pcap_frames(&fixture(capture));
        let expected = model(&frames);
        for mode in [MODE_ENFORCE, MODE_MONITOR] {
            let v = Validator::load(mode);
            let mut forged = 0u64;
            for (i, f) in frames.iter().enumerate() {
                if let Some(&(_, last)) = expected.add_addr_frames.iter().find(|(j, _)| *j == i) {
                    for bit in [0u8, 7] {
                        let mut bad = f.clone();
                        bad[last - (bit as usize % 8)] ^= 1 << bit;
                        let want = if mode == MODE_ENFORCE {
                            XDP_DROP
                        } else {
                            XDP_PASS
                        };
                        assert_eq!(v.run(&bad), want, "{capture} frame {i} bit {bit}");
                        forged += 1;
                    }
                }
                assert_eq!(v.run(f), XDP_PASS, "{capture} genuine frame {i}");
            }
            let c = v.counters();
            let (dropped, would) = (
                c["add_addr_bad_hmac_dropped"],
                c["add_addr_bad_hmac_would_drop"],
            );
            if mode == MODE_ENFORCE {
                assert_eq!((dropped, would), (forged, 0), "{c:?}");
            } else {
                assert_eq!((dropped, would), (0, forged), "{c:?}");
            }
            assert_eq!(c["add_addr_valid"], expected.add_addr_frames.len() as u64);
        }
    }
}

#[test]
fn loader_installed_midstates_give_the_same_verdicts() {
    let frames = pcap_frames(&fixture("linux-6.18-mptcp-mixed.pcap"));
    let expected = model(&frames);
    // Learn the keys, let the loader's code install midstates, then replay the ADD_ADDRs.
    let mut v = Validator::load(MODE_ENFORCE);
    for f in &frames {
        if parse_tcp(f.as_slice())
            .is_ok_and(|s| walk_options(f.as_slice(), &s).capable_keys.is_some())
        {
            v.run(f);
        }
    }
    v.install_midstates();
    assert!(v.conns().iter().all(|s| s.ready == READY_A | READY_B));
    for &(i, last) in &expected.add_addr_frames {
        assert_eq!(v.run(&frames[i]), XDP_PASS, "frame {i}");
        let mut bad = frames[i].clone();
        bad[last] ^= 0x80;
        assert_eq!(v.run(&bad), XDP_DROP, "frame {i} flipped");
    }
    let c = v.counters();
    assert_eq!(c["aux_midstate_computed_inline"], 0, "{c:?}");
    assert_eq!(c["add_addr_valid"], expected.add_addr_frames.len() as u64);
}

// ---- Hand-made frames ---------------------------------------------------------------------

fn mpc_ab() -> Vec<u8> {
    mpc_third_ack(&KEY_A, &KEY_B)
}

/// An E=0 ADD_ADDR from A (or from B) of the hand-made connection, with a correct HMAC.
fn add_addr_from(from_a: bool, id: u8, addr: &[u8], port: Option<u16>) -> Vec<u8> {
    if from_a {
        add_addr(&KEY_A, &KEY_B, id, addr, port)
    } else {
        add_addr(&KEY_B, &KEY_A, id, addr, port)
    }
}

fn v6_addr() -> Vec<u8> {
    let mut a = vec![0x20, 0x01, 0x0d, 0xb8];
    a.extend_from_slice(&[0; 11]);
    a.push(2);
    a
}

/// Each encapsulation the parser must see through: learn keys A -> B, then an ADD_ADDR in each
/// direction and each address form is valid, and the same with a flipped bit is dropped.
#[test]
fn encapsulations_vlan_ipv4_options_ipv6_extension_headers() {
    let mut cases: Vec<(&str, Frame)> = vec![
        ("ipv4", Frame::v4(&[])),
        ("ipv6", Frame::v6(&[])),
        (
            "802.1Q",
            Frame {
                vlans: vec![7],
                ..Frame::v4(&[])
            },
        ),
        (
            "802.1ad+802.1Q",
            Frame {
                vlans: vec![7, 8],
                ..Frame::v6(&[])
            },
        ),
        (
            "ipv4 options",
            Frame {
                ip_opts: vec![0x94, 4, 0, 0, 1, 1, 1, 0],
                ..Frame::v4(&[])
            },
        ),
        (
            "ipv6 hop-by-hop, destination options, routing",
            Frame {
                v6_ext: vec![
                    (0, vec![1, 4, 0, 0, 0, 0]),
                    (60, vec![0; 14]),
                    (43, vec![0; 6]),
                ],
                ..Frame::v6(&[])
            },
        ),
    ];
    for (name, base) in cases.drain(..) {
        let v = Validator::load(MODE_ENFORCE);
        // The 802.1ad outer tag has its own EtherType (the builder writes 802.1Q tags).
        let bytes = |f: &Frame| {
            let mut b = f.bytes();
            if name.starts_with("802.1ad") {
                b[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
            }
            b
        };
        assert_eq!(
            v.run(&bytes(&base.with_opts(&mpc_ab()))),
            XDP_PASS,
            "{name}: MPC"
        );
        let announcements = [
            (true, add_addr_from(true, 1, &[10, 0, 0, 2], None)),
            (false, add_addr_from(false, 1, &[10, 0, 0, 2], Some(8080))),
            (true, add_addr_from(true, 3, &v6_addr(), None)),
        ];
        for (from_a, opt) in &announcements {
            let frame = if *from_a {
                base.with_opts(opt)
            } else {
                base.reversed(opt)
            };
            assert_eq!(
                v.run(&bytes(&frame)),
                XDP_PASS,
                "{name}: genuine ADD_ADDR {}",
                hex(opt)
            );
            let mut bad = opt.clone();
            *bad.last_mut().unwrap() ^= 1;
            let frame = if *from_a {
                base.with_opts(&bad)
            } else {
                base.reversed(&bad)
            };
            assert_eq!(v.run(&bytes(&frame)), XDP_DROP, "{name}: forged ADD_ADDR");
        }
        let c = v.counters();
        assert_eq!(
            (
                c["keys_learned"],
                c["add_addr_valid"],
                c["add_addr_bad_hmac_dropped"]
            ),
            (1, 3, 3),
            "{name}: {c:?}"
        );
    }
}

#[test]
fn ipv6_port_announcement_matches_the_doc_vector() {
    // Doc §7.4: Key-A 7397c812405c860a, Key-B e1f7b1b13e45bef0; the server (B) announced id 5
    // [2001:db8::3]:10200 with HMAC e35ef13e3306ab38 (a 30-byte option, timestamps off).
    let (ka, kb) = (
        [0x73, 0x97, 0xc8, 0x12, 0x40, 0x5c, 0x86, 0x0a],
        [0xe1, 0xf7, 0xb1, 0xb1, 0x3e, 0x45, 0xbe, 0xf0],
    );
    let mut mpc = vec![30, 20, 0x01, 0x01];
    mpc.extend_from_slice(&ka);
    mpc.extend_from_slice(&kb);
    let base = Frame::v6(&mpc);
    let opt: Vec<u8> = (0..30)
        .map(|i| {
            u8::from_str_radix(
                &"1e1e300520010db8000000000000000000000003 27d8 e35ef13e3306ab38".replace(' ', "")
                    [i * 2..i * 2 + 2],
                16,
            )
            .unwrap()
        })
        .collect();
    let v = Validator::load(MODE_ENFORCE);
    assert_eq!(v.run(&base.bytes()), XDP_PASS);
    assert_eq!(v.run(&base.reversed(&opt).bytes()), XDP_PASS);
    assert_eq!(v.counters()["add_addr_valid"], 1);
}

#[test]
fn unknown_connections_and_echoes_pass() {
    let v = Validator::load(MODE_ENFORCE);
    let forged = add_addr_from(true, 1, &[10, 0, 0, 2], None);
    assert_eq!(
        v.run(&Frame::v4(&forged).bytes()),
        XDP_PASS,
        "fail-open without keys"
    );
    let echo = [30, 8, 0x31, 1, 10, 0, 0, 2];
    assert_eq!(v.run(&Frame::v4(&echo).bytes()), XDP_PASS);
    let c = v.counters();
    assert_eq!(
        (c["add_addr_unknown_conn"], c["add_addr_echo"]),
        (1, 1),
        "{c:?}"
    );
}

#[test]
fn truncated_frames_pass_and_are_counted() {
    let base = Frame::v4(&mpc_ab());
    let genuine = base
        .with_opts(&add_addr_from(true, 1, &[10, 0, 0, 2], None))
        .bytes();
    let mut forged = genuine.clone();
    *forged.last_mut().unwrap() ^= 1;
    let v = Validator::load(MODE_ENFORCE);
    v.run(&base.bytes());
    // BPF_PROG_TEST_RUN needs at least an Ethernet header.
    for cut in 14..forged.len() {
        assert_eq!(v.run(&forged[..cut]), XDP_PASS, "cut at {cut}");
    }
    let c = v.counters();
    assert_eq!(c["truncated"], (forged.len() - 14) as u64, "{c:?}");
    assert_eq!(v.run(&forged), XDP_DROP);
    assert_eq!(v.run(&genuine), XDP_PASS);
}

#[test]
fn hostile_option_lengths_pass_as_malformed() {
    let v = Validator::load(MODE_ENFORCE);
    v.run(&Frame::v4(&mpc_ab()).bytes());
    let bad_hmac = {
        let mut o = add_addr_from(true, 1, &[10, 0, 0, 2], None);
        o[15] ^= 1;
        o
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("kind 30 length 0", vec![30, 0, 0x30, 1]),
        ("kind 30 length 1", vec![30, 1, 0x30, 1]),
        ("length past the header end", vec![30, 40, 0x30, 1]),
        ("other option length 0", vec![8, 0, 0, 0]),
        (
            "E=0 at an echo length (v0 style)",
            vec![30, 8, 0x34, 1, 10, 0, 0, 2],
        ),
        ("E=1 at an HMAC length", {
            let mut o = bad_hmac.clone();
            o[2] = 0x31;
            o
        }),
        ("ADD_ADDR of length 17", {
            let mut o = bad_hmac.clone();
            o[1] = 17;
            o.push(0);
            o
        }),
        ("ADD_ADDR length 3", vec![30, 3, 0x30, 1]),
        ("MPC keys with the B flag", {
            let mut o = mpc_ab();
            o[3] = 0x41;
            o
        }),
        ("MPC keys version 0", {
            let mut o = mpc_ab();
            o[2] = 0x00;
            o
        }),
    ];
    for (name, opts) in &cases {
        assert_eq!(v.run(&Frame::v4(opts).bytes()), XDP_PASS, "{name}");
    }
    let c = v.counters();
    assert_eq!(c["malformed"], cases.len() as u64, "{c:?}");
    // A malformed option before a forged ADD_ADDR does not hide it.
    let mut opts = vec![30, 3, 0x50];
    opts.extend_from_slice(&bad_hmac);
    assert_eq!(v.run(&Frame::v4(&opts).bytes()), XDP_DROP);
    // Two ADD_ADDRs in one segment: the forged second one is found.
    let mut opts = add_addr_from(true, 1, &[10, 0, 0, 2], None);
    opts.extend_from_slice(&bad_hmac);
    assert_eq!(v.run(&Frame::v4(&opts).bytes()), XDP_DROP);
    let mut opts = bad_hmac.clone();
    opts.extend_from_slice(&add_addr_from(true, 1, &[10, 0, 0, 2], None));
    assert_eq!(v.run(&Frame::v4(&opts).bytes()), XDP_DROP);
}

#[test]
fn key_conflict_marks_the_connection_untrusted() {
    let v = Validator::load(MODE_ENFORCE);
    let base = Frame::v4(&mpc_ab());
    v.run(&base.bytes());
    let mut other = mpc_ab();
    other[19] ^= 1; // a different Key-B on the same subflow
    assert_eq!(v.run(&base.with_opts(&other).bytes()), XDP_PASS);
    let mut bad = add_addr_from(true, 1, &[10, 0, 0, 2], None);
    bad[15] ^= 1;
    assert_eq!(
        v.run(&base.with_opts(&bad).bytes()),
        XDP_PASS,
        "untrusted keys never drop"
    );
    let c = v.counters();
    assert_eq!((c["keys_conflict"], c["untrusted_conn"]), (1, 1), "{c:?}");
}

#[test]
fn syn_with_mp_capable_is_not_key_learning() {
    let v = Validator::load(MODE_ENFORCE);
    let mut syn = Frame::v4(&mpc_ab());
    syn.flags |= TCP_SYN;
    assert_eq!(v.run(&syn.bytes()), XDP_PASS);
    assert_eq!(v.counters()["keys_learned"], 0);
}

// ---- MP_JOIN ------------------------------------------------------------------------------

/// Flips one bit of an MP_JOIN field: the SYN's token, the SYN/ACK's truncated HMAC, the third
/// ACK's 160-bit HMAC. Each forged frame replaces the genuine one in the replay.
#[test]
fn forged_joins_are_dropped_in_enforce_and_counted_in_monitor() {
    for capture in CAPTURES {
        let frames = pcap_frames(&fixture(capture));
        let expected = model(&frames);
        for kind in [JoinKind::Syn, JoinKind::SynAck, JoinKind::Ack] {
            for mode in [MODE_ENFORCE, MODE_MONITOR] {
                let v = Validator::load(mode);
                let mut forged = 0u64;
                for (i, f) in frames.iter().enumerate() {
                    if let Some(&(_, off, _)) =
                        expected.joins.iter().find(|j| j.0 == i && j.2 == kind)
                    {
                        // Token at opt[4..8), SYN/ACK HMAC at opt[4..12), ACK HMAC at opt[4..24).
                        let mut bad = f.clone();
                        bad[off + 5] ^= 0x10;
                        let want = if mode == MODE_ENFORCE {
                            XDP_DROP
                        } else {
                            XDP_PASS
                        };
                        assert_eq!(v.run(&bad), want, "{capture} frame {i} {kind:?}");
                        forged += 1;
                    }
                    assert_eq!(v.run(f), XDP_PASS, "{capture} genuine frame {i}");
                }
                let c = v.counters();
                let (dropped, would) = match kind {
                    JoinKind::Syn => (
                        "join_syn_unknown_token_dropped",
                        "join_syn_unknown_token_would_drop",
                    ),
                    JoinKind::SynAck => (
                        "join_synack_bad_hmac_dropped",
                        "join_synack_bad_hmac_would_drop",
                    ),
                    JoinKind::Ack => ("join_ack_bad_hmac_dropped", "join_ack_bad_hmac_would_drop"),
                };
                let want = if mode == MODE_ENFORCE {
                    (forged, 0)
                } else {
                    (0, forged)
                };
                assert!(forged > 0, "{capture} has {kind:?} frames");
                assert_eq!((c[dropped], c[would]), want, "{capture} {kind:?}: {c:?}");
                // The genuine handshakes still validate after the forged copies.
                assert_eq!(
                    c["join_ack_valid"],
                    expected
                        .joins
                        .iter()
                        .filter(|j| j.2 == JoinKind::Ack)
                        .count() as u64
                );
            }
        }
    }
}

#[test]
fn retransmitted_third_acks_pass_and_count_the_subflow_once() {
    let frames = pcap_frames(&fixture("linux-6.18-mptcp-mixed.pcap"));
    let expected = model(&frames);
    let (first_ack, _, _) = *expected
        .joins
        .iter()
        .find(|j| j.2 == JoinKind::Ack)
        .unwrap();
    let v = Validator::load(MODE_ENFORCE);
    for f in &frames[..=first_ack] {
        v.run(f);
    }
    let subflows = |v: &Validator| v.conns().iter().map(|s| s.subflows).sum::<u32>();
    let before = subflows(&v);
    for _ in 0..3 {
        assert_eq!(v.run(&frames[first_ack]), XDP_PASS);
    }
    assert_eq!(
        subflows(&v),
        before,
        "a retransmission is not a new subflow"
    );
    assert!(v.counters()["join_ack_valid"] >= 4);
}

/// A join arriving at the initiator without a SYN the program saw, or at the responder without
/// its SYN/ACK: nothing to check against, so it passes and is counted.
#[test]
fn joins_without_handshake_state_pass() {
    let v = Validator::load(MODE_ENFORCE);
    let synack = [30, 16, 0x10, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9];
    let mut f = Frame::v4(&synack);
    f.flags |= TCP_SYN;
    assert_eq!(v.run(&f.bytes()), XDP_PASS);
    let ack: Vec<u8> = [30, 24, 0x10, 0].iter().copied().chain([7u8; 20]).collect();
    assert_eq!(v.run(&Frame::v4(&ack).bytes()), XDP_PASS);
    assert_eq!(v.counters()["join_state_missing"], 2);
}

/// Keys learned from a crafted MP_CAPABLE, then a join SYN with each token, a SYN/ACK and a
/// third ACK built with the hmac crate: the subflow joins its connection, and an ADD_ADDR on the
/// new subflow validates with the connection's keys.
#[test]
fn joined_subflow_carries_validated_add_addrs() {
    let v = Validator::load(MODE_ENFORCE);
    let initial = Frame::v4(&mpc_ab());
    v.run(&initial.bytes());
    // B (the server) joins A's second address: SYN from B with A's token.
    let mut sub = Frame::v4(&[]);
    sub.src = initial.dst;
    sub.dst = {
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[198, 18, 9, 1]);
        d
    };
    sub.ports = (50000, 40001);
    let (ra, rb) = ([0xa1, 0xa2, 0xa3, 0xa4], [0xb1, 0xb2, 0xb3, 0xb4]);
    let token_a = token(&KEY_A);
    let mut syn = sub.with_opts(&[&[30u8, 12, 0x10, 2][..], &token_a, &ra].concat());
    syn.flags = TCP_SYN;
    assert_eq!(v.run(&syn.bytes()), XDP_PASS);
    // SYN/ACK from A: HMAC(Key-A || Key-B, R-A' || R-B') where A' = responder = host A.
    let thmac = hmac_sha256(&KEY_A, &KEY_B, &[rb, ra].concat());
    let mut synack = sub.reversed(&[&[30u8, 16, 0x10, 1][..], &thmac[..8], &rb].concat());
    synack.flags = TCP_SYN | mptcp_common::packet::TCP_ACK;
    assert_eq!(v.run(&synack.bytes()), XDP_PASS, "genuine SYN/ACK");
    let hmac = hmac_sha256(&KEY_B, &KEY_A, &[ra, rb].concat());
    let ack = sub.with_opts(&[&[30u8, 24, 0x10, 0][..], &hmac[..20]].concat());
    assert_eq!(v.run(&ack.bytes()), XDP_PASS, "genuine third ACK");
    let c = v.counters();
    assert_eq!(
        (
            c["join_syn_known_token"],
            c["join_synack_valid"],
            c["join_ack_valid"]
        ),
        (1, 1, 1),
        "{c:?}"
    );
    assert_eq!(v.conns()[0].subflows, 2);
    // ADD_ADDR from A on the new subflow (A is the destination of `sub`).
    let genuine = add_addr_from(true, 4, &[198, 18, 9, 9], None);
    assert_eq!(v.run(&sub.reversed(&genuine).bytes()), XDP_PASS);
    let mut forged = genuine.clone();
    forged[15] ^= 1;
    assert_eq!(v.run(&sub.reversed(&forged).bytes()), XDP_DROP);
    // The peer's RST on the joined subflow only marks it; the host's own RST (egress) on it,
    // then on the initial one, ends them: the connection is forgotten.
    let mut rst = sub.with_opts(&[]);
    rst.flags = mptcp_common::packet::TCP_RST;
    v.run(&rst.bytes());
    assert_eq!(v.conns()[0].subflows, 2);
    let mut own_rst = sub.reversed(&[]);
    own_rst.flags = mptcp_common::packet::TCP_RST;
    v.run_egress(&own_rst.bytes());
    assert_eq!(v.conns()[0].subflows, 1);
    let mut rst = initial.reversed(&[]);
    rst.flags = mptcp_common::packet::TCP_RST;
    v.run_egress(&rst.bytes());
    assert!(v.conns().is_empty());
    // Its tokens went with it: a SYN with token A is now unknown.
    assert_eq!(v.run(&syn.bytes()), XDP_DROP);
}

#[test]
fn fastclose_needs_the_receivers_key() {
    let v = Validator::load(MODE_ENFORCE);
    let initial = Frame::v4(&mpc_ab());
    v.run(&initial.bytes());
    // From A to B it must carry Key-B.
    let wrong: Vec<u8> = [&[30u8, 12, 0x70, 0][..], &KEY_A].concat();
    assert_eq!(v.run(&initial.with_opts(&wrong).bytes()), XDP_DROP);
    assert_eq!(v.conns().len(), 1);
    let right: Vec<u8> = [&[30u8, 12, 0x70, 0][..], &KEY_B].concat();
    assert_eq!(v.run(&initial.with_opts(&right).bytes()), XDP_PASS);
    assert!(v.conns().is_empty());
    let c = v.counters();
    assert_eq!(
        (
            c["fastclose_bad_key_dropped"],
            c["fastclose_valid"],
            c["aux_conn_closed"],
            c["aux_conn_inserted"]
        ),
        (1, 1, 1, 1),
        "{c:?}"
    );
}

// ---- Policy, rate limits, drop events -----------------------------------------------------

fn set_config(v: &mut Validator, config: Config) {
    v.set_config(config);
}

/// BPF_PROG_TEST_RUN runs XDP as if the frame arrived on the loopback device (ifindex 1).
const TEST_RUN_IFINDEX: u32 = 1;

#[test]
fn interface_mode_overrides_the_global_mode() {
    let mut v = Validator::load(MODE_ENFORCE);
    let base = Frame::v4(&mpc_ab());
    v.run(&base.bytes());
    let mut forged = add_addr_from(true, 1, &[10, 0, 0, 2], None);
    forged[15] ^= 1;
    assert_eq!(v.run(&base.with_opts(&forged).bytes()), XDP_DROP);
    let mut modes: aya::maps::HashMap<_, u32, u32> =
        aya::maps::HashMap::try_from(v.ebpf.map_mut(mptcp_common::maps::MAP_IFACE_MODES).unwrap())
            .unwrap();
    modes.insert(TEST_RUN_IFINDEX, MODE_MONITOR, 0).unwrap();
    assert_eq!(v.run(&base.with_opts(&forged).bytes()), XDP_PASS);
    let c = v.counters();
    assert_eq!(
        (
            c["add_addr_bad_hmac_dropped"],
            c["add_addr_bad_hmac_would_drop"]
        ),
        (1, 1),
        "{c:?}"
    );
}

#[test]
fn fail_closed_drops_signalling_of_unknown_connections() {
    let mut v = Validator::load(MODE_ENFORCE);
    set_config(
        &mut v,
        Config {
            mode: MODE_ENFORCE,
            unknown_conn: mptcp_common::maps::UNKNOWN_DROP,
            ..Config::default()
        },
    );
    let genuine_looking = add_addr_from(true, 1, &[10, 0, 0, 2], None);
    assert_eq!(
        v.run(&Frame::v4(&genuine_looking).bytes()),
        XDP_DROP,
        "no keys known"
    );
    let ack: Vec<u8> = [30u8, 24, 0x10, 0]
        .iter()
        .copied()
        .chain([7u8; 20])
        .collect();
    assert_eq!(v.run(&Frame::v4(&ack).bytes()), XDP_DROP, "no join state");
    // A known connection is judged as usual.
    let base = Frame {
        ports: (1000, 2000),
        ..Frame::v4(&mpc_ab())
    };
    v.run(&base.bytes());
    assert_eq!(v.run(&base.with_opts(&genuine_looking).bytes()), XDP_PASS);
    let c = v.counters();
    assert_eq!(
        (c["unknown_conn_dropped"], c["add_addr_valid"]),
        (2, 1),
        "{c:?}"
    );
}

#[test]
fn address_policy_drops_announcements_outside_the_allow_lists() {
    use aya::maps::lpm_trie::{Key, LpmTrie};
    use mptcp_common::maps::{
        ADDR_POLICY_PORTS, ADDR_POLICY_PREFIXES, MAP_ALLOW_PORTS, MAP_ALLOW_V4, MAP_ALLOW_V6,
    };
    let mut v = Validator::load(MODE_ENFORCE);
    set_config(
        &mut v,
        Config {
            mode: MODE_ENFORCE,
            addr_policy: ADDR_POLICY_PREFIXES | ADDR_POLICY_PORTS,
            ..Config::default()
        },
    );
    let mut v4: LpmTrie<_, [u8; 4], u8> =
        LpmTrie::try_from(v.ebpf.map_mut(MAP_ALLOW_V4).unwrap()).unwrap();
    v4.insert(&Key::new(15, [198, 18, 0, 0]), 1, 0).unwrap();
    let mut v6: LpmTrie<_, [u8; 16], u8> =
        LpmTrie::try_from(v.ebpf.map_mut(MAP_ALLOW_V6).unwrap()).unwrap();
    v6.insert(
        &Key::new(
            32,
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        1,
        0,
    )
    .unwrap();
    let mut ports: aya::maps::HashMap<_, [u8; 2], u8> =
        aya::maps::HashMap::try_from(v.ebpf.map_mut(MAP_ALLOW_PORTS).unwrap()).unwrap();
    ports.insert([0, 0], 1, 0).unwrap();
    ports.insert(8080u16.to_be_bytes(), 1, 0).unwrap();
    let base = Frame::v4(&mpc_ab());
    v.run(&base.bytes());
    let cases: [(&str, Vec<u8>, u32); 5] = [
        (
            "allowed prefix, no port",
            add_addr_from(true, 1, &[198, 19, 1, 1], None),
            XDP_PASS,
        ),
        (
            "allowed prefix and port",
            add_addr_from(true, 1, &[198, 18, 1, 1], Some(8080)),
            XDP_PASS,
        ),
        (
            "allowed IPv6 prefix",
            add_addr_from(true, 3, &v6_addr(), None),
            XDP_PASS,
        ),
        (
            "outside the prefixes, valid HMAC",
            add_addr_from(true, 1, &[10, 0, 0, 2], None),
            XDP_DROP,
        ),
        (
            "port not allowed, valid HMAC",
            add_addr_from(true, 1, &[198, 18, 1, 1], Some(22)),
            XDP_DROP,
        ),
    ];
    for (name, opt, want) in &cases {
        assert_eq!(v.run(&base.with_opts(opt).bytes()), *want, "{name}");
    }
    let c = v.counters();
    assert_eq!(
        (c["add_addr_valid"], c["add_addr_policy_dropped"]),
        (3, 2),
        "{c:?}"
    );
}

#[test]
fn join_syn_rate_limit_per_source() {
    let mut v = Validator::load(MODE_ENFORCE);
    set_config(
        &mut v,
        Config {
            mode: MODE_ENFORCE,
            join_syn_rate: 10,
            join_syn_burst: 2,
            ..Config::default()
        },
    );
    let base = Frame::v4(&mpc_ab());
    v.run(&base.bytes());
    let mut syn = Frame {
        ports: (50000, 10000),
        ..Frame::v4(&mptcp_tests::mptcp_frames::join_syn(
            1,
            &token(&KEY_B),
            &[1, 2, 3, 4],
        ))
    };
    syn.flags = TCP_SYN;
    // Blind joins from the same address (a token nobody announced) are dropped as such and do
    // not spend the budget of the address they spoof.
    let mut blind = Frame {
        ports: (50001, 10000),
        ..Frame::v4(&mptcp_tests::mptcp_frames::join_syn(
            1,
            &[0xde, 0xad, 0xbe, 0xef],
            &[1, 2, 3, 4],
        ))
    };
    blind.flags = TCP_SYN;
    let blind_verdicts: Vec<u32> = (0..5).map(|_| v.run(&blind.bytes())).collect();
    assert_eq!(blind_verdicts, [XDP_DROP; 5]);
    let verdicts: Vec<u32> = (0..8).map(|_| v.run(&syn.bytes())).collect();
    // One, plus a burst of two, within the same instant; the rest wait for the rate.
    assert_eq!(
        verdicts,
        [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP, XDP_DROP, XDP_DROP, XDP_DROP]
    );
    // Another source is not affected.
    let mut other = syn.clone();
    other.src[3] = 77;
    assert_eq!(v.run(&other.bytes()), XDP_PASS);
    let c = v.counters();
    assert_eq!(
        (
            c["join_syn_known_token"],
            c["join_syn_rate_limited_dropped"],
            c["join_syn_unknown_token_dropped"]
        ),
        (4, 5, 5),
        "{c:?}"
    );
}

#[test]
fn drop_events_describe_each_drop_within_the_event_rate() {
    use aya::maps::RingBuf;
    use mptcp_common::maps::{DropEvent, MAP_DROP_EVENTS};
    let mut v = Validator::load(MODE_ENFORCE);
    set_config(
        &mut v,
        Config {
            mode: MODE_ENFORCE,
            event_rate: 1,
            event_burst: 2,
            ..Config::default()
        },
    );
    let base = Frame::v4(&mpc_ab());
    v.run(&base.bytes());
    let mut forged = add_addr_from(true, 9, &[198, 18, 3, 66], Some(4242));
    *forged.last_mut().unwrap() ^= 1;
    let frame = base.with_opts(&forged).bytes();
    let mut syn = Frame::v4(&mptcp_tests::mptcp_frames::join_syn(
        1,
        &[0xde, 0xad, 0xbe, 0xef],
        &[1, 2, 3, 4],
    ));
    syn.flags = TCP_SYN;
    assert_eq!(v.run(&frame), XDP_DROP);
    assert_eq!(v.run(&syn.bytes()), XDP_DROP);
    for _ in 0..10 {
        assert_eq!(v.run(&frame), XDP_DROP);
    }
    let c = v.counters();
    // Rate 1/s with a burst of 2: three events in the same instant, the other nine counted.
    assert_eq!(
        (c["aux_drop_event_sent"], c["aux_drop_event_rate_limited"]),
        (3, 9),
        "{c:?}"
    );
    let mut ring: RingBuf<_> = RingBuf::try_from(v.ebpf.map_mut(MAP_DROP_EVENTS).unwrap()).unwrap();
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<DropEvent>());
        // SAFETY: the record has the size of a DropEvent, which is Pod.
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) });
    }
    assert_eq!(events.len(), 3);
    let add = &events[0];
    assert_eq!(add.reason, Counter::AddAddrBadHmacDropped as u32);
    assert_eq!(
        (add.dropped, add.announced_family, add.announced_id),
        (1, 4, 9)
    );
    assert_eq!(
        (&add.announced_addr[..4], add.announced_port),
        (&[198, 18, 3, 66][..], 4242u16.to_be_bytes())
    );
    assert_eq!(usize::from(add.frame_len), frame.len());
    assert_eq!(
        &add.snap[..usize::from(add.snap_len)],
        &frame[..usize::from(add.snap_len)]
    );
    assert_eq!(usize::from(add.snap_len), frame.len().min(128));
    let join = &events[1];
    assert_eq!(
        (join.reason, join.token, join.announced_family),
        (
            Counter::JoinSynUnknownTokenDropped as u32,
            [0xde, 0xad, 0xbe, 0xef],
            0
        )
    );
    assert_eq!(&join.flow.saddr[..4], &[198, 18, 0, 1]);
}

/// An ADD_ADDR's tag depends on the keys and the message only: computed once, then judged from
/// the cache (`aux_add_addr_tag_cached`), a forgery repeated as cheaply as a retransmission, with
/// the same verdicts.
#[test]
fn repeated_add_addrs_are_judged_from_the_tag_cache() {
    let v = Validator::load(MODE_ENFORCE);
    let base = Frame::v4(&mpc_ab());
    v.run(&base.bytes());
    let genuine = add_addr_from(true, 3, &[198, 18, 7, 7], Some(8080));
    let mut forged = genuine.clone();
    forged[17] ^= 0x40;
    for _ in 0..10 {
        assert_eq!(v.run(&base.with_opts(&forged).bytes()), XDP_DROP);
    }
    assert_eq!(v.run(&base.with_opts(&genuine).bytes()), XDP_PASS);
    // The same message from the other host is another tag (the keys swap).
    let from_b = add_addr_from(false, 3, &[198, 18, 7, 7], Some(8080));
    assert_eq!(v.run(&base.reversed(&from_b).bytes()), XDP_PASS);
    let mut forged_b = from_b.clone();
    forged_b[17] ^= 0x40;
    assert_eq!(v.run(&base.reversed(&forged_b).bytes()), XDP_DROP);
    let c = v.counters();
    assert_eq!(
        (
            c["add_addr_bad_hmac_dropped"],
            c["add_addr_valid"],
            c["aux_add_addr_tag_cached"]
        ),
        (11, 2, 11),
        "{c:?}"
    );
}

/// With a crypto budget on (`Config::crypto_rate`), what a flood can make the fast path compute
/// is bounded: per connection (uncached ADD_ADDRs), per pending join, per CPU. Over it, the
/// segment is dropped without crypto (`crypto_budget_dropped`); a cached tag still judges.
#[test]
fn crypto_budgets_bound_what_a_flood_makes_the_fast_path_compute() {
    let budget = |crypto_rate| Config {
        mode: MODE_ENFORCE,
        crypto_rate,
        ..Config::default()
    };
    let mut v = Validator::load(MODE_ENFORCE);
    // A per-CPU budget far above the connection's, which binds: about CONN_CRYPTO_BURST + 1.
    set_config(&mut v, budget(1_000_000));
    let base = Frame::v4(&mpc_ab());
    v.run(&base.bytes());
    let genuine = add_addr_from(true, 1, &[198, 18, 9, 1], None);
    assert_eq!(v.run(&base.with_opts(&genuine).bytes()), XDP_PASS);
    for i in 0..100u8 {
        let mut forged = add_addr_from(true, 2, &[198, 18, 10, i], None);
        forged[15] ^= 1;
        assert_eq!(v.run(&base.with_opts(&forged).bytes()), XDP_DROP);
    }
    let c = v.counters();
    let computed = c["add_addr_bad_hmac_dropped"];
    assert_eq!(computed + c["crypto_budget_dropped"], 100, "{c:?}");
    let burst = u64::from(mptcp_common::maps::CONN_CRYPTO_BURST);
    assert!(
        (burst - 1..=burst + 2).contains(&computed),
        "{computed} computed: {c:?}"
    );
    // Its cached tag still judges the genuine announcement, budget or not.
    assert_eq!(v.run(&base.with_opts(&genuine).bytes()), XDP_PASS);

    // A pending join: JOIN_CHECKS_MAX third-ACK checks, then no more.
    let mut sub = Frame::v4(&[]);
    sub.ports = (40100, 10000);
    let mut syn = sub.with_opts(&join_syn(2, &token(&KEY_B), &[1, 2, 3, 4]));
    syn.flags = TCP_SYN;
    v.run(&syn.bytes());
    let mut synack = sub.reversed(&join_synack(
        2,
        &KEY_B,
        &KEY_A,
        &[5, 6, 7, 8],
        &[1, 2, 3, 4],
    ));
    synack.flags = TCP_SYN | mptcp_common::packet::TCP_ACK;
    v.run_egress(&synack.bytes());
    let before = v.counters();
    for _ in 0..10 {
        let ack = sub.with_opts(&[&[30u8, 24, 0x10, 0][..], &[7u8; 20]].concat());
        assert_eq!(v.run(&ack.bytes()), XDP_DROP);
    }
    let c = v.counters();
    assert_eq!(
        c["join_ack_bad_hmac_dropped"] - before["join_ack_bad_hmac_dropped"],
        u64::from(mptcp_common::maps::JOIN_CHECKS_MAX),
        "{c:?}"
    );

    // A per-CPU budget of 10 a second (a burst of 1): two checks, then none.
    let mut v = Validator::load(MODE_ENFORCE);
    set_config(&mut v, budget(10));
    v.run(&base.bytes());
    for i in 0..20u8 {
        let mut forged = add_addr_from(true, 2, &[198, 18, 11, i], None);
        forged[15] ^= 1;
        assert_eq!(v.run(&base.with_opts(&forged).bytes()), XDP_DROP);
    }
    let c = v.counters();
    assert_eq!(
        (c["add_addr_bad_hmac_dropped"], c["crypto_budget_dropped"]),
        (2, 18),
        "{c:?}"
    );
}
