//! Command line: `mptcp-loader run ...`, `stats`, `status`, `conns`, `events`, `detach`.

pub mod error;
pub mod map_keeper;
pub mod policy_keeper;
pub mod run;

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use mptcp_common::maps::{MAX_CONNS, MAX_JOINS};

use crate::{
    cli::error::LoaderError,
    cli::run::{run, RunPlan, DEFAULT_IDLE_TIMEOUT_S},
    conn::closed::CLOSED_CHECK_INTERVAL_S,
    kernel::detach::print_detach,
    kernel::firewall::{EgressAttach, XdpAttach},
    kernel::map_sizes::{parse_map_limit, MapSizes},
    kernel::multiprog::XdpChain,
    kernel::pins::default_pin_dir,
    kernel::preflight::{check_root, effective_uid, interface_index},
    kernel::state::pinned_links,
    mode::FilterMode,
    observe::conns::{conns_json, format_conns, read_conns},
    observe::events::{default_state_dir, follow_events, print_events, DEFAULT_EVENTS_MAX_BYTES},
    observe::stats::{format_json, format_table, locate_pins, read_report},
    observe::status::print_status,
    policy::config::{check_report, PolicyArgs, PolicySource},
};

/// MPTCP signalling firewall: checks ADD_ADDR HMACs, MP_JOIN tokens and HMACs and MP_FASTCLOSE
/// keys (RFC 8684) with XDP on ingress, and learns the host's own keys and nonces with tc on
/// egress.
#[derive(Debug, Parser)]
#[command(name = "mptcp-loader", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once per process; boxing would only add noise"
)]
pub enum Command {
    /// Load the programs, attach XDP (ingress) and tc (egress), and keep the maps (install
    /// connection keys, forget idle connections) until Ctrl-C / SIGTERM.
    Run(RunArgs),
    /// Print the counters and map fill levels of the run active in this network namespace.
    Stats(StatsArgs),
    /// Show what is attached where (interfaces, XDP mode, tc hooks, modes), map fill levels,
    /// version, uptime and the run's pid, also when no loader process runs.
    Status(StatusArgs),
    /// List the tracked connections: tokens, subflows, age (keys only with --show-keys).
    Conns(ConnsArgs),
    /// Print the recorded drop events (JSON lines); --follow keeps printing new ones.
    Events(EventsArgs),
    /// Detach the firewall a run left attached (killed, or --keep-attached) from every
    /// interface, or one, and remove its pins.
    Detach(DetachArgs),
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach XDP ingress and tc egress to (repeat for several).
    #[arg(long = "iface", value_name = "IF", required = true)]
    pub interfaces: Vec<String>,
    /// enforce: drop ADD_ADDRs with a wrong HMAC; monitor: only count them [default: monitor,
    /// or the --config file's `mode`].
    #[arg(long, value_enum)]
    pub mode: Option<FilterMode>,
    /// native: in the driver; skb: generic XDP; auto: native, else generic.
    #[arg(long = "xdp-mode", value_enum, default_value_t = XdpAttach::Auto)]
    pub xdp_mode: XdpAttach,
    /// tcx: a TCX link (Linux >= 6.6); clsact: a clsact direct-action filter (priority 1,
    /// handle 0x4d46), for kernels without TCX; auto: TCX if the kernel has it, else clsact. A
    /// run that adopts an interface keeps the egress attachment it finds there.
    #[arg(long = "egress-attach", value_enum, default_value_t = EgressAttach::Auto)]
    pub egress_attach: EgressAttach,
    /// exclusive: the XDP hook to the firewall alone (a pinned XDP link); multiprog: the
    /// firewall as a component of libxdp's multi-program dispatcher (xdp-tools), at run
    /// priority 20 and chaining on XDP_PASS, beside xdp-filter, xdp-loader's programs, ...
    #[arg(long = "xdp-chain", value_enum, default_value_t = XdpChain::Exclusive)]
    pub xdp_chain: XdpChain,
    /// Where to pin the maps [default: /sys/fs/bpf/mptcp-fw/netns-<inode of this network namespace>].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Connections tracked at once (1..=16777216); the subflow and token maps get twice as many
    /// entries. The maps are preallocated: memory is spent at start.
    #[arg(long, value_name = "N", default_value_t = MAX_CONNS, value_parser = parse_map_limit)]
    pub max_conns: u32,
    /// MP_JOIN handshakes in progress tracked at once (1..=16777216).
    #[arg(long, value_name = "N", default_value_t = MAX_JOINS, value_parser = parse_map_limit)]
    pub max_joins: u32,
    /// Forget a connection after this many seconds without an MPTCP segment on any of its
    /// subflows (checked every min(SECONDS/4, 60) s); 0 keeps connections until their last
    /// subflow ends or the maps evict them. The fast path notes activity on every signalling
    /// segment but on only one data segment in 16, chosen at random: keep the timeout well above
    /// the time a live connection takes to send a few dozen segments. A forgotten connection's
    /// tokens stay, so if it was alive after all its later joins fail open (join_state_missing).
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_IDLE_TIMEOUT_S)]
    pub idle_timeout: u32,
    /// How often to ask the host's kernel (sock_diag) whether the subflows the fast path marked
    /// closing (a FIN or RST it did not see this host send) still have a socket, and remove
    /// those that do not (1..=3600).
    #[arg(long, value_name = "SECONDS", default_value_t = CLOSED_CHECK_INTERVAL_S,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub closed_check_interval: u64,
    /// On SIGINT/SIGTERM, leave the programs attached and the maps and links pinned (for an
    /// upgrade: the next `run` adopts them without a gap; `mptcp-loader detach` removes them).
    #[arg(long)]
    pub keep_attached: bool,
    /// Also write every dropped (or would-drop) segment to this pcap file (the first 128 bytes of
    /// each frame, with its original length).
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Where to write events.jsonl [default: /run/mptcp-fw/<name of the pin directory>].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Size bound of events.jsonl in MiB (rotated once, to events.jsonl.1).
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_EVENTS_MAX_BYTES >> 20, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub events_max_mib: u64,
    /// Serve the counters, map fill levels and policy in Prometheus text format on
    /// http://ADDR:PORT/metrics, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Share learned connections with the other gateways through this Redis store:
    /// redis://[USER@]HOST[:PORT][/DB], or rediss://... for TLS. Its hashes and stream hold
    /// connection keys: see the README ("More than one box") for what to protect.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// File whose first line is the store password (keeps it out of `ps` and the shell history).
    #[arg(long, value_name = "FILE", requires = "store")]
    pub store_password_file: Option<PathBuf>,
    /// PEM file of the CA that signed the store's TLS certificate (rediss:// only).
    #[arg(long, value_name = "FILE", requires = "store")]
    pub store_ca_file: Option<PathBuf>,
    /// This loader's id in the store [default: host name, process id and start time].
    #[arg(long, value_name = "ID", requires = "store")]
    pub store_id: Option<String>,
    /// Seconds to wait for the first catch-up from the store before attaching anyway.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::shared_store::DEFAULT_CATCH_UP_TIMEOUT_S,
          value_parser = clap::value_parser!(u64).range(0..=600), requires = "store")]
    pub store_catch_up_timeout: u64,
    /// The policy: file and flags.
    #[command(flatten)]
    pub policy: PolicyArgs,
}

/// Arguments of `stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print one JSON object and nothing else: BPF counter name -> number, the loader's own
    /// counters ("loader_..." -> number), "maps": {MAP: {"entries", "max"}}, and
    /// "install_latency_us".
    #[arg(long)]
    pub json: bool,
    /// The run's pin directory [default: the one of this network namespace].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The pin directory [default: the one of this network namespace].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

/// Arguments of `conns`.
#[derive(Debug, Args)]
pub struct ConnsArgs {
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Also print both keys of every connection (they let anyone forge its signalling).
    #[arg(long)]
    pub show_keys: bool,
    /// The pin directory [default: the one of this network namespace].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

/// Arguments of `events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing events as they are recorded (like `tail -f`), until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// The run's state directory [default: /run/mptcp-fw/<name of the pin directory>].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The pin directory the state directory is named after [default: the one of this network
    /// namespace].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

/// Arguments of `detach`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Detach from this interface only (the pins stay for the others).
    #[arg(long = "iface", value_name = "IF")]
    pub iface: Option<String>,
    /// The pin directory [default: the one of this network namespace].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
}

fn pin_dir_or_default(pin_dir: Option<PathBuf>) -> Result<PathBuf, LoaderError> {
    match pin_dir {
        Some(dir) => Ok(dir),
        None => Ok(default_pin_dir()?),
    }
}

/// Runs one command.
///
/// # Errors
/// Whatever the command fails with; `main` prints it as one line.
pub async fn execute(cli: Cli) -> Result<(), LoaderError> {
    match cli.command {
        Command::Run(args) => {
            let source = PolicySource {
                file: args.policy.config.clone(),
                mode: args.mode,
                flags: args.policy.clone(),
                interfaces: args.interfaces.clone(),
            };
            let policy = source.load()?;
            if args.policy.check_config {
                print!("{}", check_report(&source, &policy));
                return Ok(());
            }
            let mut plan = RunPlan::new(
                &args.interfaces,
                policy.mode,
                args.xdp_mode,
                args.pin_dir,
                || Ok(default_pin_dir()?),
            )?;
            plan.egress = args.egress_attach;
            plan.xdp_chain = args.xdp_chain;
            plan.sizes = MapSizes::for_limits(args.max_conns, args.max_joins);
            plan.idle_timeout_s = args.idle_timeout;
            plan.closed_check_interval_s = args.closed_check_interval;
            plan.keep_attached = args.keep_attached;
            plan.pcap = args.pcap;
            if let Some(dir) = args.state_dir {
                plan.state_dir = dir;
            }
            plan.events_max_bytes = args.events_max_mib << 20;
            (plan.policy, plan.policy_source, plan.metrics) = (policy, source, args.metrics);
            plan.store = args.store.map(|url| crate::shared_store::StoreOptions {
                url,
                password_file: args.store_password_file,
                ca_file: args.store_ca_file,
                id: args.store_id,
                catch_up_timeout_s: args.store_catch_up_timeout,
            });
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
                let attached = locate_pins(&pin_dir)
                    .ok()
                    .and_then(|dir| pinned_links(&dir).ok())
                    .is_some_and(|links| !links.is_empty());
                if attached {
                    eprintln!(
                        "warning: no loader process holds {}: the programs still run through pinned links (the loader counters stand still until the next run)",
                        pin_dir.display()
                    );
                } else {
                    eprintln!(
                        "warning: no live run holds {}: these counters were left behind by a run that ended without cleaning up",
                        pin_dir.display()
                    );
                }
            }
            Ok(())
        }
        Command::Status(args) => {
            check_root(effective_uid())?;
            print_status(&pin_dir_or_default(args.pin_dir)?, args.json).map_err(Into::into)
        }
        Command::Conns(args) => {
            check_root(effective_uid())?;
            let views = read_conns(&pin_dir_or_default(args.pin_dir)?)?;
            if args.json {
                println!("{}", conns_json(&views, args.show_keys));
            } else {
                print!("{}", format_conns(&views, args.show_keys));
            }
            Ok(())
        }
        Command::Events(args) => {
            // Reads a file only: root is needed only if the directory is root's alone.
            let state_dir = match args.state_dir {
                Some(dir) => dir,
                None => default_state_dir(&pin_dir_or_default(args.pin_dir)?),
            };
            let mut out = std::io::stdout().lock();
            if args.follow {
                follow_events(
                    &state_dir,
                    &mut out,
                    std::time::Duration::from_millis(200),
                    || true,
                )?;
            } else {
                print_events(&state_dir, &mut out)?;
            }
            Ok(())
        }
        Command::Detach(args) => {
            // The interface needs no privileges to check, so it is first (as for `run`).
            if let Some(iface) = &args.iface {
                interface_index(iface)?;
            }
            check_root(effective_uid())?;
            print_detach(&pin_dir_or_default(args.pin_dir)?, args.iface.as_deref())
                .map_err(Into::into)
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
            (Some(FilterMode::Enforce), XdpAttach::Skb, None)
        );
    }

    #[test]
    fn run_defaults_and_requires_an_interface() {
        let cli = Cli::try_parse_from(["mptcp-loader", "run", "--iface", "eth0"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert_eq!((args.mode, args.xdp_mode), (None, XdpAttach::Auto));
        assert!(Cli::try_parse_from(["mptcp-loader", "run"]).is_err());
        assert!(
            Cli::try_parse_from(["mptcp-loader", "run", "--iface", "x", "--mode", "block"])
                .is_err()
        );
    }

    #[test]
    fn parses_limits_and_timeout() {
        let cli = Cli::try_parse_from([
            "mptcp-loader",
            "run",
            "--iface",
            "veth0",
            "--max-conns",
            "1000",
            "--max-joins",
            "50",
            "--idle-timeout",
            "0",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            (args.max_conns, args.max_joins, args.idle_timeout),
            (1000, 50, 0)
        );
        let defaults = Cli::try_parse_from(["mptcp-loader", "run", "--iface", "veth0"]).unwrap();
        let Command::Run(args) = defaults.command else {
            panic!()
        };
        assert_eq!(
            (args.max_conns, args.max_joins, args.idle_timeout),
            (MAX_CONNS, MAX_JOINS, 7200)
        );
    }

    #[test]
    fn bad_limits_are_refused_with_the_accepted_range() {
        for (flag, value) in [
            ("--max-conns", "0"),
            ("--max-conns", "16777217"),
            ("--max-joins", "lots"),
        ] {
            let err = Cli::try_parse_from(["mptcp-loader", "run", "--iface", "x", flag, value])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("expected a whole number from 1 to 16777216"),
                "{flag} {value}: {err}"
            );
        }
        assert!(Cli::try_parse_from([
            "mptcp-loader",
            "run",
            "--iface",
            "x",
            "--idle-timeout",
            "-1"
        ])
        .is_err());
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
    fn parses_the_operator_commands() {
        let cli = Cli::try_parse_from([
            "mptcp-loader",
            "run",
            "--iface",
            "veth0",
            "--keep-attached",
            "--pcap",
            "/tmp/d.pcap",
            "--state-dir",
            "/tmp/state",
            "--events-max-mib",
            "2",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert!(args.keep_attached);
        assert_eq!(args.pcap, Some(PathBuf::from("/tmp/d.pcap")));
        assert_eq!(args.state_dir, Some(PathBuf::from("/tmp/state")));
        assert_eq!(args.events_max_mib, 2);
        let defaults = Cli::try_parse_from(["mptcp-loader", "run", "--iface", "veth0"]).unwrap();
        let Command::Run(args) = defaults.command else {
            panic!()
        };
        assert!(!args.keep_attached && args.pcap.is_none());
        assert_eq!(args.events_max_mib, 16);
        assert!(Cli::try_parse_from([
            "mptcp-loader",
            "run",
            "--iface",
            "x",
            "--events-max-mib",
            "0"
        ])
        .is_err());

        let Command::Status(args) = Cli::try_parse_from(["mptcp-loader", "status", "--json"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(args.json && args.pin_dir.is_none());
        let Command::Conns(args) = Cli::try_parse_from(["mptcp-loader", "conns", "--show-keys"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(args.show_keys && !args.json);
        let Command::Events(args) = Cli::try_parse_from(["mptcp-loader", "events", "-f"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(args.follow);
        let Command::Detach(args) =
            Cli::try_parse_from(["mptcp-loader", "detach", "--iface", "veth0"])
                .unwrap()
                .command
        else {
            panic!()
        };
        assert_eq!(args.iface.as_deref(), Some("veth0"));
        let Command::Detach(args) = Cli::try_parse_from(["mptcp-loader", "detach"])
            .unwrap()
            .command
        else {
            panic!()
        };
        assert!(args.iface.is_none());
    }

    #[test]
    fn parses_policy_and_metrics_flags() {
        use crate::policy::{PortRule, UnknownConn};
        let cli = Cli::try_parse_from([
            "mptcp-loader",
            "run",
            "--iface",
            "veth0",
            "--config",
            "/etc/mptcp-fw/mptcp-fw.toml",
            "--iface-mode",
            "veth0=monitor",
            "--unknown-conn",
            "drop",
            "--allow-prefix",
            "198.18.0.0/15",
            "--allow-port",
            "none",
            "--allow-port",
            "443",
            "--join-syn-rate",
            "10",
            "--event-rate",
            "0",
            "--metrics",
            "127.0.0.1:9464",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        let p = &args.policy;
        assert_eq!(p.config, Some(PathBuf::from("/etc/mptcp-fw/mptcp-fw.toml")));
        assert_eq!(p.iface_modes, [("veth0".to_owned(), FilterMode::Monitor)]);
        assert_eq!(p.unknown_conn, Some(UnknownConn::Drop));
        assert_eq!(p.allow_prefixes.len(), 1);
        assert_eq!(
            p.allow_ports,
            [
                crate::policy::config::Allowed::Only(PortRule::NoPort),
                crate::policy::config::Allowed::Only(PortRule::Port(443))
            ]
        );
        assert_eq!((p.join_syn_rate, p.event_rate), (Some(10), Some(0)));
    }

    #[test]
    fn bad_policy_and_metrics_flags_are_refused() {
        for (flag, value, why) in [
            ("--metrics", "9464", "invalid socket address syntax"),
            (
                "--metrics",
                "localhost:9464",
                "invalid socket address syntax",
            ),
            (
                "--allow-prefix",
                "198.18.0.0/33",
                "the prefix length 33 is more than 32",
            ),
            ("--allow-port", "0", "write \"none\""),
            ("--iface-mode", "veth0", "expected IF=enforce or IF=monitor"),
            ("--unknown-conn", "maybe", "possible values: pass, drop"),
            (
                "--join-syn-rate",
                "2000000",
                "expected a whole number from 0 to 1000000",
            ),
        ] {
            let err = Cli::try_parse_from(["mptcp-loader", "run", "--iface", "x", flag, value])
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn clap_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
