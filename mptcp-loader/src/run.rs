//! `mptcp-loader run`: load (with the chosen map sizes), configure, attach XDP ingress and tc
//! egress through pinned links, then install midstates and tokens for every key event, record
//! every drop event and sweep idle connections until SIGINT/SIGTERM; then detach both, report,
//! and remove the pins (or, with `--keep-attached`, leave everything attached and pinned).
//!
//! A run that finds an earlier run's pins (killed, or exited with `--keep-attached`) adopts them
//! after checking their layout (see [`crate::adopt`]): it reuses the pinned maps, so no tracked
//! connection is lost, and swaps its programs into the pinned links atomically, so no packet
//! passes unchecked in between.

use std::{
    collections::HashMap,
    fmt::Write as _,
    future,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use mptcp_common::{
    counters::Counter,
    maps::{KeyEvent, MAP_COUNTERS},
};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{interval, interval_at, Interval, MissedTickBehavior},
};

use crate::{
    adopt::{plan_steps, take_inventory, Step},
    closed::{apply_closed, plan_closed, ClosedOutcome, KernelSockets, CLOSED_CHECK_INTERVAL_S},
    config::PolicySource,
    errors::LoaderError,
    events::{
        default_state_dir, parse_drop_event, ClockOffset, DropEventSink, DEFAULT_EVENTS_MAX_BYTES,
    },
    firewall::{DetachedInterface, EgressAttach, FilterMode, Firewall, ProgramSwap, XdpAttach},
    install::{format_flow, install_event, parse_key_event, InstallOutcome},
    keys::{hex, token_and_idsn},
    latency::{LatencyStats, LatencySummary},
    layout::ObjectLayout,
    loader_counters::{ConnMapTally, LoaderCounter, LoaderCounters, LOADER_COUNTER_COUNT},
    map_sizes::MapSizes,
    metrics::{self, MetricsSource},
    multiprog::XdpChain,
    pins::{
        check_bpffs, open_or_create_pinned_array, PinDir, PIN_INSTALL_LATENCY, PIN_LOADER_COUNTERS,
    },
    policy::{Policy, PolicyKeeper},
    preflight::{check_root, effective_uid, interface_index, interface_name},
    state::{
        unix_now_ns, version_bytes, write_layout_hash, IfaceRecord, PinnedState, RunState,
        RUN_FLAG_KEEP_ATTACHED,
    },
    stats::{counter_total, format_summary_line, read_loader_counters_at},
    store::{FirewallMaps as _, KernelMaps},
    sweep::{sweep_interval, sweep_maps_into, SweepOutcome, MAX_SWEEP_INTERVAL_S},
    EBPF_OBJ,
};

/// Default `--idle-timeout`: two hours.
pub const DEFAULT_IDLE_TIMEOUT_S: u32 = 7200;

/// This loader's version, recorded in the pinned run state.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What `run` will do, decided from the command line before anything touches the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPlan {
    /// Interfaces to attach to, without duplicates, in command-line order.
    pub interfaces: Vec<String>,
    /// What to do with bad ADD_ADDRs.
    pub mode: FilterMode,
    /// How to attach XDP.
    pub xdp: XdpAttach,
    /// How to attach the egress program where it is attached anew.
    pub egress: EgressAttach,
    /// How XDP takes an interface's hook: alone, or in libxdp's dispatcher.
    pub xdp_chain: XdpChain,
    /// Where to pin the maps and links.
    pub pin_dir: PathBuf,
    /// Capacities of the hash maps.
    pub sizes: MapSizes,
    /// Seconds without a segment after which a connection is forgotten; 0 disables the sweep.
    pub idle_timeout_s: u32,
    /// Seconds between two closed-subflow checks ([`crate::closed`]).
    pub closed_check_interval_s: u64,
    /// On exit, leave the programs attached and everything pinned (for an upgrade) instead of
    /// detaching.
    pub keep_attached: bool,
    /// Where the events file goes (default: [`default_state_dir`] of the pin directory).
    pub state_dir: PathBuf,
    /// Where to write every dropped segment as pcap, if anywhere.
    pub pcap: Option<PathBuf>,
    /// Size bound of the events file.
    pub events_max_bytes: u64,
    /// The policy to apply before attaching (its `mode` is `mode`).
    pub policy: Policy,
    /// Where the policy comes from, re-read on SIGHUP.
    pub policy_source: PolicySource,
    /// Where to serve the Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl RunPlan {
    /// Builds a plan with the default map sizes, idle timeout and state directory; `pin_dir`
    /// defaults to the current network namespace's directory.
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
            egress: EgressAttach::Auto,
            xdp_chain: XdpChain::Exclusive,
            state_dir: default_state_dir(&pin_dir),
            pin_dir,
            sizes: MapSizes::default(),
            idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
            closed_check_interval_s: CLOSED_CHECK_INTERVAL_S,
            keep_attached: false,
            pcap: None,
            events_max_bytes: DEFAULT_EVENTS_MAX_BYTES,
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
/// Any setup failure (what this run attached is detached again, and a first run leaves no pins;
/// what an earlier run pinned stays as it was), or a failure to clean up.
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
    let mut pin_dir = PinDir::claim(&plan.pin_dir)?;
    let steps = decide_steps(&plan, &mut pin_dir)?;
    let adopting = steps.iter().any(|s| matches!(s, Step::Adopt { .. }));
    if adopting {
        // From here on an error leaves the earlier run's state as it was: still attached.
        pin_dir.keep();
    }
    let mut firewall =
        Firewall::load_pinned_chained(EBPF_OBJ, &plan.sizes, pin_dir.path(), plan.xdp_chain)?;
    firewall.set_egress_attach(plan.egress);
    // The whole policy (mode included) is in the maps before the programs see a packet. When
    // adopting, the maps hold the earlier run's policy: only the differences are written.
    let mut policy = PolicyKeeper::start(
        firewall.ebpf(),
        plan.policy_source.clone(),
        plan.policy.clone(),
    )?;
    if !adopting {
        write_layout_hash(&pin_dir, ObjectLayout::embedded()?.hash())?;
    }
    let mut state = PinnedState::open_or_create(&pin_dir)?;
    let previous_run = state.run()?;
    // The events file exists once an interface is attached (so `events --follow` can start at
    // once); a run that fails before the loop takes the state directory it created with it.
    let new_state_dir = NewStateDir::note(&plan.state_dir);
    let mut keeper = MapKeeper::new(&mut firewall, &pin_dir, &plan)?;
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
    // SAFETY: the RingBufs own their map fds until they are dropped, and as_raw_fd always
    // returns them.
    let mut key_ring = unsafe { register(firewall.take_key_events()?) }?;
    let mut drop_ring = unsafe { register(firewall.take_drop_events()?) }?;

    attach_all(&mut firewall, &plan, &steps, &mut state)?;
    let now = unix_now_ns();
    let keep_since = adopting && previous_run.protected_since_unix_ns != 0;
    state.set_run(&RunState {
        protected_since_unix_ns: if keep_since {
            previous_run.protected_since_unix_ns
        } else {
            now
        },
        run_started_unix_ns: now,
        run_pid: std::process::id(),
        flags: if plan.keep_attached {
            RUN_FLAG_KEEP_ATTACHED
        } else {
            0
        },
        version: version_bytes(VERSION),
        generation: if adopting {
            previous_run.generation.saturating_add(1)
        } else {
            1
        },
        pad: 0,
    })?;
    new_state_dir.keep();
    print_banner(&plan, &pin_dir, keeper.drops.events_path());
    print_policy_banner(&policy, plan.metrics);
    let mut sweep_timer = sweep_interval(plan.idle_timeout_s).map(|period| {
        let mut timer = interval_at(tokio::time::Instant::now() + period, period);
        // After a long sweep, carry on at the normal pace instead of catching up.
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    });
    // Evictions are counted at every sweep (from its snapshot); without one, on their own.
    let mut eviction_timer = sweep_timer.is_none().then(|| {
        let period = Duration::from_secs(MAX_SWEEP_INTERVAL_S);
        let mut timer = interval_at(tokio::time::Instant::now() + period, period);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    });
    let mut log_timer = interval(Duration::from_secs(1));
    let mut closed_timer = {
        let period = Duration::from_secs(plan.closed_check_interval_s);
        let mut timer = interval_at(tokio::time::Instant::now() + period, period);
        timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        timer
    };

    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                policy.reload(&mut keeper.counters);
                keeper.publish_counters();
            }
            ready = key_ring.readable_mut() => {
                let mut guard = ready.map_err(|source| LoaderError::Runtime { what: "polling the key-event ring buffer", source })?;
                keeper.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            ready = drop_ring.readable_mut() => {
                let mut guard = ready.map_err(|source| LoaderError::Runtime { what: "polling the drop-event ring buffer", source })?;
                keeper.drain_drops(guard.get_inner_mut());
                guard.clear_ready();
            }
            () = next_tick(&mut sweep_timer) => keeper.sweep(plan.idle_timeout_s),
            () = next_tick(&mut eviction_timer) => keeper.count_evictions(),
            _ = closed_timer.tick() => keeper.check_closed(),
            _ = log_timer.tick() => keeper.drops.report_suppressed(),
        }
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    // What is queued now would otherwise wait for the next run.
    keeper.drain(key_ring.get_mut());
    keeper.drain_drops(drop_ring.get_mut());
    finish(plan, firewall, keeper, state, pin_dir)
}

/// A state directory this run is about to create: removed again if the run fails before its
/// loop starts, so a refused run leaves nothing behind.
struct NewStateDir {
    path: Option<PathBuf>,
}

impl NewStateDir {
    fn note(path: &Path) -> Self {
        Self {
            path: (!path.exists()).then(|| path.to_path_buf()),
        }
    }

    /// The run is set up: the directory stays.
    fn keep(mut self) {
        self.path = None;
    }
}

impl Drop for NewStateDir {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Registers a ring buffer with the runtime.
///
/// # Safety
/// `ring` must keep its fd open until dropped (aya's `RingBuf` does).
unsafe fn register(ring: RingBuf<MapData>) -> Result<AsyncFd<RingBuf<MapData>>, LoaderError> {
    // SAFETY: see the function's contract.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
        LoaderError::Runtime {
            what: "polling a ring buffer",
            source: e.into_parts().1,
        }
    })
}

/// Looks at what the pin directory holds and decides, per interface, to adopt or to attach.
/// Clears pins that hold nothing attached any more.
fn decide_steps(plan: &RunPlan, pin_dir: &mut PinDir) -> Result<Vec<Step>, LoaderError> {
    let requested = plan
        .interfaces
        .iter()
        .map(|iface| interface_index(iface).map(|index| (iface.clone(), index)))
        .collect::<Result<Vec<_>, _>>()?;
    if !pin_dir.found_pins() {
        return plan_steps(pin_dir.path(), &requested, plan.xdp, &[]);
    }
    let layout = ObjectLayout::embedded()?;
    let inventory = take_inventory(pin_dir.path(), layout)?;
    for defunct in &inventory.defunct_links {
        log::warn!(
            "removing {}: its interface is gone, so it holds nothing any more",
            defunct.display()
        );
        std::fs::remove_file(defunct).map_err(LoaderError::io("removing", defunct))?;
    }
    if inventory.ifaces.is_empty() {
        log::info!(
            "removing the pins under {}: nothing they held is attached any more",
            pin_dir.path().display()
        );
        pin_dir.clear()?;
        return plan_steps(pin_dir.path(), &requested, plan.xdp, &[]);
    }
    layout.check_pinned(
        pin_dir.path(),
        inventory.layout_hash,
        &inventory.maps,
        &plan.sizes,
    )?;
    plan_steps(pin_dir.path(), &requested, plan.xdp, &inventory.ifaces)
}

/// Attaches or adopts every interface of the plan, printing each and recording it in the
/// pinned state. On an error, what this run attached goes again (when `firewall` is dropped);
/// adopted interfaces stay attached.
fn attach_all(
    firewall: &mut Firewall,
    plan: &RunPlan,
    steps: &[Step],
    state: &mut PinnedState,
) -> Result<(), LoaderError> {
    for step in steps {
        match step {
            Step::Attach { iface } => {
                let attached = firewall.attach(iface, plan.xdp)?;
                println!("attached to {iface} ({attached})");
                if attached.stale_filters_removed {
                    log::warn!(
                        "removed an mptcp_tc_egress tc filter from {iface}, left by an older mptcp-loader"
                    );
                }
                let index = interface_index(iface)?;
                state.put_iface(&IfaceRecord::new(iface, index, attached.xdp, unix_now_ns()))?;
            }
            Step::Adopt { iface, links, mode } => {
                let adopted = firewall.adopt(iface, links, *mode, ProgramSwap::IfDifferent)?;
                println!(
                    "attached to {iface} without a gap, through the links pinned by an earlier run ({adopted})"
                );
                let since = state
                    .iface(links.ifindex)?
                    .map_or_else(unix_now_ns, |r| r.attached_unix_ns);
                state.put_iface(&IfaceRecord::new(iface, links.ifindex, adopted.xdp, since))?;
            }
        }
    }
    Ok(())
}

/// After SIGINT/SIGTERM: detach and remove the pins, or with `--keep-attached` leave both; then
/// print the summaries.
fn finish(
    plan: RunPlan,
    mut firewall: Firewall,
    keeper: MapKeeper,
    mut state: PinnedState,
    mut pin_dir: PinDir,
) -> Result<(), LoaderError> {
    let counters = firewall.counters();
    let detached = if plan.keep_attached {
        let kept = firewall.release_all();
        for iface in &kept {
            println!(
                "left {} attached (XDP ingress, tc egress) through the links pinned under {}",
                iface.iface,
                pin_dir.path().display()
            );
        }
        Ok(Vec::new())
    } else {
        let detached = firewall.detach_all();
        if let Ok(ifaces) = &detached {
            for iface in ifaces {
                println!("{}", detached_line(iface));
                let _ = state.remove_iface(iface.ifindex);
            }
        }
        detached
    };
    drop(firewall);
    if let Err(e) = &detached {
        eprintln!("error: {e}");
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
    drop(state);
    let pins = pin_dir.path().to_path_buf();
    if plan.keep_attached {
        pin_dir.keep();
        drop(pin_dir);
        println!(
            "kept the pins under {}: the next `mptcp-loader run` adopts them without a gap, `mptcp-loader detach` removes them",
            pins.display()
        );
        return Ok(());
    }
    if detached.is_err() {
        // Something is still attached through its pin: keep the state that explains it.
        pin_dir.keep();
        return detached.map(drop);
    }
    pin_dir.remove()?;
    println!("removed the pins under {}", pins.display());
    Ok(())
}

fn print_banner(plan: &RunPlan, pin_dir: &PinDir, events: &Path) {
    let mode = match plan.mode {
        FilterMode::Enforce => "enforce",
        FilterMode::Monitor => "monitor",
    };
    println!(
        "validating MPTCP signalling (ADD_ADDR, MP_JOIN, MP_FASTCLOSE) in {mode} mode; maps and links pinned under {}; stop with Ctrl-C",
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
    let pcap = plan
        .pcap
        .as_ref()
        .map(|p| format!(", dropped segments to {}", p.display()))
        .unwrap_or_default();
    let exit = if plan.keep_attached {
        "on exit the programs stay attached (--keep-attached)"
    } else {
        "on exit the programs are detached"
    };
    println!("drop events to {}{pcap}; {exit}", events.display());
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

/// Completes at the timer's next tick; never without a timer (the sweep is disabled).
async fn next_tick(timer: &mut Option<Interval>) {
    match timer {
        Some(timer) => {
            timer.tick().await;
        }
        None => future::pending().await,
    }
}

/// `detached from veth0 (XDP ingress, tc egress)`.
fn detached_line(detached: &DetachedInterface) -> String {
    format!("detached from {} (XDP ingress, tc egress)", detached.iface)
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

/// The loop's map work: installs what key events announce, records drop events, sweeps idle
/// connections, counts evictions, and publishes the install latency and its own counters for
/// `stats`.
struct MapKeeper {
    maps: KernelMaps,
    /// The fast path's counters (the pinned map), for the eviction count.
    bpf_counters: PerCpuArray<MapData, u64>,
    /// Capacity of the connection map, for the eviction log line.
    max_conns: u32,
    latency: LatencyStats,
    latency_pin: Array<MapData, LatencySummary>,
    counters: LoaderCounters,
    counters_pin: Array<MapData, u64>,
    interface_names: HashMap<u32, String>,
    drops: DropEventSink,
}

impl MapKeeper {
    /// Takes the maps it works on out of `firewall`; reopens the loader's own pins (counters
    /// continue from an adopted run's values).
    fn new(firewall: &mut Firewall, pin_dir: &PinDir, plan: &RunPlan) -> Result<Self, LoaderError> {
        // Read before the array is reopened: one of another length (another version's) is
        // replaced, and its values must still continue. `loader_conns_expired` in particular
        // goes with the adopted fast-path counters, or the eviction count would take the
        // earlier run's expirations for evictions.
        let previous: Vec<u64> = read_loader_counters_at(pin_dir.path())
            .unwrap_or_else(|e| {
                log::warn!("the loader counters start from 0: {e}");
                Vec::new()
            })
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let (counters_pin, _) =
            open_or_create_pinned_array(pin_dir, PIN_LOADER_COUNTERS, LOADER_COUNTER_COUNT)?;
        let counters = LoaderCounters::continuing(&previous);
        let counters_path = pin_dir.pin_path(MAP_COUNTERS);
        let open_error = |source| LoaderError::OpenPin {
            path: counters_path.clone(),
            source,
        };
        let bpf_counters = MapData::from_pin(&counters_path)
            .and_then(Map::from_map_data)
            .and_then(PerCpuArray::try_from)
            .map_err(open_error)?;
        Ok(Self {
            maps: firewall.take_maps()?,
            bpf_counters,
            max_conns: plan.sizes.conns,
            latency: LatencyStats::default(),
            latency_pin: open_or_create_pinned_array(pin_dir, PIN_INSTALL_LATENCY, 1)?.0,
            counters,
            counters_pin,
            interface_names: HashMap::new(),
            drops: DropEventSink::open(
                &plan.state_dir,
                plan.events_max_bytes,
                plan.pcap.as_deref(),
            )?,
        })
    }

    /// Records every queued drop event.
    fn drain_drops(&mut self, ring: &mut RingBuf<MapData>) {
        let clock = ClockOffset::now();
        let now_ns = monotonic_now_ns();
        let mut any = false;
        while let Some(record) = ring.next() {
            let event = parse_drop_event(&record);
            drop(record);
            match event {
                Some(event) => {
                    self.drops.record(&event, clock, now_ns, &mut self.counters);
                    any = true;
                }
                None => log::warn!("ignoring a drop event of unexpected size"),
            }
        }
        if any {
            self.drops.flush(&mut self.counters);
            self.publish_counters();
        }
    }

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

    /// One idle sweep: snapshot, plan, apply, count; then the evictions, from the snapshot's
    /// count of connections.
    fn sweep(&mut self, timeout_s: u32) {
        let started = Instant::now();
        // Before the snapshot (see `ConnMapTally`), and the expirations as of the snapshot.
        let inserted = self.fast_path_counter(Counter::ConnInserted);
        let expired = self.counters.conns_removed();
        let mut outcome = SweepOutcome::default();
        match self.sweep_once(timeout_s, &mut outcome) {
            Ok(conns_counted) => {
                self.counters.add_sweep(&outcome);
                log_sweep(&outcome, timeout_s, started.elapsed());
                if let (Some(inserted), Some(entries)) = (inserted, conns_counted) {
                    self.note_evictions(inserted, expired, entries);
                }
            }
            Err(e) => {
                self.counters.add_swept(&outcome);
                self.counters.add(LoaderCounter::SweepErrors, 1);
                log::warn!("idle sweep failed (retried at the next one): {e}");
            }
        }
        self.publish_counters();
    }

    /// Returns the connections counted in the snapshot (`None`: the walk was cut short).
    fn sweep_once(
        &mut self,
        timeout_s: u32,
        outcome: &mut SweepOutcome,
    ) -> Result<Option<u64>, LoaderError> {
        let plan = sweep_maps_into(&mut self.maps, monotonic_now_s, timeout_s, outcome)?;
        for conn in &plan.expired {
            log::debug!(
                "connection token-A {} token-B {}: idle for {} s with {} subflow(s), due for removal",
                hex(&token_and_idsn(&conn.key_a).0),
                hex(&token_and_idsn(&conn.key_b).0),
                conn.idle_s,
                conn.flows.len()
            );
        }
        Ok(plan.conns_counted)
    }

    /// Removes the subflows marked closing that the host's kernel confirms closed, and each
    /// connection with its last one (see [`crate::closed`]).
    fn check_closed(&mut self) {
        let mut outcome = ClosedOutcome::default();
        let result = self.check_closed_once(&mut outcome);
        self.counters.add_closed(&outcome);
        if outcome.subflows_closed > 0 {
            log::debug!(
                "closed-subflow check: {} subflow(s) the kernel confirmed closed removed, {} connection(s) with them; {} marked closing are not local (left to the idle sweep)",
                outcome.subflows_closed,
                outcome.conns_closed,
                outcome.not_local
            );
            self.publish_counters();
        }
        if let Err(e) = result {
            log::warn!("closed-subflow check failed (retried at the next one): {e}");
        }
    }

    fn check_closed_once(&mut self, outcome: &mut ClosedOutcome) -> Result<(), LoaderError> {
        let conns = self.maps.all_conns()?;
        let flows = self.maps.all_flows()?;
        let planned = plan_closed(&conns, &flows);
        if planned.is_empty() {
            return Ok(());
        }
        let sockets = KernelSockets::new().map_err(|source| LoaderError::Runtime {
            what: "reading this host's addresses (getifaddrs)",
            source,
        })?;
        apply_closed(&mut self.maps, &sockets, &planned, outcome)
    }

    /// Counts the evictions without a sweep (`--idle-timeout 0`): inserted connections read
    /// first, then the connection map walked, then the removals.
    fn count_evictions(&mut self) {
        let Some(inserted) = self.fast_path_counter(Counter::ConnInserted) else {
            return;
        };
        let expired = self.counters.conns_removed();
        match self.maps.all_conns_walked() {
            Ok((conns, true)) => {
                let entries = u64::try_from(conns.len()).unwrap_or(u64::MAX);
                if self.note_evictions(inserted, expired, entries) > 0 {
                    self.publish_counters();
                }
            }
            Ok((_, false)) => log::debug!(
                "the connection map changed too fast to be counted; evictions are counted at the next check"
            ),
            Err(e) => log::warn!("could not count the connection map's evictions: {e}"),
        }
    }

    /// Raises `loader_conns_evicted` to what the tally shows (the closed connections are read
    /// now, after the entries were counted); logs an increase. Returns it.
    fn note_evictions(&mut self, inserted: u64, expired: u64, entries: u64) -> u64 {
        let Some(closed) = self.fast_path_counter(Counter::ConnClosed) else {
            return 0;
        };
        let tally = ConnMapTally {
            inserted,
            closed,
            expired,
            entries,
        };
        let new = self.counters.note_evictions(&tally);
        if new > 0 {
            log::info!(
                "the connection map is full: {new} connection(s) evicted since the last check ({} in all, loader_conns_evicted), unknown to the fast path from then on; --max-conns {} is too small for this load",
                self.counters.get(LoaderCounter::ConnsEvicted),
                self.max_conns
            );
        }
        new
    }

    /// One of the fast path's counters summed over CPUs; `None` (logged) when it cannot be read.
    fn fast_path_counter(&self, counter: Counter) -> Option<u64> {
        counter_total(&self.bpf_counters, counter)
            .map_err(|e| log::warn!("could not read {}: {e}", counter.name()))
            .ok()
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
        assert!(!p.keep_attached && p.pcap.is_none());
        assert_eq!(p.state_dir, PathBuf::from("/run/mptcp-fw/netns-7"));
    }

    #[test]
    fn exit_lines() {
        let line = detached_line(&DetachedInterface {
            iface: "veth0".into(),
            ifindex: 3,
        });
        assert_eq!(line, "detached from veth0 (XDP ingress, tc egress)");
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
