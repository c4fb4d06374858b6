//! Builds the eBPF object (`mptcp-ebpf`) with the nightly toolchain and bpf-linker, and leaves it
//! in `OUT_DIR/mptcp-ebpf` for `include_bytes_aligned!` in `src/lib.rs`.
//!
//! Without bpf-linker (or with `AYA_BUILD_SKIP=1`) an empty stub object is written instead, so
//! `cargo check`, clippy and the host unit tests work on any machine; the loader refuses to load
//! the stub with an error that says how to build the real object.

use std::{
    env,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Toolchain that builds the eBPF crate (needs `rust-src` for `-Z build-std=core`).
/// Keep in sync with the README and CI.
const NIGHTLY: &str = "nightly";
/// Cargo package and binary name of the eBPF crate; also the object's file name in `OUT_DIR`.
const EBPF_PACKAGE: &str = "mptcp-ebpf";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    let object = out_dir.join(EBPF_PACKAGE);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR is not set")?);
    let ebpf_dir = manifest_dir.join("..").join(EBPF_PACKAGE);
    let common_dir = manifest_dir.join("..").join("mptcp-common");

    if skip_requested() {
        return write_stub(&object, "AYA_BUILD_SKIP is set");
    }
    let Some(linker_dir) = bpf_linker_dir() else {
        // Rerun when bpf-linker gets installed into ~/.cargo/bin.
        if let Some(cargo_bin) = cargo_bin_dir() {
            println!("cargo:rerun-if-changed={}", cargo_bin.display());
        }
        return write_stub(
            &object,
            "bpf-linker was not found on PATH nor in ~/.cargo/bin",
        );
    };
    if !ebpf_dir.join("src").join("main.rs").exists() {
        // The eBPF crate has no programs yet; rerun as soon as it does.
        println!("cargo:rerun-if-changed={}", ebpf_dir.join("src").display());
        return write_stub(&object, "mptcp-ebpf/src/main.rs does not exist yet");
    }

    // The nested cargo resolves `bpf-linker` through PATH: make sure ~/.cargo/bin is on it.
    prepend_to_path(&linker_dir)?;
    println!(
        "cargo:rerun-if-changed={}",
        linker_dir.join("bpf-linker").display()
    );
    // aya-build tracks the eBPF crate's directory; the shared crate is compiled into it too.
    println!("cargo:rerun-if-changed={}", common_dir.display());

    // The object is built for BPF CPU v3 (32-bit ALU and jumps): rustc hands bpf-linker its
    // `-C target-cpu`, which cannot be set because aya-build replaces the nested build's
    // rustflags, so the eBPF crate's wrapper script links with `--cpu v3` instead.
    env::set_var(
        "CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER",
        ebpf_dir.join("bpf-linker-v3"),
    );
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("the path {} is not UTF-8", ebpf_dir.display()))?;
    let package = Package {
        name: EBPF_PACKAGE,
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], Toolchain::Custom(NIGHTLY))
        .with_context(|| format!("aya_build::build_ebpf({EBPF_PACKAGE}, {NIGHTLY})"))
}

fn skip_requested() -> bool {
    env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Writes an empty object, which `mptcp_loader` recognises and refuses to load.
fn write_stub(object: &Path, why: &str) -> anyhow::Result<()> {
    println!("cargo:warning=not building the eBPF object ({why}); writing an empty stub");
    std::fs::write(object, b"").with_context(|| format!("writing {}", object.display()))
}

fn cargo_bin_dir() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|cargo_home| cargo_home.join("bin"))
}

/// The directory holding an executable `bpf-linker`: first PATH, then ~/.cargo/bin.
fn bpf_linker_dir() -> Option<PathBuf> {
    let path_dirs = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(cargo_bin_dir())
        .find(|dir| is_executable(&dir.join("bpf-linker")))
}

fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    file.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn prepend_to_path(dir: &Path) -> anyhow::Result<()> {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    let joined = env::join_paths(dirs).context("joining PATH")?;
    // The build script has no other threads yet, so changing its own environment is sound.
    env::set_var("PATH", joined);
    Ok(())
}
