//! `mptcp-loader run`: load (with the chosen map sizes), configure, pin, attach XDP ingress and tc
//! egress, then install midstates and tokens for every key event and sweep idle connections
//! until SIGINT/SIGTERM; then detach both, report, and remove the pins.

use std::{
    collections::HashMap, fmt::Write as _, future, net::SocketAddr, path::PathBuf, time::Instant,
};

use aya::maps::{Array, MapData, RingBuf};
use mptcp_common::maps::KeyEvent;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{interval_at, Interval, MissedTickBehavior},
};

use crate::{
    config::PolicySource,
    errors::LoaderError,
    firewall::{ClsactOutcome, DetachedInterface, FilterMode, Firewall, XdpAttach},
    install::{format_flow, install_event, parse_key_event, InstallOutcome},
    keys::{hex, token_and_idsn},
    latency::{LatencyStats, LatencySummary},
    loader_counters::{LoaderCounter, LoaderCounters, LOADER_COUNTER_COUNT},
    map_sizes::MapSizes,
    metrics::{self, MetricsSource},
    pins::{check_bpffs, create_pinned_array, PinDir, PIN_INSTALL_LATENCY, PIN_LOADER_COUNTERS},
    policy::{Policy, PolicyKeeper},
    preflight::{check_root, effective_uid, interface_index, interface_name},
    stats::format_summary_line,
    store::KernelMaps,
    sweep::{sweep_interval, sweep_maps, SweepOutcome},
    EBPF_OBJ,
};

/// Default `--idle-timeout`: two hours.
pub const DEFAULT_IDLE_TIMEOUT_S: u32 = 7200;

/// What `run` will do, decided from the command line before anything touches the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPlan {
    /// Interfaces to attach to, without duplicates, in command-line order.
    pub interfaces: Vec<String>,
    /// What to do with bad ADD_ADDRs.
    pub mode: FilterMode,
    /// How to attach XDP.
    pub xdp: XdpAttach,
    /// Where to pin the maps.
    pub pin_dir: PathBuf,
    /// Capacities of the hash maps.
    pub sizes: MapSizes,
    /// Seconds without a segment after which a connection is forgotten; 0 disables the sweep.
    pub idle_timeout_s: u32,
    /// The policy to apply before attaching (its `mode` is `mode`).
    pub policy: Policy,
    /// Where the policy comes from, re-read on SIGHUP.
    pub policy_source: PolicySource,
    /// Where to serve the Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl RunPlan {
    /// Builds a plan with the default map sizes and idle timeout; `pin_dir` defaults to the
    /// current network namespace's directory.
    ///
    /// # Errors
    /// [`LoaderError::NoInterface`] without interfaces; errors of `default_pin_dir`.
    pub fn new(
        interfaces: &[String],
        mode: FilterMode,
        xdp: XdpAttach,
        pin_dir: Option<PathBuf>,
        default_pin_dir: impl FnOnce() -> Result<PathBuf, LoaderError>,
    ) -> Result<Self, LoaderError> {
        let mut unique: Vec<String> = Vec::with_capacity(interfaces.len());
        for iface in interfaces {
            if !unique.contains(iface) {
                unique.push(iface.clone());
            }
        }
        if unique.is_empty() {
            return Err(LoaderError::NoInterface);
        }
        let pin_dir = match pin_dir {
            Some(dir) => dir,
            None => default_pin_dir()?,
        };
        Ok(Self {
            interfaces: unique,
            mode,
            xdp,
            pin_dir,
            sizes: MapSizes::default(),
            idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
            policy: Policy {
                mode,
                ..Policy::default()
            },
            policy_source: PolicySource::defaults(),
            metrics: None,
        })
    }
}

/// Checks interfaces (needs no privileges, so it is first), root and bpffs.
///
/// # Errors
/// The first problem found.
pub fn preflight(plan: &RunPlan, euid: u32) -> Result<(), LoaderError> {
    for iface in &plan.interfaces {
        interface_index(iface)?;
    }
    check_root(euid)?;
    check_bpffs(&plan.pin_dir)
}

/// Runs the firewall until SIGINT or SIGTERM. Must be called inside a tokio runtime.
///
/// # Errors
/// Any setup failure (nothing is left attached or pinned then), or a failure to clean up.
pub async fn run(plan: RunPlan) -> Result<(), LoaderError> {
    preflight(&plan, effective_uid())?;
    let signal_error = |source| LoaderError::Runtime {
        what: "installing signal handlers",
        source,
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(signal_error)?;
    // Bound before anything is loaded: a busy address ends the run with nothing attached.
    let metrics_listener = match plan.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };

    // Declared before the firewall so it is dropped after it: on an error below, the programs
    // are detached first, then the pins are removed.
    let pin_dir = PinDir::claim(&plan.pin_dir)?;
    let mut firewall = Firewall::load_with(EBPF_OBJ, &plan.sizes)?;
    firewall.set_mode(plan.mode)?;
    firewall.pin_maps(&pin_dir)?;
    // The whole policy is in the maps before the programs see a packet.
    let mut policy = PolicyKeeper::start(
        firewall.ebpf(),
        plan.policy_source.clone(),
        plan.policy.clone(),
    )?;
    let mut keeper = MapKeeper {
        maps: firewall.take_maps()?,
        latency: LatencyStats::default(),
        latency_pin: create_pinned_array(&pin_dir, PIN_INSTALL_LATENCY, 1)?,
        counters: LoaderCounters::default(),
        counters_pin: create_pinned_array(&pin_dir, PIN_LOADER_COUNTERS, LOADER_COUNTER_COUNT)?,
        interface_names: HashMap::new(),
    };
    keeper.publish_counters();
    let metrics_task = match metrics_listener {
        Some(listener) => {
            let source = MetricsSource::new(
                pin_dir.path().to_path_buf(),
                Some(policy.maps().try_clone()?),
            );
            Some(metrics::spawn(listener, source))
        }
        None => None,
    };
    // SAFETY: the RingBuf owns its map fd until it is dropped, and as_raw_fd always returns it.
    let mut events =
        unsafe { AsyncFd::register_with_interest(firewall.take_key_events()?, Interest::READABLE) }
            .map_err(|e| LoaderError::Runtime {
                what: "polling the key-event ring buffer",
                source: e.into_parts().1,
            })?;

    attach_everywhere(&mut firewall, &plan)?;
    print_banner(&plan, &pin_dir);
    print_policy_banner(&policy, plan.metrics);
    let mut sweep_timer = sweep_interval(plan.idle_timeout_s).map(|period| {
        let mut timer = interval_at(tokio::time::Instant::now() + period, period);
        // After a long sweep, carry on at the normal pace instead of catching up.
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    });

    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                policy.reload(&mut keeper.counters);
                keeper.publish_counters();
            }
            ready = events.readable_mut() => {
                let mut guard = ready.map_err(|source| LoaderError::Runtime { what: "polling the key-event ring buffer", source })?;
                keeper.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            () = next_tick(&mut sweep_timer) => keeper.sweep(plan.idle_timeout_s),
        }
    }

    if let Some(task) = metrics_task {
        task.abort();
    }
    let detached = firewall.detach_all();
    let counters = firewall.counters();
    drop(firewall);
    match &detached {
        Ok(ifaces) => {
            for detached in ifaces {
                println!("{}", detached_line(detached));
            }
        }
        Err(e) => eprintln!("error: {e}"),
    }
    match counters {
        Ok(counters) => println!("{}", format_summary_line(&counters)),
        Err(e) => eprintln!("error: reading the final counters: {e}"),
    }
    println!("{}", loader_summary_line(&keeper.counters));
    if let Some(summary) = keeper.latency.summary() {
        println!("{}", summary.line());
    }
    drop(keeper);
    let pins = pin_dir.path().to_path_buf();
    pin_dir.remove()?;
    println!("removed the pins under {}", pins.display());
    detached.map(drop)
}

/// Attaches XDP ingress and tc egress to every interface of the plan, printing each. If one
/// fails, whatever was attached already is detached again before the error is returned.
fn attach_everywhere(firewall: &mut Firewall, plan: &RunPlan) -> Result<(), LoaderError> {
    for iface in &plan.interfaces {
        match firewall.attach(iface, plan.xdp) {
            Ok(attached) => {
                println!("attached to {iface} ({attached})");
                if attached.stale_filters_removed {
                    log::warn!(
                        "removed a stale tc egress filter from {iface}, left by a run that ended without cleaning up"
                    );
                }
                if attached.clsact_added {
                    log::info!(
                        "added a clsact qdisc to {iface}; it is removed again on exit unless another filter uses it by then"
                    );
                }
            }
            Err(e) => {
                match firewall.detach_all() {
                    Ok(undone) if !undone.is_empty() => {
                        let names: Vec<&str> = undone.iter().map(|d| d.iface.as_str()).collect();
                        log::info!(
                            "detached again from {} after the failure on {iface}",
                            names.join(", ")
                        );
                    }
                    Ok(_) => {}
                    Err(undo) => {
                        log::warn!("undoing the attachments after the failure on {iface}: {undo}");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

fn print_banner(plan: &RunPlan, pin_dir: &PinDir) {
    let mode = match plan.mode {
        FilterMode::Enforce => "enforce",
        FilterMode::Monitor => "monitor",
    };
    println!(
        "validating MPTCP signalling (ADD_ADDR, MP_JOIN, MP_FASTCLOSE) in {mode} mode; maps pinned under {}; stop with Ctrl-C",
        pin_dir.path().display()
    );
    let idle = match sweep_interval(plan.idle_timeout_s) {
        Some(every) => format!(
            "connections idle for more than {} s are forgotten (checked every {:.1} s)",
            plan.idle_timeout_s,
            every.as_secs_f64()
        ),
        None => "idle connections are kept until the maps evict them (--idle-timeout 0)".to_owned(),
    };
    println!("map sizes: {}; {idle}", plan.sizes);
}

/// `policy: mode enforce; ...` and where it can be reloaded from, then the metrics address.
fn print_policy_banner(policy: &PolicyKeeper, metrics: Option<SocketAddr>) {
    let origin = match policy.file() {
        Some(file) => format!(" (from {}; reload with SIGHUP)", file.display()),
        None => String::new(),
    };
    println!("policy{origin}: {}", policy.current().describe());
    if let Some(addr) = metrics {
        println!("serving Prometheus metrics on http://{addr}/metrics");
    }
}

/// Completes at the sweep timer's next tick; never when the sweep is disabled.
async fn next_tick(timer: &mut Option<Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => future::pending().await,
    }
}

/// `detached from veth0 (XDP ingress, tc egress; removed the clsact qdisc it had added)`.
fn detached_line(detached: &DetachedInterface) -> String {
    let qdisc = match detached.clsact {
        ClsactOutcome::NotOurs => "",
        ClsactOutcome::Removed => "; removed the clsact qdisc it had added",
        ClsactOutcome::Kept => "; left the clsact qdisc it had added in place, see above",
    };
    format!(
        "detached from {} (XDP ingress, tc egress{qdisc})",
        detached.iface
    )
}

/// `loader counters: loader_sweeps=4 loader_conns_expired=1 (others 0)`.
fn loader_summary_line(counters: &LoaderCounters) -> String {
    let named = counters.named();
    let mut line = "loader counters:".to_owned();
    for (name, value) in named.iter().filter(|(_, v)| *v != 0) {
        let _ = write!(line, " {name}={value}");
    }
    if named.iter().all(|(_, v)| *v == 0) {
        line.push_str(" all 0");
    } else if named.iter().any(|(_, v)| *v == 0) {
        line.push_str(" (others 0)");
    }
    line
}

/// The loop's map work: installs what key events announce, sweeps idle connections, and
/// publishes the install latency and its own counters for `stats`.
struct MapKeeper {
    maps: KernelMaps,
    latency: LatencyStats,
    latency_pin: Array<MapData, LatencySummary>,
    counters: LoaderCounters,
    counters_pin: Array<MapData, u64>,
    interface_names: HashMap<u32, String>,
}

impl MapKeeper {
    /// Handles every queued event.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(record) = ring.next() {
            let event = parse_key_event(&record);
            drop(record);
            match event {
                Some(event) => self.handle(&event),
                None => log::warn!("ignoring a key event of unexpected size"),
            }
        }
    }

    fn handle(&mut self, event: &KeyEvent) {
        let flow = format_flow(&event.flow);
        let iface = self
            .interface_names
            .entry(event.ifindex)
            .or_insert_with(|| interface_name(event.ifindex))
            .clone();
        match install_event(&mut self.maps, event) {
            Ok(InstallOutcome::Installed {
                material: m,
                tokens_restored,
            }) => {
                let latency_ns = monotonic_now_ns().saturating_sub(event.seen_ns);
                self.latency.record_ns(latency_ns);
                log::info!(
                    "connection {flow} on {iface}: token-A {} token-B {}, midstates installed {} µs after the keys were seen",
                    hex(&m.token_a),
                    hex(&m.token_b),
                    latency_ns / 1_000
                );
                log::debug!(
                    "connection {flow}: IDSN-A {:#018x} IDSN-B {:#018x}",
                    m.idsn_a,
                    m.idsn_b
                );
                self.note_tokens_restored(&flow, tokens_restored);
                self.publish_latency();
            }
            Ok(InstallOutcome::AlreadyInstalled {
                material: m,
                tokens_restored,
            }) => {
                log::debug!(
                    "connection {flow} on {iface}: token-A {} token-B {} already had its midstates",
                    hex(&m.token_a),
                    hex(&m.token_b)
                );
                self.note_tokens_restored(&flow, tokens_restored);
            }
            Ok(InstallOutcome::NoConnection) => {
                log::warn!("connection {flow} on {iface}: gone from the connection map before its midstates were installed");
            }
            Ok(InstallOutcome::KeysDiffer) => {
                log::warn!("connection {flow} on {iface}: the connection map holds other keys than the event; skipped");
            }
            Err(e) => log::warn!("connection {flow} on {iface}: {e}"),
        }
    }

    fn note_tokens_restored(&mut self, flow: &str, restored: u32) {
        if restored > 0 {
            log::debug!("connection {flow}: wrote {restored} token entr{} that were missing or named another connection", if restored == 1 { "y" } else { "ies" });
            self.counters
                .add(LoaderCounter::TokensRestored, u64::from(restored));
            self.publish_counters();
        }
    }

    /// One idle sweep: snapshot, plan, apply, count.
    fn sweep(&mut self, timeout_s: u32) {
        let started = Instant::now();
        match self.sweep_once(timeout_s) {
            Ok(outcome) => {
                self.counters.add_sweep(&outcome);
                log_sweep(&outcome, timeout_s, started.elapsed());
            }
            Err(e) => {
                self.counters.add(LoaderCounter::SweepErrors, 1);
                log::warn!("idle sweep failed (retried at the next one): {e}");
            }
        }
        self.publish_counters();
    }

    fn sweep_once(&mut self, timeout_s: u32) -> Result<SweepOutcome, LoaderError> {
        let (plan, outcome) = sweep_maps(&mut self.maps, monotonic_now_s, timeout_s)?;
        for conn in &plan.expired {
            log::debug!(
                "connection token-A {} token-B {}: idle for {} s with {} subflow(s), due for removal",
                hex(&token_and_idsn(&conn.key_a).0),
                hex(&token_and_idsn(&conn.key_b).0),
                conn.idle_s,
                conn.flows.len()
            );
        }
        Ok(outcome)
    }

    fn publish_latency(&mut self) {
        if let Some(summary) = self.latency.summary() {
            if let Err(e) = self.latency_pin.set(0, summary, 0) {
                log::warn!("could not publish the install latency: {e}");
            }
        }
    }

    fn publish_counters(&mut self) {
        if let Err(e) = self.counters.publish(&mut self.counters_pin) {
            log::warn!("could not publish the loader counters: {e}");
        }
    }
}

fn log_sweep(outcome: &SweepOutcome, timeout_s: u32, took: std::time::Duration) {
    let removed = outcome.conns_expired + outcome.flows_orphaned_removed;
    let message = format!(
        "idle sweep: forgot {} connection(s) idle for more than {timeout_s} s ({} subflow(s); their tokens stay, so their joins fail open) and {} orphaned subflow(s); kept {} that became active; took {} ms",
        outcome.conns_expired,
        outcome.flows_expired,
        outcome.flows_orphaned_removed,
        outcome.conns_revived,
        took.as_millis()
    );
    if removed > 0 {
        log::info!("{message}");
    } else {
        log::debug!("{message}");
    }
}

/// `CLOCK_MONOTONIC` in whole seconds: the unit of `FlowRef::last_seen_s` and
/// `ConnState::learned_s`.
#[must_use]
pub fn monotonic_now_s() -> u32 {
    u32::try_from(monotonic_now_ns() / 1_000_000_000).unwrap_or(u32::MAX)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of `bpf_ktime_get_ns`.
#[must_use]
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(ifaces: &[&str], pin_dir: Option<&str>) -> Result<RunPlan, LoaderError> {
        let ifaces: Vec<String> = ifaces.iter().map(|s| (*s).to_owned()).collect();
        RunPlan::new(
            &ifaces,
            FilterMode::Enforce,
            XdpAttach::Auto,
            pin_dir.map(PathBuf::from),
            || Ok(PathBuf::from("/sys/fs/bpf/mptcp-fw/netns-7")),
        )
    }

    #[test]
    fn plan_dedupes_interfaces_and_defaults_the_pin_dir() {
        let p = plan(&["veth0", "veth1", "veth0"], None).unwrap();
        assert_eq!(p.interfaces, ["veth0", "veth1"]);
        assert_eq!(p.pin_dir, PathBuf::from("/sys/fs/bpf/mptcp-fw/netns-7"));
        assert_eq!(
            plan(&["veth0"], Some("/sys/fs/bpf/x")).unwrap().pin_dir,
            PathBuf::from("/sys/fs/bpf/x")
        );
    }

    #[test]
    fn plan_needs_an_interface() {
        assert!(matches!(plan(&[], None), Err(LoaderError::NoInterface)));
    }

    #[test]
    fn preflight_checks_interfaces_before_root() {
        let p = plan(&["lo", "mptcp-nope0"], None).unwrap();
        let err = preflight(&p, 1000).unwrap_err();
        assert!(
            matches!(err, LoaderError::UnknownInterface { ref iface } if iface == "mptcp-nope0"),
            "{err}"
        );
        let p = plan(&["lo"], None).unwrap();
        assert!(matches!(
            preflight(&p, 1000),
            Err(LoaderError::NotRoot { euid: 1000 })
        ));
    }

    #[test]
    fn plan_defaults() {
        let p = plan(&["veth0"], None).unwrap();
        assert_eq!(p.sizes, MapSizes::default());
        assert_eq!(p.idle_timeout_s, 7200);
    }

    #[test]
    fn exit_lines() {
        let line = detached_line(&DetachedInterface {
            iface: "veth0".into(),
            clsact: ClsactOutcome::Removed,
        });
        assert_eq!(
            line,
            "detached from veth0 (XDP ingress, tc egress; removed the clsact qdisc it had added)"
        );
        let mut counters = LoaderCounters::default();
        assert_eq!(loader_summary_line(&counters), "loader counters: all 0");
        counters.add(LoaderCounter::ConnsExpired, 2);
        assert_eq!(
            loader_summary_line(&counters),
            "loader counters: loader_conns_expired=2 (others 0)"
        );
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_now_ns();
        let b = monotonic_now_ns();
        assert!(a > 0 && b >= a);
        let (s, ns) = (monotonic_now_s(), monotonic_now_ns());
        assert!((0..=1).contains(&(ns / 1_000_000_000 - u64::from(s))));
    }
}
