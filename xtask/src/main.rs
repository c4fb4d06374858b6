//! `cargo xtask`: prepare the machine, build the firewall, and run its tests, demo and bench.
//!
//! Every subcommand first runs the checks of `setup` (quick when nothing is missing) and installs
//! only what is missing, so a fresh CI machine and a developer's machine take the same path.
//! The shape follows aya's own `xtask/src/main.rs`: one module per subcommand with an `Args`
//! struct and a `run` function, and one shared `exec()` for every command that does work.

mod bench;
mod build;
mod demo;
mod exec;
mod fuzz;
mod record;
mod setup;
mod test;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    bin_name = "cargo xtask",
    about = "Developer and CI tasks for the MPTCP XDP firewall"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install whatever is missing: nightly rust-src, bpf-linker, cargo-fuzz, Debian packages, bpffs.
    Setup(setup::Args),
    /// Build the loader (and, through its build.rs, the eBPF object) in release mode.
    Build(build::Args),
    /// Run the unit tests, then the root-only integration tests (needs root).
    Test(test::Args),
    /// Build, then run the `mptcp-demo` binary of the tests crate (needs root).
    Demo(demo::Args),
    /// Record the Linux MPTCP captures of `tests/fixtures/` again in a namespace (needs root).
    RecordFixtures(record::Args),
    /// Run the `mptcp-bench` binary of the tests crate (needs root).
    Bench(bench::Args),
    /// Fuzz mptcp-common's parser and HMAC code with cargo-fuzz (libFuzzer, nightly).
    Fuzz(fuzz::Args),
    /// Run the `BPF_PROG_TEST_RUN` tests, `run` and the MPTCP lab on Debian's 5.10, 6.1 and 6.12
    /// kernels under qemu.
    VmTest(vm::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup(args) => setup::run(&args),
        Command::Build(args) => build::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::RecordFixtures(args) => record::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::VmTest(args) => vm::run(&args),
    };
    // The error chain on one line; no backtrace (RUST_BACKTRACE is often set, and the
    // backtrace of a failed child command says nothing the command's own output did not).
    if let Err(err) = result {
        eprintln!("xtask: error: {err:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
