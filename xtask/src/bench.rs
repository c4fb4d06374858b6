//! `cargo xtask bench`: run the tests crate's `mptcp-bench` binary as root.
//!
//! The bench itself (`BPF_PROG_TEST_RUN` with `repeat`, ns per packet and Mpps) lives in the
//! tests crate; this only prepares the machine and starts it.

use anyhow::Result;

use crate::{
    exec::{cmd, ensure_root, exec},
    setup::{self, Scope},
};

#[derive(clap::Args)]
pub struct Args {
    /// Passed to `mptcp-bench`.
    #[arg(last = true)]
    bench_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    ensure_root("bench")?;
    setup::ensure(Scope::All, false)?;
    exec(
        cmd("cargo")
            .args([
                "run",
                "--release",
                "--package",
                "mptcp-tests",
                "--bin",
                "mptcp-bench",
            ])
            .arg("--")
            .args(&args.bench_args),
    )
}
