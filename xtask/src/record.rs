//! `cargo xtask record-fixtures`: record the Linux MPTCP captures of `tests/fixtures/` again from
//! the namespace lab with the real kernel stack (the tests crate's `mptcp-record` binary, as
//! root), and write the `.expected` file beside each.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{
    build,
    exec::{exec, privileged},
    setup::{self, Scope},
};

const RECORDER: &str = "mptcp-record";

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the captures and their `.expected` files (default:
    /// `<target dir>/recorded-fixtures`). `--out tests/fixtures` replaces the checked-in ones.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Record nothing: only (re)write the `.expected` file of every `*.pcap` in `--out`.
    #[arg(long)]
    describe_only: bool,
}

pub fn run(args: &Args) -> Result<()> {
    setup::ensure(Scope::All, false)?;
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => build::release_dir()?
            .parent()
            .context("the release directory has no parent")?
            .join("recorded-fixtures"),
    };
    let lab = build::build_lab(&[RECORDER])?;
    let mode = if args.describe_only {
        "--describe-only"
    } else {
        "--out"
    };
    exec(privileged(lab.bin(RECORDER), &[])?.arg(mode).arg(&out))
}
