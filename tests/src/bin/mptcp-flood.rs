//! `mptcp-flood`: flood resistance of the receiver against forged MPTCP signalling, with and
//! without the validator, between two network namespaces (root only).
//!
//! trafgen floods a live MPTCP connection with forged ADD_ADDRs (right 4-tuple, in-window
//! seq/ack, latest timestamps, wrong HMAC), at one address and at a random address per packet
//! (which no tag cache answers), then its listener with MP_JOIN SYNs naming random tokens, and the
//! 4-tuple of a join it has pending with third ACKs carrying random HMACs, at fixed offered
//! rates. For each attack and rate it measures the receiver's CPU time
//! per forged packet with only the kernel, with the validator enforcing, and (for reference)
//! with a two-instruction XDP_DROP and XDP_PASS program, and a genuine MPTCP transfer's
//! throughput with and without the flood. Writes `<out>/flood.md` and `<out>/flood.svg`.
//! See `mptcp_tests::flood` for the lab and the README's "Flood resistance" section.

#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "statistics are rounded to non-negative counts, which `as` saturates"
)]

use std::{
    collections::BTreeMap, fmt::Write as _, net::SocketAddr, path::PathBuf, process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use mptcp_tests::{
    flood::{
        cpu::{self, CpuStat},
        endpoints::{self, Amount},
        xdp, Attached, Attack, Delivery, FloodLab, FloodWindow, Receiver, Transfer, Victim,
        JOIN_ACK_HMAC_FAILURE, JOIN_NO_TOKEN, OUT_RSTS,
    },
    svg::Svg,
    teardown, validator,
};

#[derive(Parser)]
#[command(
    about = "Flood a live MPTCP connection with forged ADD_ADDRs, MP_JOIN SYNs and MP_JOIN third \
             ACKs (trafgen) and measure the receiver's CPU time per forged packet with and without \
             the validator",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    helper: Option<Helper>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
#[allow(clippy::struct_excessive_bools, reason = "command-line switches")]
struct RunArgs {
    /// Output folder for flood.md and flood.svg.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Repetitions of every configuration (medians and ranges are reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Offered rates in packets per second, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50000,200000")]
    rates: Vec<u32>,
    /// Seconds per flood window.
    #[arg(long, default_value_t = 3.0)]
    window_secs: f64,
    /// Seconds per genuine transfer.
    #[arg(long, default_value_t = 3.0)]
    transfer_secs: f64,
    /// Emulated interrupt coalescing on the server's veths, in microseconds, as a NIC does
    /// (0: none, every packet that finds the NAPI thread asleep wakes it).
    #[arg(long, default_value_t = 50)]
    coalesce_us: u64,
    /// Skip the XDP_DROP / XDP_PASS reference configurations.
    #[arg(long)]
    no_floors: bool,
    /// The attacks to run, comma-separated [default: all].
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = Attack::ALL)]
    attacks: Vec<Attack>,
    /// Skip the genuine transfers.
    #[arg(long)]
    no_transfers: bool,
    /// Also time the XDP programs themselves with the kernel's `bpf_stats`: each window then
    /// reports the time spent inside the receiving program (this adds two clock reads to every
    /// XDP run, so the CPU-time columns of such a run are not comparable with others).
    #[arg(long)]
    program_stats: bool,
    /// The loader binary [default: $MPTCP_LOADER_BIN, else next to this binary].
    #[arg(long)]
    loader: Option<PathBuf>,
    /// One short repetition at one rate, no floors, genuine transfers only without a flood
    /// and during the first two attacks: checks that everything works (CI), claims nothing.
    #[arg(long)]
    quick: bool,
}

#[derive(Subcommand)]
enum Helper {
    /// (internal) MPTCP server endpoint, run inside the server namespace.
    #[command(hide = true)]
    Serve { addr: SocketAddr },
    /// (internal) MPTCP client endpoint, run inside the client namespace.
    #[command(hide = true)]
    Send {
        addr: SocketAddr,
        #[arg(long, conflicts_with = "seconds")]
        bytes: Option<u64>,
        #[arg(long)]
        seconds: Option<f64>,
        #[arg(long)]
        hold: bool,
    },
    /// (internal) Attach a two-instruction XDP program (drop or pass) to interfaces and hold it
    /// until stdin closes.
    #[command(hide = true)]
    Xdp {
        action: String,
        #[arg(required = true)]
        ifaces: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.helper {
        Some(helper) => run_helper(helper),
        None => run_bench(cli.run),
    };
    teardown::exit_code("mptcp-flood", result)
}

fn run_helper(helper: Helper) -> Result<()> {
    match helper {
        Helper::Serve { addr } => endpoints::serve(addr)?,
        Helper::Send {
            addr,
            bytes,
            seconds,
            hold,
        } => {
            let amount = match (bytes, seconds) {
                (Some(n), None) => Amount::Bytes(n),
                (None, Some(s)) => Amount::For(Duration::from_secs_f64(s)),
                _ => bail!("send needs --bytes or --seconds"),
            };
            endpoints::send(addr, amount, hold)?;
        }
        Helper::Xdp { action, ifaces } => {
            let code = match action.as_str() {
                "drop" => xdp::XDP_DROP,
                "pass" => xdp::XDP_PASS,
                other => bail!("xdp action {other}: drop or pass"),
            };
            let prog = xdp::load(code).context("loading the XDP program")?;
            let _links = ifaces
                .iter()
                .map(|i| xdp::attach(&prog, i).with_context(|| format!("attaching to {i}")))
                .collect::<Result<Vec<_>>>()?;
            println!("ATTACHED {} {action}", ifaces.join(" "));
            // Held until the harness closes stdin or kills this process.
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())?;
        }
    }
    Ok(())
}

/// One flood window of the run.
struct FloodRecord {
    rep: usize,
    receiver: Receiver,
    attack: Attack,
    rate: u32,
    window: FloodWindow,
    loader_ns: Option<u64>,
}

/// One genuine transfer of the run.
struct TransferRecord {
    receiver: Receiver,
    flood: Option<Attack>,
    transfer: Transfer,
}

/// An idle window of a configuration block.
struct IdleRecord {
    rep: usize,
    receiver: Receiver,
    stat: CpuStat,
    secs: f64,
}

struct Run {
    args: RunArgs,
    command_line: String,
    floods: Vec<FloodRecord>,
    transfers: Vec<TransferRecord>,
    idles: Vec<IdleRecord>,
    controls: Vec<(Receiver, i128)>,
    receiver_threads: usize,
}

fn run_bench(mut args: RunArgs) -> Result<()> {
    if args.quick {
        args.reps = 1;
        args.rates.truncate(1);
        if args.rates.is_empty() {
            args.rates.push(50_000);
        }
        args.window_secs = args.window_secs.min(1.0);
        args.transfer_secs = args.transfer_secs.min(1.0);
        args.no_floors = true;
    }
    if args.reps == 0 || args.rates.is_empty() || args.rates.contains(&0) {
        bail!("--reps and --rates must be positive");
    }
    if args.attacks.is_empty() {
        bail!("--attacks names none: give one or more of add-addr, add-addr-random, join-syn, join-ack");
    }
    let mut command_line = std::env::args().collect::<Vec<_>>().join(" ");
    if let Ok(outer) = std::env::var("MPTCP_BENCH_COMMAND") {
        command_line = format!("{outer} (ran: {command_line})");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespaces, XDP, SCHED_FIFO)");
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    let loader = args
        .loader
        .clone()
        .or_else(validator::locate_loader)
        .context(
        "mptcp-loader not found: build it (cargo build --release -p mptcp-loader) or pass --loader",
    )?;
    for tool in ["trafgen", "ethtool", "chrt", "tcpdump"] {
        if !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|dir| dir.join(tool).is_file())
        {
            bail!("`{tool}` is not installed (cargo xtask setup installs it)");
        }
    }
    teardown::install_signal_teardown().context("installing the signal handler")?;
    let mut receivers = vec![Receiver::Kernel, Receiver::Validator];
    if !args.no_floors {
        receivers.extend([Receiver::XdpDrop, Receiver::XdpPass]);
    }
    let window = Duration::from_secs_f64(args.window_secs);
    let transfer = Duration::from_secs_f64(args.transfer_secs);
    let transfer_rate = *args.rates.iter().max().expect("checked non-empty");

    let delivery = Delivery {
        coalesce: (args.coalesce_us > 0).then(|| Duration::from_micros(args.coalesce_us)),
    };
    let mut lab = FloodLab::new(&exe, &loader, delivery)?;
    if args.program_stats {
        lab.enable_program_stats()?;
    }
    let mut run = Run {
        command_line,
        floods: Vec::new(),
        transfers: Vec::new(),
        idles: Vec::new(),
        controls: Vec::new(),
        receiver_threads: lab.receiver_thread_count(),
        args,
    };
    for rep in 0..run.args.reps {
        let mut order = receivers.clone();
        order.rotate_left(rep % receivers.len());
        for receiver in order {
            eprintln!(
                "mptcp-flood: repetition {}/{}: {}",
                rep + 1,
                run.args.reps,
                receiver.label()
            );
            // The validator must see the victim's handshake; the others must not stop it.
            let (attached, victim) = if receiver.sees_handshake() {
                let attached = lab.attach(receiver)?;
                (attached, lab.open_victim(true)?)
            } else {
                let victim = lab.open_victim(true)?;
                (lab.attach(receiver)?, victim)
            };
            let block = measure_block(
                &mut lab,
                &mut run,
                &attached,
                &victim,
                rep,
                receiver,
                Windows {
                    flood: window,
                    transfer,
                    transfer_rate,
                },
            );
            lab.detach(attached)?;
            victim.close();
            block?;
        }
    }
    drop(lab);
    write_report(&run)
}

/// Durations and the rate of a block's measurements.
#[derive(Clone, Copy)]
struct Windows {
    flood: Duration,
    transfer: Duration,
    transfer_rate: u32,
}

fn measure_block(
    lab: &mut FloodLab,
    run: &mut Run,
    attached: &Attached,
    victim: &Victim,
    rep: usize,
    receiver: Receiver,
    windows: Windows,
) -> Result<()> {
    let Windows {
        flood: window,
        transfer,
        transfer_rate,
    } = windows;
    if let Some(moved) = victim.control {
        run.controls.push((receiver, moved));
        if moved != 1 {
            bail!(
                "positive control: one add_addr_valid segment moved MPTcpExtAddAddr by {moved} \
                 (expected 1) with {}: the victim's seq/ack/timestamps are wrong",
                if receiver.sees_handshake() {
                    receiver.label()
                } else {
                    Receiver::Kernel.label()
                }
            );
        }
    }
    let (stat, _, secs) = lab.idle(window);
    run.idles.push(IdleRecord {
        rep,
        receiver,
        stat,
        secs,
    });
    for attack in run.args.attacks.clone() {
        for rate in run.args.rates.clone() {
            let loader0 = lab.loader_cpu_ns();
            let w = lab.flood(victim, attached, attack, rate, window)?;
            let loader_ns = loader0
                .zip(lab.loader_cpu_ns())
                .map(|(a, b)| b.saturating_sub(a));
            eprintln!(
                "  {:<32} {rate:>7} pps: {} processed, {:.0} ns/packet{}",
                attack.label(),
                w.processed,
                w.ns_per_packet(),
                w.program.map_or(String::new(), |p| format!(
                    ", {:.0} ns per run inside the XDP program",
                    p.ns_per_run()
                ))
            );
            run.floods.push(FloodRecord {
                rep,
                receiver,
                attack,
                rate,
                window: w,
                loader_ns,
            });
        }
    }
    if receiver.passes_traffic() && !run.args.no_transfers {
        let t = lab.transfer(transfer, None)?;
        eprintln!("  genuine transfer, no flood: {:.2} Gbit/s", t.gbps());
        run.transfers.push(TransferRecord {
            receiver,
            flood: None,
            transfer: t,
        });
        let quick = run.args.quick;
        let attacks = run.args.attacks.clone();
        for attack in attacks.into_iter().filter(|a| !quick || !a.defeats_cache()) {
            let t = lab.transfer(transfer, Some((victim, attack, transfer_rate)))?;
            eprintln!(
                "  genuine transfer during {} at {transfer_rate} pps: {:.2} Gbit/s",
                attack.label(),
                t.gbps()
            );
            run.transfers.push(TransferRecord {
                receiver,
                flood: Some(attack),
                transfer: t,
            });
        }
    }
    Ok(())
}

/// Median, minimum and maximum.
#[derive(Clone, Copy, Debug)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

fn spread(mut v: Vec<f64>) -> Option<Spread> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

fn fmt_spread(s: Option<Spread>, digits: usize) -> String {
    match s {
        None => "–".to_owned(),
        Some(s) if s.n == 1 => format!("{:.*}", digits, s.median),
        Some(s) => format!(
            "{:.*} [{:.*}–{:.*}]",
            digits, s.median, digits, s.min, digits, s.max
        ),
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

impl Run {
    fn windows(
        &self,
        receiver: Receiver,
        attack: Attack,
        rate: u32,
    ) -> impl Iterator<Item = &FloodRecord> {
        self.floods
            .iter()
            .filter(move |f| f.receiver == receiver && f.attack == attack && f.rate == rate)
    }

    fn ns(&self, receiver: Receiver, attack: Attack, rate: u32) -> Option<Spread> {
        spread(
            self.windows(receiver, attack, rate)
                .map(|f| f.window.ns_per_packet())
                .collect(),
        )
    }

    /// ns per run inside the receiving XDP program (`--program-stats` runs only).
    fn program_ns(&self, receiver: Receiver, attack: Attack, rate: u32) -> Option<Spread> {
        spread(
            self.windows(receiver, attack, rate)
                .filter_map(|f| f.window.program.map(|p| p.ns_per_run()))
                .collect(),
        )
    }

    /// Per-repetition values of `f(kernel, validator, drop, pass)` (missing ones are `None`).
    fn per_rep(
        &self,
        attack: Attack,
        rate: u32,
        f: impl Fn(f64, f64, Option<f64>, Option<f64>) -> f64,
    ) -> Option<Spread> {
        let get = |r: Receiver, rep: usize| {
            self.windows(r, attack, rate)
                .find(|w| w.rep == rep)
                .map(|w| w.window.ns_per_packet())
        };
        spread(
            (0..self.args.reps)
                .filter_map(|rep| {
                    let k = get(Receiver::Kernel, rep)?;
                    let v = get(Receiver::Validator, rep)?;
                    Some(f(
                        k,
                        v,
                        get(Receiver::XdpDrop, rep),
                        get(Receiver::XdpPass, rep),
                    ))
                })
                .collect(),
        )
    }

    /// `/proc/stat` cross-check: (system + irq + softirq of the receiving CPU during the flood,
    /// minus the same during the block's idle window scaled to the flood's length) per packet.
    fn stat_ns(&self, receiver: Receiver, attack: Attack, rate: u32) -> Option<Spread> {
        spread(
            self.windows(receiver, attack, rate)
                .filter_map(|f| {
                    let idle = self
                        .idles
                        .iter()
                        .find(|i| i.rep == f.rep && i.receiver == receiver)?;
                    let busy = f.window.stat.kernel_time().as_secs_f64();
                    let base = idle.stat.kernel_time().as_secs_f64() * f.window.secs / idle.secs;
                    Some((busy - base) * 1e9 / f.window.processed.max(1) as f64)
                })
                .collect(),
        )
    }

    fn gbps(&self, receiver: Receiver, flood: Option<Attack>) -> Option<Spread> {
        spread(
            self.transfers
                .iter()
                .filter(|t| t.receiver == receiver && t.flood == flood)
                .map(|t| t.transfer.gbps())
                .collect(),
        )
    }

    /// The smallest share of the sent packets the receiver processed, over every window of
    /// this attack and rate (veth drops the rest when its ring is full).
    fn min_processed_share(&self, attack: Attack, rate: u32) -> Option<f64> {
        self.floods
            .iter()
            .filter(|f| f.attack == attack && f.rate == rate)
            .map(|f| f.window.processed as f64 / f.window.sent.max(1) as f64)
            .min_by(f64::total_cmp)
    }
}

fn write_report(run: &Run) -> Result<()> {
    let a = &run.args;
    let floors = !a.no_floors;
    let transfer_rate = *a.rates.iter().max().expect("non-empty");
    let mut md = String::new();
    writeln!(
        md,
        "# Flood resistance: forged MPTCP signalling against the receiver\n"
    )?;
    writeln!(md, "- Command: `{}`", run.command_line)?;
    writeln!(
        md,
        "- Machine: {}, {} CPUs, kernel {}",
        cpu::cpu_model(),
        cpu::online_cpus(),
        cpu::kernel_release()
    )?;
    writeln!(
        md,
        "- Run: {} repetition(s); flood windows of {:.1} s at {} pps; genuine transfers of {:.1} s; \
         configurations interleaved (each repetition rotates their order).",
        a.reps,
        a.window_secs,
        a.rates.iter().map(|r| thousands(u64::from(*r))).collect::<Vec<_>>().join(" and "),
        a.transfer_secs
    )?;
    if a.quick {
        writeln!(
            md,
            "- **Quick run (CI): one short repetition, too few for any claim.**"
        )?;
    }
    writeln!(md, "\n## Method\n")?;
    writeln!(
        md,
        "- Two network namespaces joined by two veth pairs (198.18.1.0/24, 198.18.2.0/24), the \
         real Linux MPTCP stack on both sides. The **victim** is a live MPTCP connection \
         (client 198.18.1.1 -> server 198.18.1.2, a second subflow on path 2), established, \
         idle and held open. Its sequence numbers, timestamps and keys are read from a capture \
         of its handshake, and `mptcp_profiles` writes its trafgen profiles. Before each \
         configuration is measured, one `add_addr_valid` segment from those profiles must be \
         accepted by the server's kernel (`MPTcpExtAddAddr` +1): the forged ADD_ADDRs differ from \
         it only in their HMAC, so the kernel does its full work on them (TCP checks, then the \
         HMAC)."
    )?;
    writeln!(
        md,
        "- **Attacks.** `add_addr_forged`: pure ACKs on the victim's 4-tuple with its current \
         seq/ack and timestamps, one address (ID 9, 198.18.3.66) and 8 random HMAC bytes: after \
         the first, the validator answers from its tag cache. `add_addr_random_address`: the same \
         pure ACKs with a random address ID, a random IPv4 address and random HMAC bytes in every \
         packet, so no tag is ever cached; the kernel computes every HMAC, the validator one \
         connection's crypto budget (10/s, burst 20) and drops the rest without computing. \
         `join_syn_random_token`: SYNs with MP_JOIN naming a random token, random source port, \
         at the victim's listening port (the kernel looks the token up, fails, and answers with \
         a RST). `join_ack_forged`: MP_JOIN third ACKs (kind 30, length 24, subtype 1, 20 random \
         HMAC bytes) on the 4-tuple of a join of the victim connection that the server has \
         pending: before each flood the harness sends one MP_JOIN SYN with the victim's real \
         token from {}, an address no namespace holds, the server's kernel counts it \
         (`MPTcpExtMPJoinSynRx` +1) and answers with a SYN/ACK that nothing answers (its \
         destination MAC is not the client's), and the third ACKs carry the right seq/ack and \
         timestamps read from that SYN/ACK. The kernel checks the first one's HMAC \
         (`{}` +1), resets the join and answers each later one from the listener with a RST; the \
         validator, which saw the SYN and the SYN/ACK, checks at most the join's budget (4) and \
         drops the rest without computing. A fresh join is opened for every flood window and \
         every transfer (behind the XDP_DROP floor, which lets no SYN through, the third ACKs go \
         to the 4-tuple of a join that was never sent: XDP_DROP does not read them).",
        mptcp_tests::flood::JOIN_ADDR,
        mptcp_tests::flood::JOIN_ACK_HMAC_FAILURE
    )?;
    writeln!(
        md,
        "- **CPU placement.** trafgen (`--rate`, one process, SCHED_FIFO) and the client side \
         run on CPU {}; the receiver's work runs on CPU {}. A veth hands packets to its peer on the \
         *sending* CPU, so the server's veths get GRO (which gives them a NAPI instance with or \
         without XDP) and **threaded NAPI**, with their NAPI threads pinned to CPU {} at \
         SCHED_FIFO: the validator's XDP program, or the kernel's whole receive path (GRO, IP, \
         TCP, MPTCP, the RST it sends) runs in those threads. The client's veths have TSO off \
         (veth only uses the peer's NAPI for a TSO sender when XDP is attached, which would make \
         the two configurations take different paths) and RPS to CPU {}, so replies to the client \
         are processed there.",
        cpu::SENDER_CPU,
        cpu::RECEIVER_CPU,
        cpu::RECEIVER_CPU,
        cpu::SENDER_CPU
    )?;
    if a.coalesce_us > 0 {
        writeln!(
            md,
            "- **Interrupt coalescing.** veth wakes its NAPI thread for every packet that finds it \
             asleep; a NIC coalesces its receive interrupts. The server's veths emulate that with \
             `gro_flush_timeout` = {} µs and `napi_defer_hard_irqs` = 1: after a poll that found \
             packets, the next poll comes {} µs later and takes what arrived meanwhile. \
             (`--coalesce-us 0` measures without it.)",
            a.coalesce_us, a.coalesce_us
        )?;
    } else {
        writeln!(
            md,
            "- **No interrupt coalescing** (`--coalesce-us 0`): every packet that finds the \
             receiving NAPI thread asleep wakes it, a cost both configurations pay."
        )?;
    }
    writeln!(
        md,
        "- **Measure.** Receiver CPU time = CPU time of the server veths' NAPI threads (plus \
         `ksoftirqd/{}`), read from their CPU-time clocks (`clock_getcpuclockid`, exact ns, \
         not tick samples, and not disturbed by other tenants of the machine), over the window; \
         divided by the packets the receiving veth processed (its `rx_packets`; packets veth \
         dropped on the sender side because the ring was full are not counted). `/proc/stat` of \
         CPU {} (system + softirq, minus an idle window of the same block) is a cross-check: on \
         this kernel it is sampled by the tick ({} threads measured).",
        cpu::RECEIVER_CPU,
        cpu::RECEIVER_CPU,
        run.receiver_threads
    )?;
    writeln!(
        md,
        "- **Configurations.** *kernel only*: nothing in front of the stack. *validator*: \
         `mptcp-loader run --mode enforce` on both server veths (native XDP; the loader itself \
         runs on CPU {}, and its CPU time is reported separately).{}",
        cpu::SENDER_CPU,
        if floors {
            " *XDP_DROP floor* / *XDP_PASS floor*: a two-instruction XDP program on the receiving \
             veth. XDP_DROP is the least any XDP program can cost here: veth's ring, its copy of \
             the sender's skb into an XDP buffer (the skb has too little headroom), the free. \
             XDP_PASS adds the kernel's own rejection on the same path."
        } else {
            ""
        }
    )?;
    writeln!(
        md,
        "- **Genuine traffic.** A separate MPTCP connection (two subflows) sends as fast as it \
         can for {:.1} s, server application on CPU {}, with no flood and during each attack at \
         {} pps; goodput is bytes received over the time from the first byte to the end.",
        a.transfer_secs,
        cpu::RECEIVER_CPU,
        thousands(u64::from(transfer_rate))
    )?;
    writeln!(
        md,
        "- Values are medians over repetitions, [min–max] in brackets. The ratio is computed per \
         repetition (validator and kernel-only blocks of the same repetition) and then summarised."
    )?;

    writeln!(md, "\n## Receiver CPU time per forged packet\n")?;
    writeln!(
        md,
        "Targets (issue 12): for the forged ADD_ADDR at one address and the MP_JOIN SYN, the \
         validator's cost above the XDP_DROP floor <= 1/3 of the kernel's cost above the floor \
         (the incremental ratio of the next section); for the floods that defeat the tag cache \
         (random address, third ACKs) the validator never costs more than the kernel (total \
         ratio <= 1).\n"
    )?;
    writeln!(
        md,
        "| attack | offered rate (pps) | processed (worst window) | kernel only (ns/packet) | validator (ns/packet) | validator / kernel | target |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|:---:|")?;
    let mut verdicts = Vec::new();
    for &attack in &run.args.attacks {
        let target = attack.target();
        for &rate in &a.rates {
            let ratio = run.per_rep(attack, rate, |k, v, _, _| v / k);
            let above_floor = run.per_rep(attack, rate, |_, v, d, p| match (d, p) {
                (Some(d), Some(p)) => (v - d) / (p - d),
                _ => f64::NAN,
            });
            let judged = if target.above_floor {
                above_floor
            } else {
                ratio
            };
            let holds = judged.map(|r| r.median <= target.bound);
            verdicts.push((attack, rate, judged, holds));
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {}{}: {} |",
                attack.label(),
                thousands(u64::from(rate)),
                run.min_processed_share(attack, rate)
                    .map_or("–".into(), |s| format!("{:.0} %", (s * 100.0).min(100.0))),
                fmt_spread(run.ns(Receiver::Kernel, attack, rate), 0),
                fmt_spread(run.ns(Receiver::Validator, attack, rate), 0),
                fmt_spread(ratio, 2),
                target.label,
                if target.above_floor {
                    " above the floor"
                } else {
                    ""
                },
                match holds {
                    Some(true) => "holds",
                    Some(false) => "**does not hold**",
                    None => "not measured (needs the floors)",
                }
            )?;
        }
    }
    if floors {
        writeln!(md, "\n## Where the time goes: reference XDP programs\n")?;
        writeln!(
            md,
            "Incremental costs over the XDP_DROP floor (what any XDP program pays on this veth \
             path): the validator's own work is *validator − XDP_DROP*, the kernel's rejection is \
             *XDP_PASS − XDP_DROP*. Computed per repetition.\n"
        )?;
        writeln!(
            md,
            "| attack | offered rate (pps) | XDP_DROP floor | XDP_PASS | validator − floor | kernel (XDP_PASS) − floor | incremental ratio |"
        )?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|---:|")?;
        for &attack in &run.args.attacks {
            for &rate in &a.rates {
                let inc_v = run.per_rep(attack, rate, |_, v, d, _| d.map_or(f64::NAN, |d| v - d));
                let inc_k = run.per_rep(attack, rate, |_, _, d, p| match (d, p) {
                    (Some(d), Some(p)) => p - d,
                    _ => f64::NAN,
                });
                let ratio = run.per_rep(attack, rate, |_, v, d, p| match (d, p) {
                    (Some(d), Some(p)) => (v - d) / (p - d),
                    _ => f64::NAN,
                });
                writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    attack.label(),
                    thousands(u64::from(rate)),
                    fmt_spread(run.ns(Receiver::XdpDrop, attack, rate), 0),
                    fmt_spread(run.ns(Receiver::XdpPass, attack, rate), 0),
                    fmt_spread(inc_v, 0),
                    fmt_spread(inc_k, 0),
                    fmt_spread(ratio, 2)
                )?;
            }
        }
    }

    if a.program_stats {
        writeln!(md, "\n## Inside the XDP program (bpf_stats)\n")?;
        writeln!(
            md,
            "Time per run inside the program attached to the receiving veth, from the kernel's \
             per-program run time and count (`BPF_ENABLE_STATS`), and what is left of the \
             validator's cost above the XDP_DROP floor once its own run time is taken out. With \
             the stats on, every XDP run pays two more clock reads, so this run's CPU times are \
             not comparable with a run without `--program-stats`.\n"
        )?;
        writeln!(
            md,
            "| attack | offered rate (pps) | validator run (ns) | XDP_DROP run (ns) | validator − floor (ns) | outside the validator's run (ns) |"
        )?;
        writeln!(md, "|---|---:|---:|---:|---:|---:|")?;
        for &attack in &a.attacks {
            for &rate in &a.rates {
                let outside = run.per_rep(attack, rate, |_, v, d, _| d.map_or(f64::NAN, |d| v - d));
                let inside = run.program_ns(Receiver::Validator, attack, rate);
                writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} |",
                    attack.label(),
                    thousands(u64::from(rate)),
                    fmt_spread(inside, 0),
                    fmt_spread(run.program_ns(Receiver::XdpDrop, attack, rate), 0),
                    fmt_spread(outside, 0),
                    match (outside, inside) {
                        (Some(o), Some(i)) => format!("{:.0}", o.median - i.median),
                        _ => "–".to_owned(),
                    }
                )?;
            }
        }
    }

    writeln!(md, "\n## Genuine MPTCP transfer\n")?;
    let tput_receivers: Vec<Receiver> = [Receiver::Kernel, Receiver::XdpPass, Receiver::Validator]
        .into_iter()
        .filter(|r| run.transfers.iter().any(|t| t.receiver == *r))
        .collect();
    let header: Vec<String> = tput_receivers
        .iter()
        .map(|r| format!("{} (Gbit/s)", r.label()))
        .collect();
    writeln!(md, "| condition | {} |", header.join(" | "))?;
    writeln!(md, "|---|{}", "---:|".repeat(tput_receivers.len()))?;
    let mut conditions = vec![(None, "no flood".to_owned())];
    for &attack in &run.args.attacks {
        conditions.push((
            Some(attack),
            format!(
                "{} at {} pps",
                attack.label(),
                thousands(u64::from(transfer_rate))
            ),
        ));
    }
    for (flood, label) in &conditions {
        let cells: Vec<String> = tput_receivers
            .iter()
            .map(|r| fmt_spread(run.gbps(*r, *flood), 2))
            .collect();
        writeln!(md, "| {label} | {} |", cells.join(" | "))?;
    }
    writeln!(
        md,
        "\nPackets lost in veth's receive ring (the sender side drops when the receiving NAPI \
         thread falls behind) and the client's retransmissions during the transfer, medians:\n"
    )?;
    writeln!(
        md,
        "| condition | {} |",
        tput_receivers
            .iter()
            .map(|r| r.label())
            .collect::<Vec<_>>()
            .join(" | ")
    )?;
    writeln!(md, "|---|{}", "---:|".repeat(tput_receivers.len()))?;
    for (flood, label) in &conditions {
        let cells: Vec<String> = tput_receivers
            .iter()
            .map(|r| {
                let pick = |f: &dyn Fn(&Transfer) -> f64| {
                    spread(
                        run.transfers
                            .iter()
                            .filter(|t| t.receiver == *r && t.flood == *flood)
                            .map(|t| f(&t.transfer))
                            .collect(),
                    )
                    .map_or("–".into(), |s| thousands(s.median.round() as u64))
                };
                format!(
                    "{} lost, {} retransmitted",
                    pick(&|t| t.ring_drops as f64),
                    pick(&|t| t.retransmits as f64)
                )
            })
            .collect();
        writeln!(md, "| {label} | {} |", cells.join(" | "))?;
    }
    let keep = |r: Receiver, attack: Attack| {
        let base = run.gbps(r, None)?.median;
        Some(run.gbps(r, Some(attack))?.median / base)
    };
    writeln!(md)?;
    for &attack in &run.args.attacks {
        let fmt = |x: Option<f64>| x.map_or("–".into(), |x| format!("{:.0} %", x * 100.0));
        writeln!(
            md,
            "- During {} at {} pps the genuine transfer kept {} of its no-flood goodput with only \
             the kernel and {} with the validator.",
            attack.label(),
            thousands(u64::from(transfer_rate)),
            fmt(keep(Receiver::Kernel, attack)),
            fmt(keep(Receiver::Validator, attack))
        )?;
    }

    writeln!(md, "\n## Verdict\n")?;
    for (attack, rate, ratio, holds) in &verdicts {
        let r = ratio.map_or("–".into(), |r| format!("{:.2}", r.median));
        let target = attack.target();
        writeln!(
            md,
            "- {} at {} pps: the validator costs {r} of what the kernel spends per forged \
             packet{}; the target ({}) {}.",
            attack.label(),
            thousands(u64::from(*rate)),
            if target.above_floor {
                " above the XDP_DROP floor"
            } else {
                ""
            },
            target.label,
            match holds {
                Some(true) => "holds",
                Some(false) => "does not hold",
                None => "was not measured",
            }
        )?;
    }

    writeln!(md, "\n## What the receiver did with the forged packets\n")?;
    writeln!(
        md,
        "Per flood window (medians): server kernel counters that moved, the segments the \
         validator dropped (wrong HMAC or token, or over the crypto budget) and every validator \
         counter that moved. `/proc/stat` column: the tick-sampled cross-check of the CPU time, \
         in ns per packet.\n"
    )?;
    writeln!(md, "| attack | rate | configuration | processed | kernel counters | validator dropped | validator counters | loader CPU (ms) | /proc/stat ns/packet |")?;
    writeln!(md, "|---|---:|---|---:|---|---:|---|---:|---:|")?;
    let mut receivers = vec![Receiver::Kernel, Receiver::Validator];
    if floors {
        receivers.extend([Receiver::XdpDrop, Receiver::XdpPass]);
    }
    for &attack in &run.args.attacks {
        for &rate in &a.rates {
            for &r in &receivers {
                let ws: Vec<&FloodRecord> = run.windows(r, attack, rate).collect();
                if ws.is_empty() {
                    continue;
                }
                let med = |f: &dyn Fn(&FloodRecord) -> Option<f64>| {
                    spread(ws.iter().filter_map(|w| f(w)).collect()).map(|s| s.median)
                };
                let mut names: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
                for w in &ws {
                    for (name, d) in &w.window.kernel {
                        names.entry(name.as_str()).or_default().push(*d as f64);
                    }
                }
                let kernel = names
                    .into_iter()
                    .filter_map(|(n, v)| {
                        Some(format!("{n} +{}", thousands(spread(v)?.median as u64)))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut moved: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
                for w in &ws {
                    for (name, d) in &w.window.validator {
                        moved.entry(name).or_default().push(*d as f64);
                    }
                }
                // A counter that moved in some windows only counts 0 in the others.
                let validator = moved
                    .into_iter()
                    .filter_map(|(n, mut v)| {
                        v.resize(ws.len(), 0.0);
                        Some(format!("{n} +{}", thousands(spread(v)?.median as u64)))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    attack.label(),
                    thousands(u64::from(rate)),
                    r.label(),
                    med(&|w| Some(w.window.processed as f64))
                        .map_or("–".into(), |x| thousands(x as u64)),
                    if kernel.is_empty() {
                        "none".into()
                    } else {
                        kernel
                    },
                    med(&|w| w.window.validator_dropped.map(|x| x as f64))
                        .map_or("–".into(), |x| thousands(x as u64)),
                    if validator.is_empty() {
                        "–".into()
                    } else {
                        validator
                    },
                    med(&|w| w.loader_ns.map(|x| x as f64 / 1e6))
                        .map_or("–".into(), |x| format!("{x:.1}")),
                    fmt_spread(run.stat_ns(r, attack, rate), 0)
                )?;
            }
        }
    }
    let controls_ok = run.controls.iter().filter(|(_, m)| *m == 1).count();
    writeln!(
        md,
        "\nPositive control (one `add_addr_valid` segment from the same profiles, sent before \
         measuring each configuration that lets traffic through): accepted by the server's \
         kernel (`MPTcpExtAddAddr` +1) {controls_ok} of {} times.",
        run.controls.len()
    )?;
    writeln!(
        md,
        "\nHow to read the counters: with only the kernel, every forged ADD_ADDR moves \
         `TcpInSegs` and nothing MPTCP-specific (Linux has no counter for a wrong ADD_ADDR HMAC), \
         every forged MP_JOIN SYN moves `{JOIN_NO_TOKEN}` and `{OUT_RSTS}` (the kernel answers \
         it), and a third-ACK flood moves `{JOIN_ACK_HMAC_FAILURE}` once (the first, whose HMAC \
         the kernel checks before it resets the join) and `{OUT_RSTS}` for every one (the rest \
         reach the listener, which answers each with a RST); with the validator they stop at XDP \
         and the kernel counts nothing. On the validator's side, `add_addr_tag_cached` counts the \
         ADD_ADDRs judged from the tag cache, `crypto_budget_dropped` those dropped over the \
         crypto budget without computing, and `add_addr_bad_hmac_dropped` / \
         `join_ack_bad_hmac_dropped` every wrong HMAC, computed or cached."
    )?;

    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let md_path = a.out.join("flood.md");
    let svg_path = a.out.join("flood.svg");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    std::fs::write(&svg_path, chart(run))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    print!("{md}");
    eprintln!("wrote {} and {}", md_path.display(), svg_path.display());
    let processed: u64 = run.floods.iter().map(|f| f.window.processed).sum();
    if processed == 0 {
        bail!("no forged packet reached the receiver");
    }
    Ok(())
}

/// Two panels: receiver ns per forged packet (bars per configuration, for each attack and
/// rate), and the genuine transfer's goodput.
fn chart(run: &Run) -> String {
    // The throughput panel's bars, in the order drawn.
    const TPUT: [(Receiver, &str); 3] = [
        (Receiver::Kernel, "#999999"),
        (Receiver::XdpPass, "#e8890c"),
        (Receiver::Validator, "#2a6fdb"),
    ];
    const COLOURS: [(Receiver, &str); 4] = [
        (Receiver::Kernel, "#999999"),
        (Receiver::Validator, "#2a6fdb"),
        (Receiver::XdpDrop, "#8fd18f"),
        (Receiver::XdpPass, "#e8890c"),
    ];
    let a = &run.args;
    let groups: Vec<(Attack, u32)> = a
        .attacks
        .iter()
        .flat_map(|&attack| a.rates.iter().map(move |&r| (attack, r)))
        .collect();
    let present: Vec<(Receiver, &str)> = COLOURS
        .iter()
        .copied()
        .filter(|(r, _)| run.floods.iter().any(|f| f.receiver == *r))
        .collect();
    let max_ns = groups
        .iter()
        .flat_map(|&(at, rate)| {
            present
                .iter()
                .filter_map(move |(r, _)| run.ns(*r, at, rate))
        })
        .map(|s| s.max)
        .fold(1.0, f64::max);
    let (left, width, bar) = (260.0, 480.0, 11.0);
    let group_h = bar * present.len() as f64 + 14.0;
    let panel1 = 46.0 + group_h * groups.len() as f64;
    let tput_rows: Vec<(Option<Attack>, String)> = std::iter::once((None, "no flood".to_owned()))
        .chain(
            a.attacks
                .iter()
                .map(|&at| (Some(at), format!("during {}", at.label()))),
        )
        .collect();
    let height = panel1 + 40.0 + (3.0 * bar + 14.0) * tput_rows.len() as f64 + 10.0;
    let mut svg = Svg::new(left + width + 110.0, height);
    svg.heading(
        16.0,
        "Receiver CPU ns per forged packet (median, whiskers min–max)",
    );
    let mut x = 10.0;
    for (r, colour) in &present {
        svg.rect(x, 24.0, 10.0, 10.0, colour);
        svg.text(x + 14.0, 33.0, "", r.label());
        x += 150.0;
    }
    let scale = |v: f64, max: f64| v / max * width;
    for (gi, &(attack, rate)) in groups.iter().enumerate() {
        let y0 = 46.0 + group_h * gi as f64;
        svg.text(
            left - 6.0,
            y0 + 10.0,
            r#"text-anchor="end""#,
            attack.label(),
        );
        svg.text(
            left - 6.0,
            y0 + 23.0,
            r##"text-anchor="end" fill="#555""##,
            format_args!("{} pps", thousands(u64::from(rate))),
        );
        for (i, (r, colour)) in present.iter().enumerate() {
            let Some(s) = run.ns(*r, attack, rate) else {
                continue;
            };
            let y = y0 + bar * i as f64;
            svg.rect(left, y, scale(s.median, max_ns), bar - 2.0, colour);
            svg.hline(
                left + scale(s.min, max_ns),
                left + scale(s.max, max_ns),
                y + bar / 2.0 - 1.0,
                "#333",
            );
            svg.text(
                left + scale(s.max, max_ns) + 4.0,
                y + bar - 3.0,
                "",
                format_args!("{:.0}", s.median),
            );
        }
    }
    let y_t = panel1 + 20.0;
    svg.heading(
        y_t,
        "Genuine MPTCP goodput, Gbit/s (grey kernel only, orange XDP_PASS floor, blue validator)",
    );
    let max_g = tput_rows
        .iter()
        .flat_map(|(f, _)| TPUT.map(|(r, _)| run.gbps(r, *f)))
        .flatten()
        .map(|s| s.max)
        .fold(0.1, f64::max);
    for (i, (flood, label)) in tput_rows.iter().enumerate() {
        let y0 = y_t + 12.0 + (3.0 * bar + 14.0) * i as f64;
        svg.text(left - 6.0, y0 + 14.0, r#"text-anchor="end""#, label);
        for (j, (r, colour)) in TPUT.iter().enumerate() {
            if let Some(s) = run.gbps(*r, *flood) {
                let y = y0 + bar * j as f64;
                svg.rect(left, y, scale(s.median, max_g), bar - 2.0, colour);
                svg.text(
                    left + scale(s.median, max_g) + 4.0,
                    y + bar - 3.0,
                    "",
                    format_args!("{:.2}", s.median),
                );
            }
        }
    }
    svg.finish()
}
