//! Differential test (root only): the same frames go through the eBPF programs
//! (BPF_PROG_TEST_RUN) and through the host reference (`mptcp_common::model::Model`); verdict
//! and reason must agree for every frame, state carried over from frame to frame on both sides.
//!
//! Frames: the Linux captures; synthetic MPTCP sessions (handshakes, ADD_ADDRs, joins, fast
//! closes, FIN/RST, an attacker's MP_CAPABLEs with other keys, second join SYNs with other
//! nonces, SYNs on a tracked 4-tuple, genuine and forged, over IPv4/IPv6, with VLAN tags and
//! extension headers);
//! and structure-aware mutations of both (option bytes and lengths, IP header length, data
//! offset, VLAN tags, IPv6 extension headers, truncation). Some frames go through the egress
//! program. The configuration changes between rounds (modes, fail-closed, address policy).
//!
//! `MPTCP_DIFF_FRAMES` sets the number of frames (default 30000; `cargo xtask test --long` runs
//! 1,000,000). `MPTCP_DIFF_SEED` replays a run.

#![allow(
    clippy::cast_possible_truncation,
    reason = "random frame fields cut from a random u64 by `as`, on purpose"
)]

use mptcp_common::{
    counters::Counter,
    maps::{
        Config, ADDR_POLICY_PORTS, ADDR_POLICY_PREFIXES, MODE_ENFORCE, MODE_MONITOR, UNKNOWN_DROP,
        UNKNOWN_PASS,
    },
    model::Model,
    packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    testing::{fixture, pcap_frames, Frame},
};
use mptcp_tests::{
    bpf::{hex, pin_to_cpu, BpfValidator, TC_ACT_UNSPEC, XDP_DROP, XDP_PASS},
    mptcp_frames::{
        add_addr, dss, join_ack, join_syn, join_synack, mpc_third_ack, timestamps, token,
    },
};

/// xorshift64*: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.next() as u8)
    }
}

/// BPF_PROG_TEST_RUN runs XDP as if on the loopback device (ifindex 1).
const TEST_RUN_IFINDEX: u32 = 1;
const CPU: usize = 0;

/// One synthetic MPTCP connection and what has been said on it.
struct Session {
    base: Frame,
    key_a: [u8; 8],
    key_b: [u8; 8],
    /// A join subflow: frame oriented initiator -> responder, and whether A initiates.
    join: Frame,
    a_initiates: bool,
    nonces: ([u8; 4], [u8; 4]),
}

impl Session {
    fn new(rng: &mut Rng) -> Self {
        let mut base = if rng.chance(70) {
            Frame::v4(&[])
        } else {
            Frame::v6(&[])
        };
        base.src[..4].copy_from_slice(if base.v6 {
            &[0x20, 0x01, 0x0d, 0xb8]
        } else {
            &[198, 18, 0, 0]
        });
        base.src[if base.v6 { 15 } else { 3 }] = rng.below(250) as u8 + 1;
        base.ports = (
            rng.below(60000) as u16 + 1024,
            [80, 443, 10000][rng.below(3)],
        );
        if rng.chance(10) {
            base.vlans = vec![7];
        }
        if base.v6 && rng.chance(15) {
            base.v6_ext = vec![(60, vec![0; 6])];
        }
        if !base.v6 && rng.chance(10) {
            base.ip_opts = vec![1, 1, 1, 0];
        }
        let a_initiates = rng.chance(50);
        let mut join = base.clone();
        join.ports = (rng.below(60000) as u16 + 1024, base.ports.1);
        if !a_initiates {
            join = join.reversed(&[]);
        }
        Session {
            base,
            key_a: rng.bytes(),
            key_b: rng.bytes(),
            join,
            a_initiates,
            nonces: (rng.bytes(), rng.bytes()),
        }
    }

    /// Keys of the join's initiator and responder.
    fn join_keys(&self) -> ([u8; 8], [u8; 8]) {
        if self.a_initiates {
            (self.key_a, self.key_b)
        } else {
            (self.key_b, self.key_a)
        }
    }

    /// One frame of this session, picked at random, genuine or forged; and whether it goes out
    /// through egress.
    fn frame(&self, rng: &mut Rng) -> (Vec<u8>, bool) {
        let ts = if rng.chance(50) { timestamps() } else { vec![] };
        let with = |f: &Frame, opt: &[u8]| f.with_opts(&[ts.clone(), opt.to_vec()].concat());
        let forge = |opt: &mut Vec<u8>, rng: &mut Rng| {
            let i = 4 + rng.below(opt.len() - 4);
            opt[i] ^= 1 << rng.below(8);
        };
        let (init_key, resp_key) = self.join_keys();
        let (r_init, r_resp) = self.nonces;
        let egress = rng.chance(15);
        let frame = match rng.below(15) {
            0 | 1 => with(&self.base, &mpc_third_ack(&self.key_a, &self.key_b)),
            2 | 3 => {
                let from_a = rng.chance(50);
                let (ks, kr) = if from_a {
                    (self.key_a, self.key_b)
                } else {
                    (self.key_b, self.key_a)
                };
                let addr: Vec<u8> = if rng.chance(70) {
                    vec![198, 18, 9, rng.below(255) as u8]
                } else {
                    [&[0x20u8, 0x01, 0x0d, 0xb8][..], &[0; 11], &[9]].concat()
                };
                let port = if rng.chance(30) {
                    Some([0u16, 22, 8080][rng.below(3)])
                } else {
                    None
                };
                let mut opt = add_addr(&ks, &kr, rng.below(8) as u8, &addr, port);
                if rng.chance(40) {
                    forge(&mut opt, rng);
                }
                let f = if from_a {
                    self.base.clone()
                } else {
                    self.base.reversed(&[])
                };
                with(&f, &opt)
            }
            4 => {
                let tok = if rng.chance(80) {
                    token(&resp_key)
                } else {
                    rng.bytes()
                };
                let mut f = with(&self.join, &join_syn(1, &tok, &r_init));
                f.flags = TCP_SYN;
                f
            }
            5 => {
                let mut opt = join_synack(2, &resp_key, &init_key, &r_resp, &r_init);
                if rng.chance(30) {
                    forge(&mut opt, rng);
                }
                let mut f = with(&self.join.reversed(&[]), &opt);
                f.flags = TCP_SYN | TCP_ACK;
                f
            }
            6 => {
                let mut opt = join_ack(&init_key, &resp_key, &r_init, &r_resp);
                if rng.chance(30) {
                    forge(&mut opt, rng);
                }
                with(&self.join, &opt)
            }
            7 => {
                let key = if rng.chance(70) {
                    self.key_b
                } else {
                    self.key_a
                };
                with(&self.base, &[&[30u8, 12, 0x70, 0][..], &key].concat())
            }
            8 => {
                let mut f = if rng.chance(50) {
                    self.base.with_opts(&ts)
                } else {
                    self.join.with_opts(&ts)
                };
                if rng.chance(50) {
                    f = f.reversed(&ts);
                }
                f.flags = if rng.chance(50) {
                    TCP_FIN | TCP_ACK
                } else {
                    TCP_RST
                };
                f
            }
            9 => with(&self.base, &[30, 8, 0x31, 1, 198, 18, 9, 9]),
            // An attacker's MP_CAPABLE: other keys on the subflow (either way), or Key-A of
            // the connection with another Key-B on the join's 4-tuple.
            10 => {
                if rng.chance(50) {
                    let f = if rng.chance(50) {
                        self.base.clone()
                    } else {
                        self.base.reversed(&[])
                    };
                    with(&f, &mpc_third_ack(&rng.bytes(), &rng.bytes()))
                } else {
                    with(&self.join, &mpc_third_ack(&self.key_a, &rng.bytes()))
                }
            }
            // A join SYN with another nonce on the join's 4-tuple.
            11 => {
                let mut f = with(&self.join, &join_syn(1, &token(&resp_key), &rng.bytes()));
                f.flags = TCP_SYN;
                f
            }
            // An MP_CAPABLE SYN or SYN/ACK on the connection's 4-tuple (the host's own, when
            // it goes through egress: a new connection there).
            12 => {
                let mut f = if rng.chance(50) {
                    with(&self.base, &[30, 4, 0x01, 0x01])
                } else {
                    with(
                        &self.base.reversed(&[]),
                        &[&[30u8, 12, 0x01, 0x01][..], &self.key_b].concat(),
                    )
                };
                f.flags = if f.src == self.base.src {
                    TCP_SYN
                } else {
                    TCP_SYN | TCP_ACK
                };
                f
            }
            _ => with(
                if rng.chance(50) {
                    &self.base
                } else {
                    &self.join
                },
                &dss(),
            ),
        };
        (frame.bytes(), egress)
    }
}

/// A structure-aware mutation of a frame.
fn mutate(frame: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut f = frame.to_vec();
    let n = 1 + rng.below(3);
    for _ in 0..n {
        match rng.below(7) {
            // Any byte past the MAC addresses (headers and options alike).
            0 | 1 => {
                if f.len() > 12 {
                    let i = 12 + rng.below(f.len() - 12);
                    f[i] ^= 1 << rng.below(8);
                }
            }
            // A TCP option length or kind byte, near the end (where options usually are).
            2 | 3 => {
                if f.len() > 40 {
                    let i = f.len() - 1 - rng.below(40.min(f.len() - 34));
                    f[i] = [0, 1, 2, 3, 30, 40, 255, rng.next() as u8][rng.below(8)];
                }
            }
            // Truncate.
            4 => {
                let keep = 14 + rng.below(f.len().saturating_sub(14).max(1));
                f.truncate(keep.max(14));
            }
            // Insert a VLAN tag (802.1Q or 802.1ad).
            5 => {
                let tag: [u8; 4] = if rng.chance(50) {
                    [0x81, 0x00, 0, 5]
                } else {
                    [0x88, 0xa8, 0, 6]
                };
                f.splice(12..12, tag);
            }
            // IPv4 IHL or TCP data offset nibble, wherever they are.
            _ => {
                let i = 14
                    + rng
                        .below(f.len().saturating_sub(14).max(1))
                        .min(f.len().saturating_sub(15));
                if i < f.len() {
                    f[i] = (f[i] & 0x0f) | ((rng.below(16) as u8) << 4);
                }
            }
        }
    }
    if f.len() < 14 {
        f.resize(14, 0);
    }
    f
}

fn config_for_round(round: usize) -> (Config, Option<u32>) {
    let mut c = Config {
        mode: MODE_ENFORCE,
        ..Config::default()
    };
    match round % 5 {
        1 => c.mode = MODE_MONITOR,
        2 => c.unknown_conn = UNKNOWN_DROP,
        3 => c.addr_policy = ADDR_POLICY_PREFIXES | ADDR_POLICY_PORTS,
        _ => c.unknown_conn = UNKNOWN_PASS,
    }
    // Round 4: the interface runs in monitor mode while the global mode enforces.
    let iface_mode = (round % 5 == 4).then_some(MODE_MONITOR);
    (c, iface_mode)
}

fn apply_policy(v: &mut BpfValidator, model: &mut Model) {
    use aya::maps::lpm_trie::{Key, LpmTrie};
    use mptcp_common::maps::{MAP_ALLOW_PORTS, MAP_ALLOW_V4, MAP_ALLOW_V6};
    let mut v4: LpmTrie<_, [u8; 4], u8> =
        LpmTrie::try_from(v.ebpf.map_mut(MAP_ALLOW_V4).unwrap()).unwrap();
    v4.insert(&Key::new(24, [198, 18, 9, 0]), 1, 0).unwrap();
    model.allow_v4 = vec![([198, 18, 9, 0], 24)];
    let mut v6: LpmTrie<_, [u8; 16], u8> =
        LpmTrie::try_from(v.ebpf.map_mut(MAP_ALLOW_V6).unwrap()).unwrap();
    let p6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    v6.insert(&Key::new(32, p6), 1, 0).unwrap();
    model.allow_v6 = vec![(p6, 32)];
    let mut ports: aya::maps::HashMap<_, [u8; 2], u8> =
        aya::maps::HashMap::try_from(v.ebpf.map_mut(MAP_ALLOW_PORTS).unwrap()).unwrap();
    for p in [[0u8, 0], 8080u16.to_be_bytes()] {
        ports.insert(p, 1, 0).unwrap();
    }
    model.allow_ports = vec![[0, 0], 8080u16.to_be_bytes()];
}

#[test]
fn ebpf_and_reference_agree_on_every_frame() {
    let total: usize = std::env::var("MPTCP_DIFF_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let seed: u64 = std::env::var("MPTCP_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001);
    pin_to_cpu(CPU);
    let mut rng = Rng(seed);
    let captures: Vec<Vec<u8>> = [
        "linux-6.18-mptcp-mixed.pcap",
        "linux-6.18-mptcp-v6-backup-csum.pcap",
    ]
    .iter()
    .flat_map(|c| pcap_frames(&fixture(c)))
    .collect();
    let rounds = 10;
    let per_round = total.div_ceil(rounds);
    let (mut done, mut dropped, mut reasons) = (
        0usize,
        0usize,
        std::collections::BTreeMap::<&str, usize>::new(),
    );
    for round in 0..rounds {
        let (config, iface_mode) = config_for_round(round);
        let mut v = BpfValidator::load(config.mode);
        v.set_config(config);
        let mut model = Model::new(config);
        if let Some(mode) = iface_mode {
            let mut modes: aya::maps::HashMap<_, u32, u32> = aya::maps::HashMap::try_from(
                v.ebpf.map_mut(mptcp_common::maps::MAP_IFACE_MODES).unwrap(),
            )
            .unwrap();
            modes.insert(TEST_RUN_IFINDEX, mode, 0).unwrap();
            model.iface_modes.insert(TEST_RUN_IFINDEX, mode);
        }
        if config.addr_policy != 0 {
            apply_policy(&mut v, &mut model);
        }
        let sessions: Vec<Session> = (0..24).map(|_| Session::new(&mut rng)).collect();
        let mut check = |frame: &[u8], egress: bool, what: &str| {
            let want = model.classify(frame, TEST_RUN_IFINDEX, egress);
            if egress {
                let action = v.run_egress(frame);
                assert_eq!(
                    action,
                    TC_ACT_UNSPEC,
                    "egress must never give a verdict ({what}): {}",
                    hex(frame)
                );
                let got = v.last_reason(CPU);
                // The egress program counts every frame as `egress`; its reason is still there.
                assert_eq!(
                    got,
                    want,
                    "egress reason differs ({what}, round {round}, frame {done}): {}",
                    hex(frame)
                );
            } else {
                let action = v.run(frame);
                let got = v.last_reason(CPU);
                if got != want {
                    // Say what the model knew of a join's token, the usual suspect.
                    if let Ok(seg) = mptcp_common::packet::parse_tcp(frame) {
                        let opts = mptcp_common::packet::walk_options(frame, &seg);
                        let join = opts
                            .join
                            .and_then(|o| mptcp_common::packet::read_join(frame, o));
                        if let Some(mptcp_common::packet::Join::Syn { token, .. }) = join {
                            eprintln!("model: {}", model.describe_token(&token));
                        }
                    }
                }
                assert_eq!(
                    got,
                    want,
                    "reason differs ({what}, round {round}, frame {done}, seed {seed}): {}",
                    hex(frame)
                );
                let want_action = if Model::drops(want) {
                    XDP_DROP
                } else {
                    XDP_PASS
                };
                assert_eq!(
                    action,
                    want_action,
                    "verdict differs ({what}): {}",
                    hex(frame)
                );
                dropped += usize::from(action == XDP_DROP);
            }
            *reasons.entry(want.name()).or_default() += 1;
            done += 1;
        };
        if round == 0 {
            for f in &captures {
                check(f, false, "capture");
            }
        }
        for _ in 0..per_round {
            match rng.below(10) {
                0 => {
                    let f = mutate(&captures[rng.below(captures.len())], &mut rng);
                    check(&f, false, "mutated capture");
                }
                1..=3 => {
                    // Ingress only: BPF_PROG_TEST_RUN of tc refuses some malformed skbs.
                    let (f, _) = sessions[rng.below(sessions.len())].frame(&mut rng);
                    let f = mutate(&f, &mut rng);
                    check(&f, false, "mutated session");
                }
                _ => {
                    let (f, egress) = sessions[rng.below(sessions.len())].frame(&mut rng);
                    check(&f, egress, "session");
                }
            }
        }
    }
    eprintln!(
        "differential: {done} frames agree (seed {seed}); {dropped} dropped; reasons: {reasons:?}"
    );
    assert!(done >= total);
    // The mix must exercise the decisions that matter, or agreement proves little.
    for name in [
        "keys_learned",
        "add_addr_valid",
        "add_addr_bad_hmac_dropped",
        "join_synack_valid",
        "join_ack_valid",
        "join_syn_unknown_token_dropped",
        "malformed",
        "truncated",
        "fastclose_valid",
        "untrusted_conn",
    ] {
        assert!(
            reasons.get(name).copied().unwrap_or(0) > 0,
            "no frame counted as {name}: {reasons:?}"
        );
    }
    let _ = Counter::ALL;
}
