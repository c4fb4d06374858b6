//! `cargo xtask fuzz`: coverage-guided fuzzing of `mptcp-common` with cargo-fuzz (libFuzzer).
//!
//! The fuzz crate is `mptcp-common/fuzz` (outside the workspace, built with nightly). Its
//! targets: `parse` (any bytes as a frame), `options` (well-formed headers around fuzzed TCP
//! options) and `hmac` (differential against the `hmac` and `sha2` crates). Before running,
//! this writes the seed corpus: every frame of the fixture captures, plus hand-made frames of
//! the shapes the captures lack (VLAN, `QinQ`, IPv4 options, IPv6 extension headers, every
//! MPTCP option the validator acts on). A crash, a hang (`-timeout`) or a memory blow-up
//! (`-rss_limit_mb`) fails the run and its input's path is printed.

use std::{
    collections::{hash_map::DefaultHasher, BTreeSet},
    env, fs,
    hash::{Hash as _, Hasher as _},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use mptcp_common::{
    maps::FAMILY_V6,
    packet::{
        parse_tcp, read_capable_keys, walk_options, ETH_P_8021AD, ETH_P_8021Q, IPV6_DSTOPTS,
        IPV6_FRAGMENT, IPV6_HOPOPTS, IPV6_ROUTING, TCP_ACK, TCP_SYN,
    },
    testing::{pcap_frames, Frame},
};

use crate::{
    exec::{capture, cmd, exec, which},
    setup::NIGHTLY,
};

/// The fuzz targets, in the order they run.
pub const TARGETS: &[&str] = &["parse", "options", "hmac"];

/// Seconds per target in `cargo xtask test`.
pub const CI_SECONDS: u64 = 20;

/// cargo-fuzz release `setup` installs.
const CARGO_FUZZ_VERSION: &str = "~0.13";

/// Build flags, the same for `build` and `run` so that `run` does not rebuild. No sanitizer:
/// the code under test is safe Rust, whose bounds checks already panic, and `AddressSanitizer`
/// would halve the executions per second. Overflow checks are on (`--debug-assertions`).
const BUILD_FLAGS: &[&str] = &["--sanitizer", "none", "--debug-assertions"];

/// libFuzzer flags besides the time limit: an input running 10 s is a hang.
const LIBFUZZER_FLAGS: &[&str] = &["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"];

#[derive(clap::Args)]
pub struct Args {
    /// Seconds to run each target.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Run only this target (repeatable); default: all of them.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    target: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    let targets: Vec<&str> = if args.target.is_empty() {
        TARGETS.to_vec()
    } else {
        args.target.iter().map(String::as_str).collect()
    };
    ensure_cargo_fuzz()?;
    fuzz(&targets, args.seconds)
}

/// What `cargo xtask test` runs: every target for [`CI_SECONDS`].
pub fn ci() -> Result<()> {
    ensure_cargo_fuzz()?;
    fuzz(TARGETS, CI_SECONDS)
}

/// Installs cargo-fuzz if it is missing; returns whether it did.
pub fn ensure_cargo_fuzz() -> Result<bool> {
    if let Some(path) = which("cargo-fuzz") {
        if let Ok(version) = capture(cmd(&path).arg("--version")) {
            eprintln!("setup: ok  cargo-fuzz: {}", version.trim());
            return Ok(false);
        }
    }
    let start = Instant::now();
    exec(cmd("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))?;
    eprintln!(
        "setup: installed cargo-fuzz in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(true)
}

/// Seeds the corpus, builds the targets, runs each for `seconds`, and fails if any found a
/// crash, a hang or a memory blow-up.
pub fn fuzz(targets: &[&str], seconds: u64) -> Result<()> {
    let dir = fuzz_dir();
    let seeds = seed_corpus(&dir.join("corpus"))?;
    eprintln!("fuzz: seed corpus: {seeds}");

    let start = Instant::now();
    exec(cargo_fuzz(&["build"]).args(BUILD_FLAGS))?;
    eprintln!(
        "fuzz: built the targets in {:.0} s",
        start.elapsed().as_secs_f64()
    );

    let mut summaries = Vec::new();
    let mut failed = Vec::new();
    for target in targets {
        match run_target(&dir, target, seconds) {
            Ok(summary) => summaries.push(format!("{target}: {summary}")),
            Err(err) => {
                eprintln!("fuzz: {target} FAILED: {err:#}");
                summaries.push(format!("{target}: FAILED"));
                failed.push(*target);
            }
        }
    }
    eprintln!("fuzz summary ({seconds} s per target):");
    for line in &summaries {
        eprintln!("  {line}");
    }
    if !failed.is_empty() {
        bail!("fuzz target(s) {} failed", failed.join(", "));
    }
    Ok(())
}

/// `mptcp-common/fuzz`.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mptcp-common/fuzz")
}

/// `cargo +nightly fuzz <args>`, run in `mptcp-common` (cargo-fuzz finds `fuzz/` there).
fn cargo_fuzz(args: &[&str]) -> std::process::Command {
    let mut command = cmd("cargo");
    command
        .arg(format!("+{NIGHTLY}"))
        .arg("fuzz")
        .args(args)
        .current_dir(fuzz_dir().join(".."));
    command
}

/// Runs one target; returns libFuzzer's closing status line.
fn run_target(dir: &Path, target: &str, seconds: u64) -> Result<String> {
    let artifacts = dir.join("artifacts").join(target);
    let before = files_in(&artifacts);
    let mut command = cargo_fuzz(&["run"]);
    command
        .args(BUILD_FLAGS)
        .args([target, "--"])
        .arg(format!("-max_total_time={seconds}"))
        .args(LIBFUZZER_FLAGS)
        .stderr(Stdio::piped());
    let line = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| word.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    eprintln!("$ {line}");
    let mut child = command
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;

    // libFuzzer reports on stderr: pass it on, less the line per new corpus entry and the
    // dictionary it recommends, and keep the closing status line (coverage, speed).
    let mut status_line = String::new();
    let stderr = child.stderr.take().context("no stderr pipe")?;
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading libFuzzer's output")?;
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        let event = words.next().unwrap_or("");
        let new_entry = first.starts_with('#') && matches!(event, "NEW" | "REDUCE");
        let dictionary = line.starts_with("###### ") || line.contains("\" # Uses: ");
        if new_entry || dictionary {
            continue;
        }
        if line.contains(" cov: ") {
            status_line = line
                .split_whitespace()
                .skip(2)
                .collect::<Vec<_>>()
                .join(" ");
        }
        eprintln!("{line}");
    }
    let status = child.wait().context("waiting for cargo fuzz")?;

    let found: Vec<PathBuf> = files_in(&artifacts).difference(&before).cloned().collect();
    if !status.success() || !found.is_empty() {
        for path in &found {
            eprintln!("fuzz: {target}: failing input: {}", path.display());
            eprintln!(
                "fuzz: reproduce with: (cd mptcp-common && cargo +{NIGHTLY} fuzz run {} {target} {})",
                BUILD_FLAGS.join(" "),
                path.display()
            );
        }
        if found.is_empty() {
            bail!(
                "`{line}` failed with {status} and left no input in {}",
                artifacts.display()
            );
        }
        bail!(
            "{} failing input(s) in {}",
            found.len(),
            artifacts.display()
        );
    }
    Ok(format!("{status_line}; no crash"))
}

fn files_in(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// How many seed files each target's corpus received.
#[derive(Default)]
struct Seeds {
    captured_frames: usize,
    written: [usize; 3],
}

impl std::fmt::Display for Seeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} captured frames; new files:", self.captured_frames)?;
        for (target, n) in TARGETS.iter().zip(self.written) {
            write!(f, " {target} {n}")?;
        }
        Ok(())
    }
}

/// Writes the seeds into `corpus/<target>/`, one file per distinct input, named by its hash
/// (files already there, such as what earlier runs found, stay).
fn seed_corpus(corpus: &Path) -> Result<Seeds> {
    let mut seeds = Seeds::default();
    let mut inputs: [Vec<Vec<u8>>; 3] = Default::default();
    for path in fixture_captures()? {
        for raw in pcap_frames(&path.to_string_lossy()) {
            seeds.captured_frames += 1;
            let Some(frame) = frame_of(&raw) else {
                inputs[0].push(raw[..raw.len().min(128)].to_vec());
                continue;
            };
            // Headers, options and a little payload: the rest is never read.
            let seg = parse_tcp(raw.as_slice()).ok();
            let keep = seg.map_or(raw.len(), |seg| seg.opts_end + 16);
            inputs[0].push(raw[..raw.len().min(keep)].to_vec());
            inputs[1].push(options_input(&frame, false));
            if let Some((ks, kr)) = seg.and_then(|seg| {
                let opt = walk_options(raw.as_slice(), &seg).capable_keys?;
                read_capable_keys(raw.as_slice(), opt)
            }) {
                inputs[2].push([ks, kr].concat());
                inputs[2].push([kr, ks].concat());
            }
        }
    }
    for (frame, qinq) in synthetic_frames() {
        let mut bytes = frame.bytes();
        if qinq {
            bytes[12..14].copy_from_slice(&ETH_P_8021AD.to_be_bytes());
        }
        inputs[0].push(bytes);
        inputs[1].push(options_input(&frame, qinq));
    }
    for ((target, inputs), written) in TARGETS.iter().zip(&inputs).zip(&mut seeds.written) {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for input in inputs {
            let mut hasher = DefaultHasher::new();
            input.hash(&mut hasher);
            let path = dir.join(format!("seed-{:016x}", hasher.finish()));
            if !path.exists() {
                fs::write(&path, input).with_context(|| format!("writing {}", path.display()))?;
                *written += 1;
            }
        }
    }
    Ok(seeds)
}

/// The `*.pcap` files in `$MPTCP_FIXTURES_DIR`, else in the repository's `tests/fixtures/`;
/// none (with a warning) if that directory does not exist.
fn fixture_captures() -> Result<Vec<PathBuf>> {
    let dir = env::var_os("MPTCP_FIXTURES_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures"),
            PathBuf::from,
        );
    if !dir.is_dir() {
        eprintln!(
            "fuzz: warning: no fixture directory at {}: seeding with hand-made frames only",
            dir.display()
        );
        return Ok(Vec::new());
    }
    let mut captures: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "pcap"))
        .collect();
    captures.sort();
    Ok(captures)
}

/// A captured frame as a [`Frame`] (its VLAN tags, IP version, IPv4 options, TCP flags,
/// options and the first payload bytes; IPv6 extension headers are left out), or `None` if it
/// is no TCP segment.
fn frame_of(raw: &[u8]) -> Option<Frame> {
    let seg = parse_tcp(raw).ok()?;
    let mut frame = if seg.flow.family == FAMILY_V6 {
        Frame::v6(&[])
    } else {
        Frame::v4(&[])
    };
    let mut l3 = 14;
    while matches!(
        u16::from_be_bytes([raw[l3 - 2], raw[l3 - 1]]),
        ETH_P_8021Q | ETH_P_8021AD
    ) {
        frame.vlans.push(u16::from_be_bytes([raw[l3], raw[l3 + 1]]));
        l3 += 4;
    }
    if !frame.v6 {
        frame.ip_opts = raw[l3 + 20..seg.opts_start - 20].to_vec();
    }
    frame.flags = seg.flags;
    frame.tcp_opts = raw[seg.opts_start..seg.opts_end].to_vec();
    frame.payload = raw[seg.opts_end..raw.len().min(seg.opts_end + 16)].to_vec();
    Some(frame)
}

/// `frame` in the input layout of the `options` target (see the fuzz crate's
/// `src/options_input.rs`).
fn options_input(frame: &Frame, qinq: bool) -> Vec<u8> {
    let byte = |n: usize| u8::try_from(n).unwrap_or(u8::MAX);
    let shape = u8::from(frame.v6) | byte(frame.vlans.len().min(3)) << 1 | u8::from(qinq) << 3;
    let (l3, ext_kinds) = if frame.v6 {
        let units = frame.v6_ext.first().map_or(0, |e| (e.1.len() + 2) / 8 - 1);
        let kinds = frame.v6_ext.iter().take(4).enumerate().map(|(i, e)| {
            let kind = [IPV6_HOPOPTS, IPV6_ROUTING, IPV6_DSTOPTS, IPV6_FRAGMENT]
                .iter()
                .position(|&k| k == e.0)
                .unwrap_or(2);
            byte(kind) << (2 * i)
        });
        (
            byte(frame.v6_ext.len().min(7)) | byte(units.min(3)) << 3,
            kinds.fold(0, |all, k| all | k),
        )
    } else {
        (byte(frame.ip_opts.len() / 4), 0)
    };
    let mut input = vec![
        shape,
        frame.flags,
        l3,
        ext_kinds,
        0,
        byte(frame.tcp_opts.len()),
    ];
    input.extend_from_slice(&frame.tcp_opts);
    input.extend_from_slice(&frame.payload);
    input
}

/// Frames of the shapes the captures lack, each carrying one MPTCP option set the validator
/// acts on; `true` marks an outer 802.1ad tag.
fn synthetic_frames() -> Vec<(Frame, bool)> {
    let mut capable = vec![30, 20, 0x01, 0x81];
    capable.extend(1..=16);
    let add_addr_v4 = [30, 16, 0x30, 1, 198, 18, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut add_addr_v6_port = vec![30, 30, 0x30, 2, 0x20, 0x01, 0x0d, 0xb8];
    add_addr_v6_port.extend([0; 11]);
    add_addr_v6_port.extend([3, 0x27, 0x10, 1, 2, 3, 4, 5, 6, 7, 8]);
    let echo = [30, 8, 0x31, 1, 198, 18, 0, 1];
    let join_syn = [
        30, 12, 0x11, 1, 0x3b, 0xa6, 0x40, 0x55, 0x40, 0x58, 0xdd, 0x91,
    ];
    let mut join_synack = vec![30, 16, 0x10, 1];
    join_synack.extend([
        0x44, 0x0c, 0xe9, 0x1e, 0xb0, 0x99, 0x80, 0x48, 0x56, 0x78, 0xcf, 0x7c,
    ]);
    let mut join_ack = vec![30, 24, 0x10, 0];
    join_ack.extend(1..=20);
    let fastclose = [30, 12, 0x70, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let options: [(&[u8], u8); 8] = [
        (&capable, TCP_ACK),
        (&add_addr_v4, TCP_ACK),
        (&add_addr_v6_port, TCP_ACK),
        (
            &[&add_addr_v4[..], &add_addr_v4[..], &echo[..]].concat(),
            TCP_ACK,
        ),
        (&join_syn, TCP_SYN),
        (&join_synack, TCP_SYN | TCP_ACK),
        (&join_ack, TCP_ACK),
        (&fastclose, TCP_ACK),
    ];
    let mut shapes = vec![(Frame::v4(&[]), false), (Frame::v6(&[]), false)];
    let mut ip_opts = Frame::v4(&[]);
    ip_opts.ip_opts = vec![1; 8];
    shapes.push((ip_opts, false));
    let mut ext = Frame::v6(&[]);
    ext.v6_ext = vec![(IPV6_HOPOPTS, vec![0; 6]), (IPV6_ROUTING, vec![0; 6])];
    shapes.push((ext, false));
    let mut vlan = Frame::v4(&[]);
    vlan.vlans = vec![100];
    shapes.push((vlan, false));
    let mut qinq = Frame::v6(&[]);
    qinq.vlans = vec![100, 200];
    shapes.push((qinq, true));

    let mut frames = Vec::new();
    for (shape, is_qinq) in &shapes {
        for (opts, flags) in &options {
            let mut frame = shape.with_opts(opts);
            frame.flags = *flags;
            frames.push((frame, *is_qinq));
        }
    }
    frames
}
