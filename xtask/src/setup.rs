//! `cargo xtask setup`: check the machine and install only what is missing.
//!
//! Needed: the nightly toolchain's `rust-src` (the eBPF crate builds `core` for bpfel),
//! a `bpf-linker` linked against that nightly's own libLLVM, the Debian tools the integration
//! tests drive, bpffs at /sys/fs/bpf, and cargo-fuzz for the fuzz step. Each check is cheap,
//! so when nothing is missing this takes well under two seconds.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::exec::{capture, cargo_install_root, cmd, exec, privileged, which};

/// The toolchain that builds the eBPF crate. Must match the one `mptcp-loader/build.rs`
/// hands to aya-build (`Toolchain::Custom`).
pub const NIGHTLY: &str = "nightly";

/// bpf-linker release to install; 0.13 builds against LLVM 21, 22 and 23.
const BPF_LINKER_VERSION: &str = "~0.13";

/// Debian packages the integration tests and the demo use.
const DEBIAN_PACKAGES: &[&str] = &[
    "tshark",
    "tcpdump",
    "netsniff-ng", // trafgen
    "iproute2",
    "ethtool",
    "iputils-ping", // the loader's `operations` tests
    "redis-server", // the shared store of the two-gateway lab (tests/tests/two_gateways.rs)
    "openssl",      // the throw-away CA of that lab's TLS store
    "xdp-tools",    // xdp-loader, xdp-filter: the multi-program (libxdp) tests
    "libxdp1",      // libxdp's XDP dispatcher object, loaded in multi-program mode
];

const BPFFS: &str = "/sys/fs/bpf";

#[derive(clap::Args)]
pub struct Args {
    /// Rebuild bpf-linker even if the installed one looks right.
    #[arg(long)]
    reinstall_bpf_linker: bool,
}

/// How much a subcommand needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Enough to build: nightly `rust-src` and bpf-linker. Needs no root.
    Build,
    /// Everything, for tests, demo and bench: also the Debian packages and bpffs.
    All,
}

pub fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    let done = ensure(Scope::All, args.reinstall_bpf_linker)?;
    let secs = start.elapsed().as_secs_f64();
    if done.is_empty() {
        println!("setup: nothing was missing ({secs:.2} s)");
    } else {
        println!("setup: installed {} ({secs:.1} s)", done.join(", "));
    }
    Ok(())
}

/// Checks what `scope` needs, installs what is missing, and returns what it installed.
pub fn ensure(scope: Scope, reinstall_bpf_linker: bool) -> Result<Vec<&'static str>> {
    let mut done = Vec::new();
    let nightly = Nightly::probe()?;

    if nightly.has_rust_src() {
        ok("rust-src", &format!("{NIGHTLY} {}", nightly.release));
    } else {
        exec(cmd("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
        done.push("rust-src");
    }

    match bpf_linker_state(&nightly) {
        Ok(version) if !reinstall_bpf_linker => ok("bpf-linker", &version),
        state => {
            if let Err(why) = state {
                eprintln!("setup: bpf-linker: {why}; installing it");
            }
            install_bpf_linker(&nightly)?;
            let version = bpf_linker_state(&nightly).map_err(|why| {
                anyhow::anyhow!("bpf-linker is still not usable after installing it: {why}")
            })?;
            ok("bpf-linker", &version);
            done.push("bpf-linker");
        }
    }

    if scope == Scope::All {
        // `cargo xtask test` runs the fuzz targets for a bounded time.
        if crate::fuzz::ensure_cargo_fuzz()? {
            done.push("cargo-fuzz");
        }

        if ensure_debian_packages(DEBIAN_PACKAGES)? {
            done.push("debian packages");
        }

        if bpffs_mounted()? {
            ok("bpffs", BPFFS);
        } else {
            mount_bpffs()?;
            done.push("bpffs");
        }
    }
    Ok(done)
}

fn ok(what: &str, detail: &str) {
    eprintln!("setup: ok  {what}: {detail}");
}

/// What the build needs to know about the nightly toolchain.
struct Nightly {
    release: String,
    sysroot: PathBuf,
    llvm_major: u32,
}

impl Nightly {
    fn probe() -> Result<Self> {
        let toolchain = format!("+{NIGHTLY}");
        let version = capture(cmd("rustc").args([&toolchain, "-vV"])).with_context(|| {
            format!("the `{NIGHTLY}` toolchain is needed to build the eBPF crate")
        })?;
        let field = |name: &str| {
            version
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(str::trim)
                .with_context(|| format!("no `{name}` line in `rustc {toolchain} -vV`"))
        };
        let release = field("release:")?.to_owned();
        let llvm = field("LLVM version:")?;
        let llvm_major = llvm
            .split('.')
            .next()
            .and_then(|major| major.parse().ok())
            .with_context(|| format!("cannot read the LLVM major version from `{llvm}`"))?;
        let sysroot = capture(cmd("rustc").args([&toolchain, "--print", "sysroot"]))?;
        Ok(Self {
            release,
            sysroot: PathBuf::from(sysroot.trim()),
            llvm_major,
        })
    }

    fn has_rust_src(&self) -> bool {
        self.sysroot
            .join("lib/rustlib/src/rust/library/Cargo.toml")
            .is_file()
    }

    /// The shared libLLVM that ships with the toolchain, e.g. `libLLVM.so.22.1-rust-1.97.0-nightly`.
    fn libllvm(&self) -> Result<PathBuf> {
        let lib = self.sysroot.join("lib");
        let entries = fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with("libLLVM.so.")
            })
            .map(|entry| entry.path())
            .collect();
        found.sort();
        found
            .pop()
            .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))
    }
}

/// `Ok(version)` if `bpf-linker` runs and loads the nightly's own libLLVM, else why not.
fn bpf_linker_state(nightly: &Nightly) -> Result<String, String> {
    let linker = which("bpf-linker").ok_or("not installed")?;
    let version = capture(cmd(&linker).arg("--version")).map_err(|err| format!("{err:#}"))?;
    let ldd = capture(cmd("ldd").arg(&linker)).map_err(|err| format!("{err:#}"))?;
    let line = ldd
        .lines()
        .find(|line| line.contains("libLLVM"))
        .ok_or("not linked against a shared libLLVM")?;
    // "	libLLVM.so.22.1-rust-1.97.0-nightly => /some/dir/libLLVM.so.22.1-... (0x00007f...)"
    let resolved = line
        .split_once("=>")
        .map(|(_, right)| right.trim())
        .and_then(|right| right.split_whitespace().next())
        .filter(|path| path.starts_with('/'))
        .ok_or_else(|| format!("its libLLVM does not resolve: {}", line.trim()))?;
    let wanted = nightly.libllvm().map_err(|err| format!("{err:#}"))?;
    let same = match (fs::canonicalize(resolved), fs::canonicalize(&wanted)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same {
        return Err(format!(
            "linked against {resolved}, not the nightly's {}",
            wanted.display()
        ));
    }
    let file_name = wanted.file_name().unwrap_or_default().to_string_lossy();
    Ok(format!("{} ({file_name})", version.trim()))
}

/// Builds bpf-linker against the nightly's libLLVM: a prefix directory whose `lib/` links to
/// that library under both names llvm-sys looks for, then `cargo install` with `LLVM_PREFIX`.
/// The prefix lives next to cargo's `bin/` because bpf-linker keeps it as its runpath.
fn install_bpf_linker(nightly: &Nightly) -> Result<()> {
    let libllvm = nightly.libllvm()?;
    let prefix = cargo_install_root()?.join("bpf-linker-llvm");
    let lib = prefix.join("lib");
    if prefix.exists() {
        fs::remove_dir_all(&prefix).with_context(|| format!("removing {}", prefix.display()))?;
    }
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let file_name = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(file_name)] {
        let link = lib.join(name);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let features = format!("llvm-{}", nightly.llvm_major);
    exec(
        cmd("cargo")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--locked", "--force", "--no-default-features"])
            .args(["--features", &features])
            .env("LLVM_PREFIX", &prefix),
    )
}

/// Installs those of `packages` that are missing; returns whether it installed any.
pub fn ensure_debian_packages(packages: &[&'static str]) -> Result<bool> {
    let missing = missing_debian_packages(packages)?;
    if missing.is_empty() {
        ok("debian packages", &packages.join(" "));
        return Ok(false);
    }
    install_debian_packages(&missing)?;
    Ok(true)
}

/// The packages of `packages` that dpkg does not list as installed.
fn missing_debian_packages(packages: &[&'static str]) -> Result<Vec<&'static str>> {
    let listed = capture(cmd("dpkg-query").args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"]))?;
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(package, _)| package)
        .collect();
    Ok(packages
        .iter()
        .copied()
        .filter(|package| !installed.contains(package))
        .collect())
}

fn install_debian_packages(missing: &[&str]) -> Result<()> {
    eprintln!("setup: missing Debian packages: {}", missing.join(" "));
    // Non-interactive, so tshark's "may non-root users capture?" question takes its default (no).
    let noninteractive = [("DEBIAN_FRONTEND", "noninteractive")];
    exec(privileged("apt-get", &noninteractive)?.args(["update", "-q"]))?;
    let mut install = privileged("apt-get", &noninteractive)?;
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(missing)
        .stdin(std::process::Stdio::null());
    exec(&mut install)
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&BPFFS) && fields.get(2) == Some(&"bpf")
    }))
}

fn mount_bpffs() -> Result<()> {
    if !Path::new(BPFFS).is_dir() {
        bail!("{BPFFS} does not exist: is this kernel built with CONFIG_BPF_SYSCALL?");
    }
    exec(privileged("mount", &[])?.args(["-t", "bpf", "bpf", BPFFS]))
}
