//! `cargo xtask build`: build the loader in release mode and print the binary's path.
//!
//! The loader's build.rs builds the eBPF crate with the nightly toolchain through aya-build,
//! so this one command produces both.

use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{
    exec::{capture, cmd, exec},
    setup::{self, Scope},
};

const LOADER: &str = "mptcp-loader";

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: &Args) -> Result<()> {
    setup::ensure(Scope::Build, false)?;
    let binary = build_loader()?;
    println!("{}", binary.display());
    Ok(())
}

/// `cargo build --release -p mptcp-loader`; returns the path of the loader binary.
pub fn build_loader() -> Result<PathBuf> {
    exec(cmd("cargo").args(["build", "--release", "--package", LOADER]))?;
    let binary = release_dir()?.join(loader_bin_name()?);
    if !binary.is_file() {
        bail!("the build succeeded but {} is not there", binary.display());
    }
    Ok(binary)
}

/// The binaries of the tests crate that run the namespace lab.
const TESTS: &str = "mptcp-tests";
/// `mptcp-peer`: the MPTCP client and server every lab program starts inside the namespaces.
pub const PEER: &str = "mptcp-peer";

/// What [`build_lab`] built: the loader and the tests crate's binaries, all in one directory.
pub struct Lab {
    /// `<target dir>/release`, where the binaries are.
    pub release_dir: PathBuf,
}

impl Lab {
    /// The path of one of the tests crate's binaries.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.release_dir.join(name)
    }
}

/// Builds everything a lab program of the tests crate runs: the loader (and through it the
/// eBPF object), `mptcp-peer`, and the `programs` themselves (e.g. `mptcp-demo`). Those
/// programs find the loader and `mptcp-peer` next to their own executable, so building only the
/// program (`cargo run --bin mptcp-demo`) is not enough on a fresh clone.
pub fn build_lab(programs: &[&str]) -> Result<Lab> {
    let loader = build_loader()?;
    let mut build = cmd("cargo");
    build.args(["build", "--release", "--package", TESTS]);
    for bin in std::iter::once(&PEER).chain(programs) {
        build.args(["--bin", bin]);
    }
    exec(&mut build)?;
    let lab = Lab {
        release_dir: release_dir()?,
    };
    // The programs look for the loader next to themselves.
    debug_assert_eq!(loader.parent(), Some(lab.release_dir.as_path()));
    for bin in std::iter::once(&PEER).chain(programs) {
        let path = lab.bin(bin);
        if !path.is_file() {
            bail!("the build succeeded but {} is not there", path.display());
        }
    }
    Ok(lab)
}

/// `<target dir>/release`, the target directory read from `cargo metadata`.
pub fn release_dir() -> Result<PathBuf> {
    let metadata = metadata()?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .context("`cargo metadata` has no target_directory")?;
    Ok(PathBuf::from(target_dir).join("release"))
}

fn metadata() -> Result<Value> {
    let metadata = capture(cmd("cargo").args(["metadata", "--format-version", "1", "--no-deps"]))?;
    serde_json::from_str(&metadata).context("parsing `cargo metadata` output")
}

/// The loader's binary name, read from `cargo metadata`.
fn loader_bin_name() -> Result<String> {
    let metadata = metadata()?;
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|package| package["name"] == LOADER))
        .with_context(|| format!("`cargo metadata` has no package {LOADER}"))?;
    let is_bin = |target: &&Value| {
        target["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|kind| kind == "bin"))
    };
    let bin = package["targets"]
        .as_array()
        .and_then(|targets| targets.iter().find(is_bin))
        .and_then(|target| target["name"].as_str())
        .with_context(|| format!("{LOADER} has no binary target"))?;
    Ok(bin.to_owned())
}
