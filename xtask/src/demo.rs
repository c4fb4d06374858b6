//! `cargo xtask demo`: build, then run the tests crate's `mptcp-demo` binary as root.

use anyhow::Result;

use crate::{
    build::build_loader,
    exec::{cmd, ensure_root, exec},
    setup::{self, Scope},
};

#[derive(clap::Args)]
pub struct Args {
    /// Passed to `mptcp-demo`.
    #[arg(last = true)]
    demo_args: Vec<String>,
}

pub fn run(args: &Args) -> Result<()> {
    ensure_root("demo")?;
    setup::ensure(Scope::All, false)?;
    build_loader()?;
    exec(
        cmd("cargo")
            .args([
                "run",
                "--release",
                "--package",
                "mptcp-tests",
                "--bin",
                "mptcp-demo",
            ])
            .arg("--")
            .args(&args.demo_args),
    )
}
