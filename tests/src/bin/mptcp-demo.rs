//! `mptcp-demo`: the ADD_ADDR validator at work, in a throw-away two-namespace lab.
//!
//! Builds the lab, starts `mptcp-loader run --mode enforce` on the server's two interfaces,
//! runs a genuine MPTCP transfer (whose ADD_ADDR must pass), injects forged ADD_ADDRs (which
//! must be dropped), and prints what the kernel and the validator counted. Ctrl-C tears the lab
//! down. Needs root, iproute2, tcpdump and nsenter (`cargo xtask setup`).
//!
//! ```text
//! mptcp-demo [--loader PATH] [--mode enforce|monitor] [--no-validator]
//!            [--bytes N] [--forged K] [--no-control] [--keep]
//! mptcp-demo --gateways [--loader PATH] [--keep]
//! ```
//!
//! `--gateways`: the two-gateway case instead (`mptcp_tests::gateways`): the handshake passes
//! gateway 1, the joins gateway 2, both enforce; first with the shared store (a redis-server in
//! its own namespace), where the joins complete, then without it, where gateway 2 drops the
//! genuine join.

use std::{
    env,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use mptcp_common::counters::Counter;
use mptcp_tests::{
    counters::mib,
    gateways::{
        self, counter, stats_json, store_options, Connection, GatewayLab, StoreServer, GW1_IFACES,
        GW2_IFACES, SERVER,
    },
    lab::{Lab, KEEP_ENV, PATH2, SERVER_IFACES},
    netns::Netns,
    scenario::{self, Outcome, Scenario},
    teardown,
    tools::Tools,
    validator::{self, Mode, StopReport, Validator, ValidatorStats},
};

struct Args {
    loader: Option<PathBuf>,
    gateways: bool,
    mode: Mode,
    validator: bool,
    scenario: Scenario,
}

const USAGE: &str = "usage: mptcp-demo [--loader PATH] [--mode enforce|monitor] [--no-validator] \
                     [--bytes N] [--forged K] [--no-control] [--keep]\n       \
                     mptcp-demo --gateways [--loader PATH] [--keep]";

fn parse_args() -> Result<Args> {
    let mut args = Args {
        loader: None,
        gateways: false,
        mode: Mode::Enforce,
        validator: true,
        scenario: Scenario::default(),
    };
    let mut it = env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--loader" => args.loader = Some(value("--loader")?.into()),
            "--mode" => {
                args.mode = match value("--mode")?.as_str() {
                    "enforce" => Mode::Enforce,
                    "monitor" => Mode::Monitor,
                    other => bail!("--mode {other}: expected enforce or monitor"),
                }
            }
            "--no-validator" => args.validator = false,
            "--gateways" => args.gateways = true,
            "--bytes" => args.scenario.bytes = value("--bytes")?.parse().context("--bytes")?,
            "--forged" => args.scenario.forged = value("--forged")?.parse().context("--forged")?,
            "--no-control" => args.scenario.control = false,
            // Still single-threaded here.
            "--keep" => env::set_var(KEEP_ENV, "1"),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    // After Ctrl-C, errors are just children dying: the signal thread finishes and exits.
    teardown::exit_code("mptcp-demo", run())
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let tools = Tools::next_to_current_exe();
    let missing = tools.missing();
    if !missing.is_empty() {
        bail!("cannot run the lab: {}", missing.join("; "));
    }
    let loader = if args.validator {
        Some(args.loader.clone().or_else(validator::locate_loader).context(
            "mptcp-loader not found: build it (`cargo xtask build`), pass --loader PATH or set \
             MPTCP_LOADER_BIN, or run without the validator (--no-validator)",
        )?)
    } else {
        None
    };

    teardown::install_signal_teardown().context("installing the SIGINT/SIGTERM handler")?;
    if args.gateways {
        let loader = loader.context("--gateways needs the validator")?;
        return run_gateways(&loader, &tools);
    }
    let lab = Lab::new().context("building the lab")?;
    println!(
        "lab: {} <-> {} (two veth paths, 198.18.1.0/24 and 198.18.2.0/24)",
        lab.client.name(),
        lab.server.name()
    );

    let running = if let Some(bin) = &loader {
        println!(
            "starting {} run --iface {} --mode {}",
            bin.display(),
            SERVER_IFACES.join(" --iface "),
            args.mode.as_str()
        );
        let v = Validator::start(&lab.server, bin, &SERVER_IFACES, args.mode)
            .context("starting the validator")?;
        for line in v.attach_lines() {
            println!("  loader: {line}");
        }
        Some(v)
    } else {
        println!("no validator: this is the baseline (forged ADD_ADDRs reach the server)");
        None
    };

    println!(
        "genuine transfer of {} bytes, then {} forged ADD_ADDR(s){} ...",
        args.scenario.bytes,
        args.scenario.forged,
        if args.scenario.control {
            " and one positive control"
        } else {
            ""
        }
    );
    let outcome = scenario::run(&lab, &tools, &args.scenario).context("running the scenario")?;

    let (stats, stop) = match running {
        Some(v) => {
            let stats = v.stats(&lab.server).context("mptcp-loader stats --json");
            let stop = v.stop(&lab.server).context("stopping the validator")?;
            (Some(stats?), Some(stop))
        }
        None => (None, None),
    };
    print_report(&outcome, stats.as_ref(), stop.as_ref());
    drop(lab);
    if let (Some(stats), Mode::Enforce) = (&stats, args.mode) {
        // The demo's point, checked: `cargo xtask test` runs the demo and relies on this.
        let sent = u64::from(outcome.forged.sent);
        let dropped = stats.get(Counter::AddAddrBadHmacDropped);
        let reached = outcome.forged_seen_by_server();
        if dropped < sent || reached > 0 {
            bail!(
                "{sent} forged ADD_ADDR(s) sent, {dropped} dropped by the validator, {reached} \
                 seen by the server's tcpdump: the validator did not stop them"
            );
        }
        println!();
        println!(
            "result: all {sent} forged ADD_ADDR(s) dropped by the validator, none reached the \
             server's stack"
        );
    }
    Ok(())
}

fn print_report(o: &Outcome, stats: Option<&ValidatorStats>, stop: Option<&StopReport>) {
    let sc = &o.scenario;
    let v =
        |c: Counter| stats.map_or_else(|| "-".to_owned(), |s| format!("{} {}", c.name(), s.get(c)));
    let mut rows: Vec<[String; 3]> = Vec::new();
    let mut row = |label: &str, kernel: String, validator: String| {
        rows.push([label.to_owned(), kernel, validator]);
    };
    row(
        &format!("genuine ADD_ADDR (id 1, {})", PATH2.client_addr),
        String::new(),
        String::new(),
    );
    row(
        "  accepted",
        format!(
            "{} {}",
            o.server.after_genuine.delta(&o.server.start, mib::ADD_ADDR),
            mib::ADD_ADDR
        ),
        stats.map_or_else(String::new, |_| {
            format!("{} (with the control)", v(Counter::AddAddrValid))
        }),
    );
    row(
        &format!(
            "forged ADD_ADDR, random HMAC (id {}, {})",
            sc.forged_id, sc.forged_addr
        ),
        String::new(),
        String::new(),
    );
    row("  sent", o.forged.sent.to_string(), String::new());
    row(
        "  dropped by the validator",
        String::new(),
        v(Counter::AddAddrBadHmacDropped),
    );
    row(
        "  would drop (monitor mode)",
        String::new(),
        v(Counter::AddAddrBadHmacWouldDrop),
    );
    row(
        "  reached the server stack",
        format!(
            "{} seen by tcpdump, {} {:+}",
            o.forged_seen_by_server(),
            mib::TCP_IN_SEGS,
            o.forged_delta(mib::TCP_IN_SEGS)
        ),
        String::new(),
    );
    row(
        "  accepted by the kernel",
        format!("{} {}", o.forged_delta(mib::ADD_ADDR), mib::ADD_ADDR),
        String::new(),
    );
    if let Some(c) = &o.control {
        row(
            &format!("control ADD_ADDR, right HMAC (id {}, {})", c.id, c.addr),
            String::new(),
            String::new(),
        );
        row(
            "  sent / accepted",
            format!("{} / {}", c.sent, o.control_delta(mib::ADD_ADDR)),
            String::new(),
        );
    }
    row(
        "bytes sent / received",
        format!("{} / {}", o.client_report.sent, o.bytes_received),
        String::new(),
    );
    row(
        "client MPTCP_INFO at close",
        o.client_report.mptcp_info.clone(),
        String::new(),
    );

    let w0 = rows.iter().map(|r| r[0].len()).max().unwrap_or(0);
    let w1 = rows
        .iter()
        .map(|r| r[1].len())
        .max()
        .unwrap_or(0)
        .max("server kernel".len());
    println!();
    println!("{:<w0$}  {:<w1$}  validator", "", "server kernel");
    for [label, kernel, validator] in &rows {
        println!(
            "{}",
            format!("{label:<w0$}  {kernel:<w1$}  {validator}").trim_end()
        );
    }
    if let Some(s) = stats {
        println!();
        println!("validator counters (mptcp-loader stats --json):");
        for c in Counter::ALL {
            println!("  {:<30} {}", c.name(), s.get(*c));
        }
        let missing = s.missing();
        if !missing.is_empty() {
            println!("  (not in the JSON: {})", missing.join(", "));
        }
    }
    if let Some(stop) = stop {
        println!();
        println!(
            "validator stopped: {}{}{}",
            stop.status,
            if stop.graceful {
                ""
            } else {
                " (killed after the SIGINT grace period)"
            },
            if stop.still_attached.is_empty() {
                String::new()
            } else {
                format!(", XDP still on {}", stop.still_attached.join(", "))
            }
        );
    }
    println!();
    println!(
        "server kernel MPTCP counter changes: {}",
        o.server.end.changes_since(&o.server.start).mptcp()
    );
}

/// The two-gateway demo (see the module docs).
fn run_gateways(loader: &Path, tools: &Tools) -> Result<()> {
    let missing = gateways::redis_missing();
    if !missing.is_empty() {
        bail!("cannot run the two-gateway lab: {}", missing.join("; "));
    }
    let lab = GatewayLab::new().context("building the two-gateway lab")?;
    println!(
        "lab: client {} -> gateway 1 {} (path 1, the handshake) and gateway 2 {} (path 2, the joins) -> server {}; store {}",
        lab.client.name(),
        lab.gw1.name(),
        lab.gw2.name(),
        lab.server.name(),
        lab.store_ns.name()
    );
    let start = |ns: &Netns, ifaces: &[&str], options: &[String]| {
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        Validator::start_with(ns, loader, ifaces, Mode::Enforce, &options)
            .with_context(|| format!("starting the loader in {}", ns.name()))
    };

    println!("\n1. both gateways in enforce mode, sharing what they learn through redis-server");
    let store = StoreServer::start(&lab).context("starting redis-server")?;
    let [url1, url2] = GatewayLab::store_urls();
    let gw1 = start(&lab.gw1, &GW1_IFACES, &store_options(&url1, &store, "gw1"))?;
    let gw2 = start(&lab.gw2, &GW2_IFACES, &store_options(&url2, &store, "gw2"))?;
    let mut conn = Connection::open(&lab, &tools.peer_bin, SERVER, true).context("connecting")?;
    let with = conn.wait_joins(&lab, Duration::from_secs(10))?;
    let (s1, s2) = (stats_json(&lab.gw1)?, stats_json(&lab.gw2)?);
    let (sent, received) = conn.finish()?;
    let c = |s: &serde_json::Value, name: &str| counter(s, name).unwrap_or(0);
    println!(
        "   gateway 1 learned the keys and published {} connection(s); gateway 2 installed {} from the store ({})",
        c(&s1, "loader_store_published"),
        c(&s2, "loader_store_applied"),
        s2["store"]
    );
    println!(
        "   client's join through gateway 2: {}; server's join: {}; gateway 2 validated {} join(s), dropped {} join SYN(s) as unknown; {sent} bytes sent, {received} received",
        after(with.client_join_after),
        after(with.server_join_after),
        c(&s2, Counter::JoinAckValid.name()),
        c(&s2, Counter::JoinSynUnknownTokenDropped.name())
    );
    gw1.stop(&lab.gw1)?;
    gw2.stop(&lab.gw2)?;
    drop(store);

    println!("\n2. the same without the store");
    let gw1 = start(&lab.gw1, &GW1_IFACES, &[])?;
    let gw2 = start(&lab.gw2, &GW2_IFACES, &[])?;
    let second = SocketAddrV4::new(*SERVER.ip(), SERVER.port() + 1);
    let mut conn = Connection::open(&lab, &tools.peer_bin, second, false).context("connecting")?;
    let without = conn.wait_joins(&lab, Duration::from_secs(4))?;
    let s2 = stats_json(&lab.gw2)?;
    conn.finish()?;
    let dropped = c(&s2, Counter::JoinSynUnknownTokenDropped.name());
    println!(
        "   client's join through gateway 2: {}; gateway 2 dropped {dropped} genuine join SYN(s) as blind joins (it never saw the keys)",
        after(without.client_join_after)
    );
    gw1.stop(&lab.gw1)?;
    gw2.stop(&lab.gw2)?;
    drop(lab);
    if with.client_join_after.is_none()
        || with.server_join_after.is_none()
        || without.client_join_after.is_some()
        || dropped == 0
    {
        bail!("the two-gateway demo did not show what the store adds (see above)");
    }
    println!("\nresult: with the store both joins through gateway 2 completed; without it gateway 2 dropped the genuine join");
    Ok(())
}

fn after(d: Option<Duration>) -> String {
    d.map_or_else(
        || "did not complete".to_owned(),
        |d| format!("completed {} ms after the connection", d.as_millis()),
    )
}
