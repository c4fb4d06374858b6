//! `cargo xtask test`: unit tests, then the root-only integration tests, with a summary.
//!
//! Every step runs even when an earlier one failed, so one CI run reports all failures;
//! the command exits non-zero if any step failed.

use std::{env, process::Command, time::Instant};

use anyhow::{bail, Result};

use crate::{
    exec::{cargo_running_as_root, cmd, exec},
    setup::{self, Scope},
};

#[derive(clap::Args)]
pub struct Args {
    /// The long versions: 1,000,000 frames in the differential test, 10 minutes per fuzz target.
    #[arg(long)]
    long: bool,
    /// Passed to the integration-test binaries after `--test-threads=1`, e.g. a name filter.
    #[arg(last = true)]
    test_args: Vec<String>,
}

/// Frames of the differential test with `--long` (the CI run uses its default, 30 000).
const LONG_DIFF_FRAMES: &str = "1000000";
/// Seconds per fuzz target with `--long`.
const LONG_FUZZ_SECONDS: u64 = 600;

struct Step {
    name: &'static str,
    ok: bool,
    secs: f64,
}

pub fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    setup::ensure(Scope::All, false)?;
    let mut steps = vec![Step {
        name: "setup",
        ok: true,
        secs: start.elapsed().as_secs_f64(),
    }];

    // The end-to-end tests run the loader binary itself: build it first and say where it is.
    let loader = timed(&mut steps, "build loader", crate::build::build_loader);

    // The demo exactly as `cargo xtask demo` runs it, with `mptcp-peer` removed first: on a
    // fresh clone nothing else has built it yet, and the demo must build all it runs itself
    // (cargo links the binaries it was asked for into target/release again, and only those).
    timed(&mut steps, "demo, as on a fresh clone", || {
        remove_peer_binary().and_then(|()| crate::demo::demo(&[]))
    });

    // --no-fail-fast: a failing test file must not hide the results of the ones after it.
    // Root-only: cargo builds as the invoking user, the test binaries run as root.
    let mut integration = cargo_running_as_root(&[
        "test",
        "--package",
        "mptcp-tests",
        "--release",
        "--no-fail-fast",
    ])?;
    integration
        .args(["--", "--test-threads=1"])
        .args(&args.test_args);
    if let Some(loader) = &loader {
        integration.env("MPTCP_LOADER_BIN", loader);
    }
    if args.long {
        integration.env("MPTCP_DIFF_FRAMES", LONG_DIFF_FRAMES);
    }
    let mut loader_tests = cargo_running_as_root(&["test", "--package", "mptcp-loader"])?;
    if is_ci() && env::var_os(REQUIRE_ENV).is_none() {
        // In CI a skipped kernel test is a failure: the machine is known to support them. (The
        // tests read `CI` themselves too; this says it on the command line as well.)
        integration.env(REQUIRE_ENV, "1");
        loader_tests.env(REQUIRE_ENV, "1");
    }
    // The benchmark once, with few repetitions, so it cannot rot; it asserts nothing about speed.
    let mut quick_bench = crate::bench::tests_bin("mptcp-bench")?;
    quick_bench.args(["--quick", "--out", "target/bench-quick"]);
    // The flood benchmark once, short (about 25 s): trafgen floods in namespaces, no claims.
    let mut quick_flood = crate::bench::tests_bin("mptcp-flood")?;
    quick_flood.args(["--quick", "--out", "target/bench-quick"]);
    if let Some(loader) = &loader {
        quick_flood.env("MPTCP_LOADER_BIN", loader);
    }
    let commands = [
        (
            "unit tests: mptcp-common, mptcp-lab",
            cargo_test(&["--package", "mptcp-common", "--package", "mptcp-lab"]),
        ),
        ("tests: mptcp-loader", loader_tests),
        ("integration tests: mptcp-tests", integration),
        ("benchmark, quick run", quick_bench),
        ("flood benchmark, quick run", quick_flood),
    ];
    for (name, mut command) in commands {
        timed(&mut steps, name, || exec(&mut command));
    }

    // The fuzz targets of mptcp-common, 20 s each (`cargo xtask fuzz` runs them longer).
    timed(&mut steps, "fuzz: mptcp-common", || {
        if args.long {
            crate::fuzz::ensure_cargo_fuzz()
                .and_then(|_| crate::fuzz::fuzz(crate::fuzz::TARGETS, LONG_FUZZ_SECONDS))
        } else {
            crate::fuzz::ci()
        }
    });

    print_summary(&steps);
    let failed: Vec<&str> = steps.iter().filter(|s| !s.ok).map(|s| s.name).collect();
    if !failed.is_empty() {
        bail!(
            "{} of {} steps failed: {}",
            failed.len(),
            steps.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Runs one step, times it, says so when it fails, and adds it to `steps`; its value if it
/// succeeded.
fn timed<T>(
    steps: &mut Vec<Step>,
    name: &'static str,
    work: impl FnOnce() -> Result<T>,
) -> Option<T> {
    let start = Instant::now();
    let result = work();
    if let Err(err) = &result {
        eprintln!("xtask test: step `{name}` FAILED: {err:#}");
    }
    steps.push(Step {
        name,
        ok: result.is_ok(),
        secs: start.elapsed().as_secs_f64(),
    });
    result.ok()
}

/// The skip policy's variable (`mptcp_common::testing::REQUIRE_ENV`).
const REQUIRE_ENV: &str = "MPTCP_TESTS_REQUIRE_BPF";

/// Removes `<target>/release/mptcp-peer` if it is there, so that the next build must make it.
fn remove_peer_binary() -> Result<()> {
    let peer = crate::build::release_dir()?.join(crate::build::PEER);
    match std::fs::remove_file(&peer) {
        Ok(()) => {
            eprintln!(
                "xtask test: removed {} (the demo must build it)",
                peer.display()
            );
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(anyhow::Error::new(err).context(format!("removing {}", peer.display()))),
    }
}

fn cargo_test(args: &[&str]) -> Command {
    let mut command = cmd("cargo");
    command.arg("test").args(args);
    command
}

/// CI sets `CI=true`; treat any value but empty, `0` and `false` as set.
fn is_ci() -> bool {
    env::var("CI").is_ok_and(|value| !matches!(value.as_str(), "" | "0" | "false"))
}

fn print_summary(steps: &[Step]) {
    println!();
    println!("xtask test summary:");
    println!("  {:<32} {:<7} {:>8}", "step", "result", "seconds");
    for step in steps {
        let result = if step.ok { "ok" } else { "FAILED" };
        println!("  {:<32} {:<7} {:>8.1}", step.name, result, step.secs);
    }
}
