//! `mptcp-loader run`: load (with the chosen map sizes), configure, attach XDP ingress and tc
//! egress through pinned links, then install midstates and tokens for every key event, record
//! every drop event and sweep idle connections until SIGINT/SIGTERM; then detach both, report,
//! and remove the pins (or, with `--keep-attached`, leave everything attached and pinned).
//!
//! A run that finds an earlier run's pins (killed, or exited with `--keep-attached`) adopts them
//! after checking their layout (see [`crate::kernel::adopt`]): it reuses the pinned maps, so no tracked
//! connection is lost, and swaps its programs into the pinned links atomically, so no packet
//! passes unchecked in between.

use std::{
    fmt::Write as _,
    future,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    time::{interval, interval_at, Interval, MissedTickBehavior},
};

use crate::{
    cli::error::LoaderError,
    cli::map_keeper::MapKeeper,
    cli::policy_keeper::PolicyKeeper,
    clock::unix_now_ns,
    conn::closed::CLOSED_CHECK_INTERVAL_S,
    conn::sweep::{sweep_interval, MAX_SWEEP_INTERVAL_S},
    errors::OsError,
    kernel::adopt::{plan_steps, take_inventory, Step},
    kernel::error::KernelError,
    kernel::firewall::{DetachedInterface, EgressAttach, Firewall, ProgramSwap, XdpAttach},
    kernel::layout::ObjectLayout,
    kernel::map_sizes::MapSizes,
    kernel::multiprog::XdpChain,
    kernel::pins::{check_bpffs, PinDir},
    kernel::preflight::{check_root, effective_uid, interface_index},
    kernel::state::{
        version_bytes, write_layout_hash, IfaceRecord, PinnedState, RunState,
        RUN_FLAG_KEEP_ATTACHED,
    },
    mode::FilterMode,
    observe::events::{default_state_dir, DEFAULT_EVENTS_MAX_BYTES},
    observe::loader_counters::LoaderCounters,
    observe::metrics::{self, MetricsSource},
    observe::stats::format_summary_line,
    policy::config::PolicySource,
    policy::Policy,
    shared_store::{keeper::StoreKeeper, link::FromStore, StoreOptions},
    EBPF_OBJ, VERSION,
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
    /// Seconds between two closed-subflow checks ([`crate::conn::closed`]).
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
    /// The shared store, if any ([`crate::shared_store`]).
    pub store: Option<StoreOptions>,
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
            store: None,
        })
    }
}

/// Checks interfaces (needs no privileges, so it is first), root and bpffs.
///
/// # Errors
/// The first problem found.
pub fn preflight(plan: &RunPlan, euid: u32) -> Result<(), KernelError> {
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
    let signal_error = |source| OsError {
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
    // Before attaching: what the peers learned is installed before this host enforces.
    keeper.catch_up_with_store(&plan).await;

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
    if let Some(store) = &keeper.store {
        println!("{}", store.describe());
    }
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
                let mut guard = ready.map_err(OsError::doing("polling the key-event ring buffer"))?;
                keeper.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            ready = drop_ring.readable_mut() => {
                let mut guard = ready.map_err(OsError::doing("polling the drop-event ring buffer"))?;
                keeper.drain_drops(guard.get_inner_mut());
                guard.clear_ready();
            }
            message = next_store_message(&mut keeper.store) => keeper.store_message(message),
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
    finish(&plan, firewall, keeper, state, pin_dir)
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
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| OsError::doing("polling a ring buffer")(e.into_parts().1).into())
}

/// Looks at what the pin directory holds and decides, per interface, to adopt or to attach.
/// Clears pins that hold nothing attached any more.
fn decide_steps(plan: &RunPlan, pin_dir: &mut PinDir) -> Result<Vec<Step>, KernelError> {
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
        std::fs::remove_file(defunct).map_err(KernelError::io("removing", defunct))?;
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
    plan: &RunPlan,
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
        return detached.map(drop).map_err(Into::into);
    }
    pin_dir.remove()?;
    println!("removed the pins under {}", pins.display());
    Ok(())
}

fn print_banner(plan: &RunPlan, pin_dir: &PinDir, events: &Path) {
    let mode = plan.mode;
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

/// The next message of the shared store; never without one.
async fn next_store_message(store: &mut Option<StoreKeeper>) -> FromStore {
    match store {
        Some(store) => store.next().await,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::loader_counters::LoaderCounter;

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
            matches!(err, KernelError::UnknownInterface { ref iface } if iface == "mptcp-nope0"),
            "{err}"
        );
        let p = plan(&["lo"], None).unwrap();
        assert!(matches!(
            preflight(&p, 1000),
            Err(KernelError::NotRoot { euid: 1000 })
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
}
