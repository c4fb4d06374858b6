//! Command line: `mptcp-loader run ...` and `mptcp-loader stats ...`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{
    errors::LoaderError,
    firewall::{FilterMode, XdpAttach},
    pins::default_pin_dir,
    preflight::{check_root, effective_uid},
    run::{run, RunPlan},
    stats::{format_json, format_table, read_report},
};

/// XDP firewall that drops MPTCP ADD_ADDR options with a wrong HMAC (RFC 8684 §3.4.1).
#[derive(Debug, Parser)]
#[command(name = "mptcp-loader", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the XDP program, attach it and install connection keys until Ctrl-C / SIGTERM.
    Run(RunArgs),
    /// Print the counters of the run active in this network namespace.
    Stats(StatsArgs),
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach to (repeat for several).
    #[arg(long = "iface", value_name = "IF", required = true)]
    pub interfaces: Vec<String>,
    /// enforce: drop ADD_ADDRs with a wrong HMAC; monitor: only count them.
    #[arg(long, value_enum, default_value_t = FilterMode::Monitor)]
    pub mode: FilterMode,
    /// native: in the driver; skb: generic XDP; auto: native, else generic.
    #[arg(long = "xdp-mode", value_enum, default_value_t = XdpAttach::Auto)]
    pub xdp_mode: XdpAttach,
    /// Where to pin the maps [default: /sys/fs/bpf/mptcp-fw/netns-<inode of this network namespace>].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

/// Arguments of `stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one JSON object (counter name -> number, plus "install_latency_us") and nothing else.
    #[arg(long)]
    pub json: bool,
    /// The run's pin directory [default: the one of this network namespace].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

/// Runs one command.
///
/// # Errors
/// Whatever the command fails with; `main` prints it as one line.
pub async fn execute(cli: Cli) -> Result<(), LoaderError> {
    match cli.command {
        Command::Run(args) => {
            let plan = RunPlan::new(
                &args.interfaces,
                args.mode,
                args.xdp_mode,
                args.pin_dir,
                default_pin_dir,
            )?;
            run(plan).await
        }
        Command::Stats(args) => {
            check_root(effective_uid())?;
            let pin_dir = match args.pin_dir {
                Some(dir) => dir,
                None => default_pin_dir()?,
            };
            let report = read_report(&pin_dir)?;
            if args.json {
                println!("{}", format_json(&report));
            } else {
                print!("{}", format_table(&report));
            }
            if !report.live {
                eprintln!(
                    "warning: no live run holds {}: these counters were left behind by a run that ended without cleaning up",
                    pin_dir.display()
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_run() {
        let cli = Cli::try_parse_from([
            "mptcp-loader",
            "run",
            "--iface",
            "veth0",
            "--iface",
            "veth1",
            "--mode",
            "enforce",
            "--xdp-mode",
            "skb",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.interfaces, ["veth0", "veth1"]);
        assert_eq!(
            (args.mode, args.xdp_mode, args.pin_dir),
            (FilterMode::Enforce, XdpAttach::Skb, None)
        );
    }

    #[test]
    fn run_defaults_and_requires_an_interface() {
        let cli = Cli::try_parse_from(["mptcp-loader", "run", "--iface", "eth0"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            (args.mode, args.xdp_mode),
            (FilterMode::Monitor, XdpAttach::Auto)
        );
        assert!(Cli::try_parse_from(["mptcp-loader", "run"]).is_err());
        assert!(
            Cli::try_parse_from(["mptcp-loader", "run", "--iface", "x", "--mode", "block"])
                .is_err()
        );
    }

    #[test]
    fn parses_stats() {
        let cli = Cli::try_parse_from([
            "mptcp-loader",
            "stats",
            "--json",
            "--pin-dir",
            "/sys/fs/bpf/x",
        ])
        .unwrap();
        let Command::Stats(args) = cli.command else {
            panic!()
        };
        assert!(args.json);
        assert_eq!(args.pin_dir, Some(PathBuf::from("/sys/fs/bpf/x")));
    }

    #[test]
    fn clap_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
