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
    let binary = loader_binary()?;
    if !binary.is_file() {
        bail!("the build succeeded but {} is not there", binary.display());
    }
    Ok(binary)
}

/// `<target dir>/release/<bin name>`, both read from `cargo metadata`.
fn loader_binary() -> Result<PathBuf> {
    let metadata = capture(cmd("cargo").args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: Value =
        serde_json::from_str(&metadata).context("parsing `cargo metadata` output")?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .context("`cargo metadata` has no target_directory")?;
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
    Ok(PathBuf::from(target_dir).join("release").join(bin))
}
