//! `cargo xtask bench`: both benchmarks of the tests crate, as root, into one results folder.
//!
//! 1. `mptcp-bench`: per-packet cost of the fast path with `BPF_PROG_TEST_RUN` (ns per packet,
//!    verifier statistics, map memory) -> `<out>/bench.md`, `<out>/bench.svg`.
//! 2. `mptcp-flood`: trafgen floods of forged `ADD_ADDR` and `MP_JOIN` SYN segments against a live MPTCP
//!    connection between network namespaces, the receiver's CPU time per forged packet with and
//!    without the validator, and a genuine transfer's throughput -> `<out>/flood.md`,
//!    `<out>/flood.svg`. It runs the loader binary, which is built first.
//!
//! Both reports record the machine and the command line.

use anyhow::Result;

use crate::{
    exec::{cargo_running_as_root, exec},
    setup::{self, Scope},
};

#[derive(clap::Args)]
pub struct Args {
    /// Output folder of both reports.
    #[arg(long, default_value = "results")]
    out: String,
    /// Few repetitions for both parts (what CI runs): checks the commands work, claims nothing.
    #[arg(long)]
    quick: bool,
    /// Run only one part.
    #[arg(long, value_enum)]
    only: Option<Part>,
    /// Extra argument for `mptcp-flood` (repeatable), e.g. `--flood-arg=--reps=3`.
    #[arg(long = "flood-arg", value_name = "ARG", allow_hyphen_values = true)]
    to_flood: Vec<String>,
    /// Passed to `mptcp-bench`.
    #[arg(last = true)]
    to_bench: Vec<String>,
}

/// The two parts of the benchmark.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// `mptcp-bench` (`BPF_PROG_TEST_RUN`).
    PerPacket,
    /// `mptcp-flood` (trafgen floods between namespaces).
    Flood,
}

/// `cargo run` of a tests-crate program, its arguments to follow: built as the invoking user,
/// run as root.
pub(crate) fn tests_bin(bin: &str) -> anyhow::Result<std::process::Command> {
    cargo_running_as_root(&[
        "run",
        "--release",
        "--package",
        "mptcp-tests",
        "--bin",
        bin,
        "--",
    ])
}

pub fn run(args: &Args) -> Result<()> {
    setup::ensure(Scope::All, false)?;
    let invocation = format!(
        "cargo xtask {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    if args.only != Some(Part::Flood) {
        let mut bench = tests_bin("mptcp-bench")?;
        bench.args(["--out", &args.out]);
        if args.quick {
            bench.arg("--quick");
        }
        bench.args(&args.to_bench);
        exec(&mut bench)?;
    }
    if args.only != Some(Part::PerPacket) {
        let loader = crate::build::build_loader()?;
        let mut flood = tests_bin("mptcp-flood")?;
        flood.args(["--out", &args.out]);
        if args.quick {
            flood.arg("--quick");
        }
        flood
            .args(&args.to_flood)
            .env("MPTCP_LOADER_BIN", loader)
            .env("MPTCP_BENCH_COMMAND", invocation);
        exec(&mut flood)?;
    }
    Ok(())
}
