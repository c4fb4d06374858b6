//! `mptcp-loader run`: load, configure, pin, attach, then install midstates for every key event
//! until SIGINT/SIGTERM; then detach, report, and remove the pins.

use std::{collections::HashMap, path::PathBuf};

use aya::maps::{Array, Map, MapData, RingBuf};
use mptcp_common::maps::{ConnState, KeyEvent};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
};

use crate::{
    errors::LoaderError,
    firewall::{FilterMode, Firewall, XdpAttach},
    install::{format_flow, install_event, parse_key_event, InstallOutcome},
    keys::hex,
    latency::{LatencyStats, LatencySummary},
    pins::{check_bpffs, PinDir, PIN_INSTALL_LATENCY},
    preflight::{check_root, effective_uid, interface_index, interface_name},
    stats::format_summary_line,
    EBPF_OBJ,
};

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
}

impl RunPlan {
    /// Builds a plan; `pin_dir` defaults to the current network namespace's directory.
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

    // Declared before the firewall so it is dropped after it: on an error below, XDP is
    // detached first, then the pins are removed.
    let pin_dir = PinDir::claim(&plan.pin_dir)?;
    let mut firewall = Firewall::load(EBPF_OBJ)?;
    firewall.set_mode(plan.mode)?;
    firewall.pin_maps(&pin_dir)?;
    let latency_pin = create_latency_pin(&pin_dir)?;
    let mut installer = Installer {
        conns: firewall.take_conns()?,
        latency: LatencyStats::default(),
        latency_pin,
        interface_names: HashMap::new(),
    };
    // SAFETY: the RingBuf owns its map fd until it is dropped, and as_raw_fd always returns it.
    let mut events =
        unsafe { AsyncFd::register_with_interest(firewall.take_key_events()?, Interest::READABLE) }
            .map_err(|e| LoaderError::Runtime {
                what: "polling the key-event ring buffer",
                source: e.into_parts().1,
            })?;

    for iface in &plan.interfaces {
        let mode = firewall.attach(iface, plan.xdp)?;
        println!("attached to {iface} ({mode})");
    }
    println!(
        "validating MPTCP ADD_ADDR HMACs in {} mode; maps pinned under {}; stop with Ctrl-C",
        match plan.mode {
            FilterMode::Enforce => "enforce",
            FilterMode::Monitor => "monitor",
        },
        pin_dir.path().display()
    );

    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            ready = events.readable_mut() => {
                let mut guard = ready.map_err(|source| LoaderError::Runtime { what: "polling the key-event ring buffer", source })?;
                installer.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
        }
    }

    let detached = firewall.detach_all();
    let counters = firewall.counters();
    drop(firewall);
    match &detached {
        Ok(ifaces) => println!("detached XDP from {}", ifaces.join(", ")),
        Err(e) => eprintln!("error: {e}"),
    }
    match counters {
        Ok(counters) => println!("{}", format_summary_line(&counters)),
        Err(e) => eprintln!("error: reading the final counters: {e}"),
    }
    if let Some(summary) = installer.latency.summary() {
        println!("{}", summary.line());
    }
    drop(installer);
    let pins = pin_dir.path().to_path_buf();
    pin_dir.remove()?;
    println!("removed the pins under {}", pins.display());
    detached.map(drop)
}

/// Creates the pinned one-entry array that publishes the latency summary to `stats`.
fn create_latency_pin(pin_dir: &PinDir) -> Result<Array<MapData, LatencySummary>, LoaderError> {
    let path = pin_dir.pin_path(PIN_INSTALL_LATENCY);
    let map = Array::<MapData, LatencySummary>::create(1, 0)
        .map_err(LoaderError::map(PIN_INSTALL_LATENCY))?;
    map.pin(&path).map_err(|source| LoaderError::Pin {
        map: PIN_INSTALL_LATENCY,
        path: path.clone(),
        source,
    })?;
    // `pin` consumed the handle; reopen it from the pin.
    let open_error = |source| LoaderError::OpenPin {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_error)?;
    Array::try_from(Map::from_map_data(data).map_err(open_error)?).map_err(open_error)
}

/// State of the key-event consumer.
struct Installer {
    conns: aya::maps::HashMap<MapData, u64, ConnState>,
    latency: LatencyStats,
    latency_pin: Array<MapData, LatencySummary>,
    interface_names: HashMap<u32, String>,
}

impl Installer {
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
        match install_event(&mut self.conns, event) {
            Ok(InstallOutcome::Installed(m)) => {
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
                self.publish_latency();
            }
            Ok(InstallOutcome::AlreadyInstalled(m)) => log::debug!(
                "connection {flow} on {iface}: token-A {} token-B {} already had its midstates",
                hex(&m.token_a),
                hex(&m.token_b)
            ),
            Ok(InstallOutcome::NoConnection) => {
                log::warn!("connection {flow} on {iface}: gone from the connection map before its midstates were installed");
            }
            Ok(InstallOutcome::KeysDiffer) => {
                log::warn!("connection {flow} on {iface}: the connection map holds other keys than the event; skipped");
            }
            Err(e) => log::warn!("connection {flow} on {iface}: {e}"),
        }
    }

    fn publish_latency(&mut self) {
        if let Some(summary) = self.latency.summary() {
            if let Err(e) = self.latency_pin.set(0, summary, 0) {
                log::warn!("could not publish the install latency: {e}");
            }
        }
    }
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
    fn monotonic_clock_moves_forward() {
        let a = monotonic_now_ns();
        let b = monotonic_now_ns();
        assert!(a > 0 && b >= a);
    }
}
