//! `cargo xtask demo`: build everything the demo runs, then run the tests crate's `mptcp-demo`
//! binary as root (only it: the builds run as the invoking user).

use anyhow::Result;

use crate::{
    build,
    exec::{exec, privileged},
    setup::{self, Scope},
};

const DEMO: &str = "mptcp-demo";

#[derive(clap::Args)]
pub struct Args {
    /// Passed to `mptcp-demo`.
    #[arg(last = true)]
    demo_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    setup::ensure(Scope::All, false)?;
    demo(&args.demo_args)
}

/// Builds the loader (with the eBPF object), `mptcp-peer` and `mptcp-demo`, then runs the demo
/// with `demo_args`. `mptcp-demo` finds the loader and `mptcp-peer` next to its own executable.
/// `cargo xtask test` runs this same function (after removing `mptcp-peer`), so a demo that
/// does not build what it runs fails the tests.
pub fn demo(demo_args: &[String]) -> Result<()> {
    let lab = build::build_lab(&[DEMO])?;
    exec(privileged(lab.bin(DEMO), &[])?.args(demo_args))
}
