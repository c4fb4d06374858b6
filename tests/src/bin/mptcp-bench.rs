//! `cargo xtask bench`: per-packet cost of the fast path with BPF_PROG_TEST_RUN, as ratios to a
//! trivial XDP_PASS program measured in the same run (and, for the HMAC classes, to native Rust
//! doing the same check from the same midstates), plus verifier statistics and map memory.
//!
//! Writes `<out>/bench.md` (table, machine, command line) and `<out>/bench.svg` (chart).

use std::{
    fmt::Write as _,
    hint::black_box,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
    time::Duration,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use clap::Parser;
use mptcp_common::{
    counters::Counter,
    hmac::{join_block, midstate, Midstate},
    maps::{
        Config, ConnState, FlowKey, FlowRef, JoinState, TokenRef, MAP_CONFIG, MAP_CONNS,
        MAP_COUNTERS, MAP_FLOWS, MAP_JOINS, MAP_TOKENS, MODE_ENFORCE, PROG_TC_EGRESS,
        PROG_XDP_PARSE_REFERENCE, PROG_XDP_PASS_BASELINE,
    },
    packet::{TCP_ACK, TCP_SYN},
    sha256::Block,
    testing::Frame,
    validate::add_addr_block,
};
use mptcp_loader::kernel::firewall::{object_loader, xdp_ingress_program};
use mptcp_tests::mptcp_frames::{
    add_addr, dss, join_ack, join_syn, join_synack, mpc_third_ack, timestamps, token, KEY_A, KEY_B,
};
use mptcp_tests::svg::Svg;

#[derive(Parser)]
#[command(about = "Per-packet cost of the MPTCP fast path (BPF_PROG_TEST_RUN)")]
struct Args {
    /// Rounds per class; the median is reported.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// BPF_PROG_TEST_RUN repeat count per round (>= 100000 for published numbers).
    #[arg(long, default_value_t = 100_000)]
    repeat: u32,
    /// Connections for the memory measurement (map sizes are set to this).
    #[arg(long, default_value_t = 1_000_000)]
    memory_conns: u32,
    /// Output folder.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Few repetitions, for CI: checks the command works, claims nothing.
    #[arg(long)]
    quick: bool,
    /// Measure another build of the eBPF object instead of the embedded one (A/B comparisons).
    #[arg(long, value_name = "PATH")]
    object: Option<PathBuf>,
}

const XDP_PASS: u32 = 2;
const XDP_DROP: u32 = 1;

struct Class {
    name: &'static str,
    frame: Vec<u8>,
    expect: u32,
    /// Native reference: the HMAC check this class does, from the same midstates.
    native: Option<(Midstate, Block)>,
}

/// One class's medians, ns per packet.
struct Row {
    name: &'static str,
    /// The trivial XDP_PASS program.
    base: f64,
    /// The plain reference parser (absent from objects built before it existed).
    reference: Option<f64>,
    /// The validator.
    prog: f64,
    /// Native Rust doing the same HMAC check.
    native: Option<f64>,
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o[..4].copy_from_slice(&a);
    o
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.rounds = 1;
        args.repeat = 1000;
        args.memory_conns = 1000;
    }
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let object = match &args.object {
        Some(path) => std::fs::read(path)?,
        None => mptcp_loader::EBPF_OBJ.to_vec(),
    };
    let mut ebpf = object_loader().load(&object)?;
    for name in [xdp_ingress_program(), PROG_XDP_PASS_BASELINE] {
        let prog: &mut Xdp = ebpf.program_mut(name).expect(name).try_into()?;
        prog.load()?;
    }
    // Absent from objects built before it existed; an older kernel's verifier may refuse it
    // (it is written plainly, not for the verifier): then the reference column stays empty.
    let has_reference = match ebpf.program_mut(PROG_XDP_PARSE_REFERENCE) {
        Some(prog) => {
            let prog: &mut Xdp = prog.try_into()?;
            match prog.load() {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("mptcp-bench: no reference column: {PROG_XDP_PARSE_REFERENCE} does not load here: {e}");
                    false
                }
            }
        }
        None => false,
    };
    let tc: &mut SchedClassifier = ebpf.program_mut(PROG_TC_EGRESS).expect("tc").try_into()?;
    tc.load()?;
    let mut config: Array<_, Config> = Array::try_from(ebpf.map_mut(MAP_CONFIG).expect("config"))?;
    config.set(
        0,
        Config {
            mode: MODE_ENFORCE,
            ..Config::default()
        },
        0,
    )?;

    // One connection A -> B on the initial subflow, keys installed the way the loader does it.
    let initial = Frame {
        tcp_opts: timestamps(),
        ..Frame::v4(&[])
    };
    let with = |f: &Frame, opts: &[u8]| f.with_opts(&[timestamps(), opts.to_vec()].concat());
    run_once(
        &ebpf,
        &with(&initial, &mpc_third_ack(&KEY_A, &KEY_B)).bytes(),
        XDP_PASS,
    );
    install_midstates(&mut ebpf)?;
    // A join subflow B -> A's second address (B initiates), for the join classes.
    let mut sub = Frame::v4(&[]);
    sub.src = initial.dst;
    sub.dst = v4([198, 18, 9, 1]);
    sub.ports = (50000, 40001);
    let (r_init, r_resp) = ([0xa1, 0xa2, 0xa3, 0xa4], [0xb1, 0xb2, 0xb3, 0xb4]);
    let mut syn = with(&sub, &join_syn(2, &token(&KEY_A), &r_init));
    syn.flags = TCP_SYN;
    let mut synack = sub.reversed(
        &[
            timestamps(),
            join_synack(0, &KEY_A, &KEY_B, &r_resp, &r_init),
        ]
        .concat(),
    );
    synack.flags = TCP_SYN | TCP_ACK;
    let ack = with(&sub, &join_ack(&KEY_B, &KEY_A, &r_init, &r_resp));
    for f in [&syn, &synack, &ack] {
        run_once(&ebpf, &f.bytes(), XDP_PASS);
    }
    let mut unknown_syn = with(&sub, &join_syn(2, &[9, 9, 9, 9], &r_init));
    unknown_syn.flags = TCP_SYN;

    let mid_a = midstate(&KEY_A, &KEY_B);
    let mid_b = midstate(&KEY_B, &KEY_A);
    let v6_addr: Vec<u8> = [&[0x20u8, 0x01, 0x0d, 0xb8][..], &[0; 11], &[2]].concat();
    let add4 = add_addr(&KEY_A, &KEY_B, 1, &[198, 18, 5, 5], None);
    let add6 = add_addr(&KEY_A, &KEY_B, 3, &v6_addr, None);
    let native_add = |opt: &[u8]| {
        let f = Frame::v4(opt).bytes();
        let seg = mptcp_common::packet::parse_tcp(f.as_slice()).unwrap();
        let o = mptcp_common::packet::walk_options(f.as_slice(), &seg);
        let a = mptcp_common::packet::read_add_addr(f.as_slice(), o.add_addrs[0].unwrap()).unwrap();
        (mid_a, add_addr_block(&a))
    };
    let mut bad = add4.clone();
    bad[15] ^= 1;
    let mut udp = Frame::v4(&[]).bytes();
    udp[14 + 9] = 17;
    let classes = vec![
        Class {
            name: "UDP",
            frame: udp,
            expect: XDP_PASS,
            native: None,
        },
        Class {
            name: "TCP, no options",
            frame: Frame::v4(&[]).bytes(),
            expect: XDP_PASS,
            native: None,
        },
        Class {
            name: "TCP, timestamps",
            frame: initial.bytes(),
            expect: XDP_PASS,
            native: None,
        },
        Class {
            name: "MPTCP DSS (+TS)",
            frame: not_sampled(with(&initial, &dss()).bytes()),
            expect: XDP_PASS,
            native: None,
        },
        Class {
            name: "MP_CAPABLE third ACK, known",
            frame: with(&initial, &mpc_third_ack(&KEY_A, &KEY_B)).bytes(),
            expect: XDP_PASS,
            native: None,
        },
        Class {
            name: "ADD_ADDR IPv4, valid",
            frame: with(&initial, &add4).bytes(),
            expect: XDP_PASS,
            native: Some(native_add(&add4)),
        },
        Class {
            name: "ADD_ADDR IPv6, valid",
            frame: Frame::v4(&add6).bytes(),
            expect: XDP_PASS,
            native: Some(native_add(&add6)),
        },
        Class {
            name: "ADD_ADDR IPv4, wrong HMAC",
            frame: with(&initial, &bad).bytes(),
            expect: XDP_DROP,
            native: Some(native_add(&add4)),
        },
        Class {
            name: "ADD_ADDR, unknown connection",
            frame: with(
                &Frame {
                    ports: (1, 2),
                    ..initial.clone()
                },
                &add4,
            )
            .bytes(),
            expect: XDP_PASS,
            native: None,
        },
        Class {
            name: "MP_JOIN SYN, known token",
            frame: syn.bytes(),
            expect: XDP_PASS,
            native: None,
        },
        Class {
            name: "MP_JOIN SYN, unknown token",
            frame: unknown_syn.bytes(),
            expect: XDP_DROP,
            native: None,
        },
        Class {
            name: "MP_JOIN SYN/ACK",
            frame: synack.bytes(),
            expect: XDP_PASS,
            native: Some((mid_a, join_block(&r_resp, &r_init))),
        },
        Class {
            name: "MP_JOIN third ACK",
            frame: ack.bytes(),
            expect: XDP_PASS,
            native: Some((mid_b, join_block(&r_init, &r_resp))),
        },
        Class {
            name: "malformed options",
            frame: Frame::v4(&[30, 1, 0x30, 0]).bytes(),
            expect: XDP_PASS,
            native: None,
        },
    ];
    // The SYN/ACK test frame must not be re-validated against a state the SYN rewrote: re-run the
    // handshake so the pending state matches, as the loop below repeats each frame.
    let mut rows = Vec::new();
    for class in &classes {
        if class.name.starts_with("MP_JOIN SYN/ACK") || class.name.starts_with("MP_JOIN third") {
            for f in [&syn, &synack] {
                run_once(&ebpf, &f.bytes(), XDP_PASS);
            }
        }
        let mut base = Vec::new();
        let mut reference = Vec::new();
        let mut prog = Vec::new();
        for _ in 0..args.rounds {
            base.push(ns_per_packet(
                &ebpf,
                PROG_XDP_PASS_BASELINE,
                &class.frame,
                args.repeat,
                XDP_PASS,
            ));
            if has_reference {
                reference.push(ns_per_packet(
                    &ebpf,
                    PROG_XDP_PARSE_REFERENCE,
                    &class.frame,
                    args.repeat,
                    XDP_PASS,
                ));
            }
            prog.push(ns_per_packet(
                &ebpf,
                xdp_ingress_program(),
                &class.frame,
                args.repeat,
                class.expect,
            ));
        }
        let native = class.native.map(|(mid, block)| {
            median(
                (0..args.rounds)
                    .map(|_| native_ns(&mid, &block, args.repeat))
                    .collect(),
            )
        });
        rows.push(Row {
            name: class.name,
            base: median(base),
            reference: has_reference.then(|| median(reference)),
            prog: median(prog),
            native,
        });
    }
    let learn_ns = learn_new_connections(&ebpf, if args.quick { 100 } else { 2000 });
    let first_sight = first_sight_add_addrs(
        &ebpf,
        &initial,
        if args.quick { 100 } else { 2000 },
        (mid_a, native_add(&add4).1),
        args.repeat,
    );
    let (verifier, memory) = (
        verifier_stats(&ebpf)?,
        memory_per_connection(args.memory_conns)?,
    );
    write_report(
        &args,
        &command_line,
        &rows,
        (learn_ns, first_sight),
        &verifier,
        &memory,
    )?;
    Ok(())
}

/// The frame with a sequence number that makes it one of the 15 in 16 DSS segments that do not
/// refresh their subflow's activity (`mptcp_common::packet::everyday` samples on seq + ack; the
/// builder writes both as 0, which samples): the everyday cost, as most segments pay it.
fn not_sampled(mut frame: Vec<u8>) -> Vec<u8> {
    const SEQ: usize = 14 + 20 + 4; // untagged IPv4
    frame[SEQ..SEQ + 4].copy_from_slice(&0x80u32.to_be_bytes());
    frame
}

/// What a failed verdict assertion prints: the frame's TCP options (where every class differs).
fn frame_summary(frame: &[u8]) -> String {
    let opts = mptcp_common::packet::parse_tcp(frame)
        .map(|seg| frame[seg.opts_start..seg.opts_end].to_vec());
    format!("a frame with TCP options {opts:02x?}")
}

/// The counters one more run of `prog` on `frame` moves, for a failed verdict assertion.
fn counters_of_one_run(ebpf: &Ebpf, prog: &Xdp, frame: &[u8]) -> String {
    let read = || -> Vec<u64> {
        let counters: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(ebpf.map(MAP_COUNTERS).expect("counters")).expect("per-CPU");
        Counter::ALL
            .iter()
            .map(|c| counters.get(&(*c as u32), 0).map_or(0, |v| v.iter().sum()))
            .collect()
    };
    let before = read();
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    };
    let verdict = prog.test_run(opts).map(|r| r.return_value);
    let moved: Vec<String> = Counter::ALL
        .iter()
        .zip(before.iter().zip(read()))
        .filter(|(_, (b, a))| a != *b)
        .map(|(c, (b, a))| format!("{} +{}", c.name(), a - b))
        .collect();
    format!("[{}] (verdict {verdict:?})", moved.join(", "))
}

fn run_once(ebpf: &Ebpf, frame: &[u8], expect: u32) {
    let prog: &Xdp = ebpf
        .program(xdp_ingress_program())
        .unwrap()
        .try_into()
        .unwrap();
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    };
    let r = prog.test_run(opts).expect("test_run");
    assert_eq!(r.return_value, expect, "setup frame");
}

fn ns_per_packet(ebpf: &Ebpf, name: &str, frame: &[u8], repeat: u32, expect: u32) -> f64 {
    let prog: &Xdp = ebpf.program(name).unwrap().try_into().unwrap();
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::default()
    };
    let r = prog.test_run(opts).expect("test_run");
    assert!(
        r.return_value == expect,
        "{name} returned {} instead of {expect} on {}; one more run counts {}",
        r.return_value,
        frame_summary(frame),
        counters_of_one_run(ebpf, prog, frame)
    );
    // The kernel reports the mean duration of one run.
    r.duration.as_secs_f64() * 1e9
}

/// CPU time of the calling thread, in seconds. BPF_PROG_TEST_RUN leaves out the time the test
/// loop was scheduled out, so the native reference must too on a busy machine.
fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Native Rust, no SHA CPU extensions (sha2 built with force-soft): the same 2 compressions.
fn native_ns(mid: &Midstate, block: &Block, repeat: u32) -> f64 {
    let bytes: Vec<u8> = block.iter().flat_map(|w| w.to_be_bytes()).collect();
    let start = thread_cpu_seconds();
    for _ in 0..repeat {
        let mut inner = black_box(mid.inner);
        sha2::compress256(&mut inner, &[*generic_array(&bytes)]);
        let mut outer_block = [0u8; 64];
        for (i, w) in inner.iter().enumerate() {
            outer_block[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        outer_block[32] = 0x80;
        outer_block[62..].copy_from_slice(&0x300u16.to_be_bytes());
        let mut outer = mid.outer;
        sha2::compress256(&mut outer, &[*generic_array(&outer_block)]);
        black_box(outer);
    }
    (thread_cpu_seconds() - start) * 1e9 / f64::from(repeat)
}

fn generic_array(
    bytes: &[u8],
) -> &sha2::digest::generic_array::GenericArray<u8, sha2::digest::consts::U64> {
    sha2::digest::generic_array::GenericArray::from_slice(bytes)
}

/// Learning a new connection changes state, so it is timed one run at a time (repeat = 1) with
/// fresh keys each time: the MP_CAPABLE third ACK plus the inline token derivation.
fn learn_new_connections(ebpf: &Ebpf, n: u32) -> f64 {
    let prog: &Xdp = ebpf
        .program(xdp_ingress_program())
        .unwrap()
        .try_into()
        .unwrap();
    let mut total = Duration::ZERO;
    for i in 0..n {
        let mut key_a = KEY_A;
        key_a[..4].copy_from_slice(&(i + 1000).to_be_bytes());
        let mut f = Frame::v4(&mpc_third_ack(&key_a, &KEY_B));
        f.ports = (u16::try_from(10_000 + i % 50_000).unwrap(), 443);
        f.src[3] = u8::try_from(i % 250).unwrap();
        let bytes = f.bytes();
        let opts = TestRunOptions {
            data_in: Some(&bytes),
            ..TestRunOptions::default()
        };
        total += prog.test_run(opts).expect("test_run").duration;
    }
    total.as_secs_f64() * 1e9 / f64::from(n)
}

/// A forged ADD_ADDR the fast path has not seen before: the uncached check (two compressions
/// and the tag cache insert). Timed one run at a time with a fresh address each, next to the
/// XDP_PASS program on the same frames (the per-run timer overhead) and native Rust; returns
/// (validator ns, XDP_PASS ns, native ns).
fn first_sight_add_addrs(
    ebpf: &Ebpf,
    initial: &Frame,
    n: u32,
    native: (Midstate, Block),
    repeat: u32,
) -> (f64, f64, f64) {
    let time = |name: &str, frame: &[u8], expect: u32| {
        let prog: &Xdp = ebpf.program(name).unwrap().try_into().unwrap();
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..TestRunOptions::default()
        };
        let r = prog.test_run(opts).expect("test_run");
        assert_eq!(r.return_value, expect, "{name}");
        r.duration
    };
    let (mut prog, mut base) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let addr = [
            198,
            19,
            u8::try_from(i / 250).unwrap(),
            u8::try_from(i % 250).unwrap(),
        ];
        let mut opt = add_addr(&KEY_A, &KEY_B, 5, &addr, None);
        opt[15] ^= 1;
        let frame = initial.with_opts(&[timestamps(), opt].concat()).bytes();
        base += time(PROG_XDP_PASS_BASELINE, &frame, XDP_PASS);
        prog += time(xdp_ingress_program(), &frame, XDP_DROP);
    }
    let per = |d: Duration| d.as_secs_f64() * 1e9 / f64::from(n);
    (
        per(prog),
        per(base),
        native_ns(&native.0, &native.1, repeat),
    )
}

fn install_midstates(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut conns: BpfHashMap<&mut MapData, u64, ConnState> =
        BpfHashMap::try_from(ebpf.map_mut(MAP_CONNS).unwrap())?;
    let all: Vec<(u64, ConnState)> = conns.iter().collect::<Result<_, _>>()?;
    for (id, state) in all {
        let material = mptcp_loader::conn::keys::derive(&state.key_a, &state.key_b);
        conns.insert(
            id,
            mptcp_loader::conn::keys::with_midstates(&state, &material),
            0,
        )?;
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Verifier {
    name: &'static str,
    verified_insns: Option<u32>,
    xlated_bytes: Option<u32>,
    jited_bytes: u32,
}

fn verifier_stats(ebpf: &Ebpf) -> anyhow::Result<Vec<Verifier>> {
    let mut out = Vec::new();
    for name in [
        xdp_ingress_program(),
        PROG_TC_EGRESS,
        PROG_XDP_PASS_BASELINE,
    ] {
        let info = ebpf.program(name).unwrap().info()?;
        out.push(Verifier {
            name,
            verified_insns: info.verified_instruction_count(),
            xlated_bytes: info.size_translated(),
            jited_bytes: info.size_jitted(),
        });
    }
    Ok(out)
}

/// Kernel memory of the maps that hold per-connection state, sized for `conns` connections
/// (LRU hash maps are preallocated), read from the maps' fdinfo `memlock`.
struct Memory {
    conns: u32,
    per_map: Vec<(&'static str, u32, u64)>,
    payload_per_conn: usize,
}

fn memory_per_connection(conns: u32) -> anyhow::Result<Memory> {
    let sizes = [
        (MAP_CONNS, conns),
        (MAP_FLOWS, conns),
        (MAP_TOKENS, 2 * conns),
        (MAP_JOINS, 16_384),
    ];
    let mut loader = object_loader();
    for (name, n) in sizes {
        loader.map_max_entries(name, n);
    }
    let ebpf = loader.load(mptcp_loader::EBPF_OBJ)?;
    let mut per_map = Vec::new();
    for (name, n) in sizes {
        let map = ebpf.map(name).expect(name);
        let fd = match map {
            aya::maps::Map::LruHashMap(m) => m.fd().as_fd().as_raw_fd(),
            _ => anyhow::bail!("{name} is not an LRU hash map"),
        };
        let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
        let memlock = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        per_map.push((name, n, memlock));
    }
    // Key + value bytes of one connection with one subflow: CONNS, FLOWS, two TOKENS entries.
    let payload_per_conn = 8
        + size_of::<ConnState>()
        + size_of::<FlowKey>()
        + size_of::<FlowRef>()
        + 2 * (4 + size_of::<TokenRef>());
    let _ = size_of::<JoinState>();
    Ok(Memory {
        conns,
        per_map,
        payload_per_conn,
    })
}

fn write_report(
    args: &Args,
    command_line: &str,
    rows: &[Row],
    (learn_ns, (first_ns, first_base_ns, first_native_ns)): (f64, (f64, f64, f64)),
    verifier: &[Verifier],
    memory: &Memory,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_string();
    let mut md = String::new();
    writeln!(md, "# Fast-path cost (BPF_PROG_TEST_RUN)\n")?;
    writeln!(md, "- Command: `{command_line}`")?;
    writeln!(
        md,
        "- Machine: {cpu}, {} CPUs, kernel {kernel}",
        std::thread::available_parallelism().map_or(0, usize::from)
    )?;
    writeln!(md, "- Method: median of {} rounds of repeat = {}; each round runs the trivial XDP_PASS program and then the validator on the same frame. Ratios use the baseline of the same round set. Native = the same two SHA-256 compressions from the same midstates in Rust (`sha2` with `force-soft`, no SHA CPU extensions), timed in thread CPU time (BPF_PROG_TEST_RUN also leaves out time scheduled out).", args.rounds, args.repeat)?;
    if args.quick {
        writeln!(
            md,
            "- **Quick run (CI): too few repetitions for any claim.**"
        )?;
    }
    writeln!(md, "- Each class repeats one frame: an ADD_ADDR is computed on the first run and then judged from the tag cache (a retransmission, or a flood of one forgery); the first-sight cost is measured separately below.")?;
    writeln!(md, "- Reference = a plain XDP parser (`xdp_parse_reference`: Ethernet, two VLAN tags, IPv4 any IHL / IPv6 fixed header, TCP, option walk until kind 30, one per-CPU counter, XDP_PASS) and nothing more, on the same frame in the same round.")?;
    writeln!(md, "\n| class | XDP_PASS ns | reference ns | validator ns | ratio to XDP_PASS | ratio to reference | native ns | ratio to native |")?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
    for row in rows {
        let (n, r) = row.native.map_or((String::new(), String::new()), |n| {
            (format!("{n:.1}"), format!("{:.2}", row.prog / n))
        });
        let (reference, to_reference) = row.reference.map_or((String::new(), String::new()), |x| {
            (format!("{x:.1}"), format!("{:.2}", row.prog / x))
        });
        writeln!(
            md,
            "| {} | {:.1} | {reference} | {:.1} | {:.2} | {to_reference} | {n} | {r} |",
            row.name,
            row.base,
            row.prog,
            row.prog / row.base
        )?;
    }
    writeln!(md, "\nLearning a new connection (MP_CAPABLE third ACK, keys stored, tokens derived inline: 2 compressions), repeat = 1 with fresh keys: {learn_ns:.0} ns per connection.")?;
    writeln!(md, "\nA forged ADD_ADDR seen for the first time (a fresh address each: the uncached check, 2 compressions and the tag-cache insert), repeat = 1: {first_ns:.0} ns, XDP_PASS on the same frames {first_base_ns:.0} ns (the per-run timer overhead is in both), so {:.0} ns above the floor; native Rust, the same 2 compressions: {first_native_ns:.0} ns, ratio {:.2}.", first_ns - first_base_ns, (first_ns - first_base_ns) / first_native_ns)?;
    writeln!(md, "\n## Verifier\n\n| program | instructions processed by the verifier | xlated bytes | JITed bytes |\n|---|---:|---:|---:|")?;
    for v in verifier {
        writeln!(
            md,
            "| {} | {} | {} | {} |",
            v.name,
            v.verified_insns.map_or("n/a".into(), |n| n.to_string()),
            v.xlated_bytes.map_or("n/a".into(), |n| n.to_string()),
            v.jited_bytes
        )?;
    }
    writeln!(md, "\n## Memory for {} tracked connections (maps preallocated)\n\n| map | max entries | memlock bytes | bytes per connection |\n|---|---:|---:|---:|", memory.conns)?;
    let mut total = 0u64;
    for (name, n, bytes) in &memory.per_map {
        writeln!(
            md,
            "| {name} | {n} | {bytes} | {:.1} |",
            *bytes as f64 / f64::from(memory.conns)
        )?;
        total += bytes;
    }
    writeln!(
        md,
        "| total | | {total} | {:.1} |",
        total as f64 / f64::from(memory.conns)
    )?;
    writeln!(md, "\nKey + value bytes of one connection with one subflow (CONNS + FLOWS + 2 TOKENS entries): {} bytes; the kernel adds a per-element header (about 48 bytes in an LRU hash map) and rounds keys and values to 8 bytes.", memory.payload_per_conn)?;
    std::fs::write(args.out.join("bench.md"), &md)?;
    std::fs::write(args.out.join("bench.svg"), chart(rows))?;
    print!("{md}");
    eprintln!(
        "wrote {} and {}",
        args.out.join("bench.md").display(),
        args.out.join("bench.svg").display()
    );
    Ok(())
}

/// Horizontal bars: validator ns per packet next to XDP_PASS (and native, where measured).
fn chart(rows: &[Row]) -> String {
    let max = rows
        .iter()
        .map(|r| r.prog.max(r.base).max(r.native.unwrap_or(0.0)))
        .fold(1.0, f64::max);
    let (left, width, row_h) = (230.0, 520.0, 34.0);
    let height = 40.0 + row_h * rows.len() as f64;
    let mut svg = Svg::new(left + width + 80.0, height);
    svg.heading(
        16.0,
        "ns per packet (BPF_PROG_TEST_RUN): grey XDP_PASS, blue validator, orange native Rust HMAC",
    );
    for (i, row) in rows.iter().enumerate() {
        let y = 30.0 + row_h * i as f64;
        let w = |v: f64| v / max * width;
        svg.text(left - 6.0, y + 14.0, r#"text-anchor="end""#, row.name);
        svg.rect(left, y, w(row.base), 8.0, "#999");
        svg.rect(left, y + 9.0, w(row.prog), 10.0, "#2a6fdb");
        svg.text(
            left + w(row.prog) + 4.0,
            y + 18.0,
            "",
            format_args!("{:.0}", row.prog),
        );
        if let Some(n) = row.native {
            svg.rect(left, y + 20.0, w(n), 6.0, "#e8890c");
        }
    }
    svg.finish()
}
