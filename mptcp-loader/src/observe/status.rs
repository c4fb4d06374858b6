//! `mptcp-loader status`: what is attached where and who keeps it, read from the pin directory
//! of this network namespace (no loader process needed: after a SIGKILL or `run
//! --keep-attached` the programs stay attached through their pinned links, and status says so).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use mptcp_common::maps::{Config, MAP_CONFIG, MAP_IFACE_MODES};
use serde_json::{json, Value};

use crate::{
    clock::{rfc3339, unix_now_ns},
    kernel::bpf_sys,
    kernel::firewall::{
        clsact_filter, EgressIds, LinkIds, EGRESS_FILTER_HANDLE, EGRESS_FILTER_PRIORITY,
    },
    kernel::netlink,
    kernel::pins::lock_owner,
    kernel::preflight::interface_name_of,
    kernel::state::{pinned_links, IfaceRecord, PinnedState, RunState},
    kernel::store::MapFill,
    mode::FilterMode,
    observe::error::ObserveError,
    observe::stats::{locate_pins, read_map_fill},
    observe::store_state::{read_store_state, StoreState},
    VERSION,
};

/// What `status` reports about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceStatus {
    /// Its name now (or as recorded, if it is gone).
    pub name: String,
    /// Its index.
    pub ifindex: u32,
    /// The XDP mode the kernel reports for it (`native`, `skb`), else the recorded one.
    pub xdp_mode: Option<String>,
    /// The pinned XDP link, if alive.
    pub xdp_link: Option<LinkIds>,
    /// The pinned TCX egress link, if alive.
    pub tc_link: Option<LinkIds>,
    /// Without a TCX link: the program our clsact egress filter runs, if it is there.
    pub tc_filter: Option<u32>,
    /// `enforce` or `monitor`.
    pub mode: &'static str,
    /// Whether `mode` is the interface's own (else the global one).
    pub own_mode: bool,
    /// Wall clock (Unix ns) when it was attached, if recorded.
    pub attached_unix_ns: Option<u64>,
}

/// Everything `status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusReport {
    /// Where the pins are.
    pub pin_dir: PathBuf,
    /// The pid of the run holding the pin directory, if one runs.
    pub pid: Option<u32>,
    /// The recorded run state.
    pub run: Option<RunState>,
    /// The global mode (`enforce`, `monitor`).
    pub mode: &'static str,
    /// Every interface the firewall is attached to.
    pub interfaces: Vec<IfaceStatus>,
    /// Fill levels of the connection, subflow, token and pending-join maps.
    pub maps: Vec<MapFill>,
    /// The shared store's state, for a run with `--store`.
    pub store: Option<StoreState>,
}

/// The name of a `Config::mode` (or per-interface mode) value.
fn mode_name(value: u32) -> &'static str {
    FilterMode::from_config_value(value).name()
}

fn open(path: &Path) -> Result<Map, MapError> {
    Map::from_map_data(MapData::from_pin(path)?)
}

/// Reads the status of the firewall pinned under `pin_dir`.
///
/// # Errors
/// [`ObserveError::NoActiveRun`] without pins; map errors otherwise.
pub fn read_status(pin_dir: &Path) -> Result<StatusReport, ObserveError> {
    let dir = locate_pins(pin_dir)?;
    let config: Option<Config> = open(&dir.join(MAP_CONFIG))
        .and_then(Array::<MapData, Config>::try_from)
        .and_then(|a| a.get(&0, 0))
        .ok();
    let global = config.map_or(0, |c| c.mode);
    let if_modes: Option<HashMap<MapData, u32, u32>> = open(&dir.join(MAP_IFACE_MODES))
        .and_then(HashMap::try_from)
        .ok();
    let state = PinnedState::open(&dir).ok();
    let records: Vec<IfaceRecord> = state
        .as_ref()
        .and_then(|s| s.ifaces().ok())
        .unwrap_or_default();
    let mut interfaces = Vec::new();
    for links in pinned_links(&dir)? {
        let ifindex = links.ifindex;
        let live = |pin: Option<&Path>| {
            pin.and_then(|p| bpf_sys::pinned_link_details(p).ok())
                .filter(|d| d.ifindex == ifindex)
                .map(LinkIds::from)
        };
        let record = records.iter().find(|r| r.ifindex == ifindex);
        let own = if_modes.as_ref().and_then(|m| m.get(&ifindex, 0).ok());
        let kernel_mode = netlink::xdp_attached(ifindex)
            .ok()
            .flatten()
            .map(|x| x.mode.short().to_owned());
        interfaces.push(IfaceStatus {
            name: interface_name_of(ifindex)
                .or_else(|| record.map(IfaceRecord::name))
                .unwrap_or_else(|| format!("if{ifindex}")),
            ifindex,
            xdp_mode: kernel_mode.or_else(|| {
                record
                    .and_then(IfaceRecord::mode)
                    .map(|m| m.short().to_owned())
            }),
            xdp_link: live(links.xdp.as_deref()),
            tc_link: live(links.tcx.as_deref()),
            tc_filter: links
                .tcx
                .is_none()
                .then(|| clsact_filter(ifindex).ok().flatten())
                .flatten(),
            mode: mode_name(own.unwrap_or(global)),
            own_mode: own.is_some(),
            attached_unix_ns: record.map(|r| r.attached_unix_ns),
        });
    }
    Ok(StatusReport {
        pid: lock_owner(&dir),
        run: state
            .and_then(|s| s.run().ok())
            .filter(|r| r.generation > 0),
        mode: mode_name(global),
        interfaces,
        maps: read_map_fill(&dir)?,
        store: read_store_state(&dir)?,
        pin_dir: dir,
    })
}

/// `1h 2m 3s`.
#[must_use]
pub fn format_duration_s(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

fn since(now_ns: u64, then_ns: u64) -> String {
    format!(
        "{} ({} ago)",
        rfc3339(then_ns),
        format_duration_s(now_ns.saturating_sub(then_ns) / 1_000_000_000)
    )
}

/// The `status` text (`now_ns`: wall clock, Unix ns).
#[must_use]
pub fn format_status(report: &StatusReport, now_ns: u64) -> String {
    let mut out = format!("pins:       {}\n", report.pin_dir.display());
    let _ = match (report.pid, &report.run) {
        (Some(pid), Some(run)) => writeln!(
            out,
            "loader:     pid {pid}, running since {}",
            since(now_ns, run.run_started_unix_ns)
        ),
        (Some(pid), None) => writeln!(out, "loader:     pid {pid}"),
        (None, _) => writeln!(
            out,
            "loader:     no loader process: programs attached by pinned links"
        ),
    };
    if let Some(run) = &report.run {
        let _ = writeln!(
            out,
            "protected:  since {}; {} run(s) so far",
            since(now_ns, run.protected_since_unix_ns),
            run.generation
        );
        let _ = writeln!(
            out,
            "version:    {} (last run), {VERSION} (this mptcp-loader)",
            run.version()
        );
    }
    let _ = writeln!(out, "mode:       {} (global)", report.mode);
    if report.interfaces.is_empty() {
        out.push_str("interfaces: none attached\n");
    }
    for i in &report.interfaces {
        let link =
            |l: Option<LinkIds>| l.map_or_else(|| "not attached".to_owned(), |l| l.to_string());
        let egress = match (i.tc_link, i.tc_filter) {
            (None, Some(prog)) => EgressIds::Clsact { prog }.to_string(),
            (tcx, _) => format!("TCX egress ({})", link(tcx)),
        };
        let _ = writeln!(
            out,
            "interface:  {} (ifindex {}): {} mode{}; XDP ingress {} ({}); {}{}",
            i.name,
            i.ifindex,
            i.mode,
            if i.own_mode { "" } else { " (global)" },
            i.xdp_mode.as_deref().unwrap_or("?"),
            link(i.xdp_link),
            egress,
            i.attached_unix_ns
                .map(|t| format!("; attached since {}", since(now_ns, t)))
                .unwrap_or_default()
        );
    }
    for m in &report.maps {
        let _ = writeln!(out, "map:        {} {}/{}", m.name, m.entries, m.max);
    }
    if let Some(store) = &report.store {
        let _ = writeln!(out, "{}", store.line());
    }
    out
}

/// `status --json`.
#[must_use]
pub fn status_json(report: &StatusReport, now_ns: u64) -> Value {
    let link = |l: Option<LinkIds>| l.map(|l| json!({"link_id": l.link, "prog_id": l.prog}));
    json!({
        "pin_dir": report.pin_dir.display().to_string(),
        "pid": report.pid,
        "loader_process": report.pid.is_some(),
        "version": report.run.as_ref().map(RunState::version),
        "loader_version": VERSION,
        "protected_since": report.run.as_ref().map(|r| rfc3339(r.protected_since_unix_ns)),
        "uptime_s": report.run.as_ref().map(|r| now_ns.saturating_sub(r.protected_since_unix_ns) / 1_000_000_000),
        "run_started": report.run.as_ref().map(|r| rfc3339(r.run_started_unix_ns)),
        "runs": report.run.as_ref().map(|r| r.generation),
        "mode": report.mode,
        "interfaces": report.interfaces.iter().map(|i| json!({
            "name": i.name,
            "ifindex": i.ifindex,
            "xdp_mode": i.xdp_mode,
            "xdp": link(i.xdp_link),
            "tc_egress": link(i.tc_link),
            "tc_filter": i.tc_filter.map(|prog| json!({
                "priority": EGRESS_FILTER_PRIORITY,
                "handle": EGRESS_FILTER_HANDLE,
                "prog_id": prog,
            })),
            "mode": i.mode,
            "mode_source": if i.own_mode { "interface" } else { "global" },
            "attached_since": i.attached_unix_ns.map(rfc3339),
        })).collect::<Vec<_>>(),
        "maps": report.maps.iter().map(|m| (m.name.to_owned(), json!({"entries": m.entries, "max": m.max}))).collect::<serde_json::Map<_, _>>(),
        "store": report.store.as_ref().map(StoreState::to_json),
    })
}

/// Reads and prints the status (for the CLI).
///
/// # Errors
/// See [`read_status`].
pub fn print_status(pin_dir: &Path, json_output: bool) -> Result<(), ObserveError> {
    let report = read_status(pin_dir)?;
    let now = unix_now_ns();
    if json_output {
        println!("{}", status_json(&report, now));
    } else {
        print!("{}", format_status(&report, now));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::state::version_bytes;

    fn report(pid: Option<u32>) -> StatusReport {
        StatusReport {
            pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
            pid,
            run: Some(RunState {
                protected_since_unix_ns: 1_000_000_000_000_000_000,
                run_started_unix_ns: 1_000_000_060_000_000_000,
                run_pid: 42,
                flags: 0,
                version: version_bytes("0.1.0"),
                generation: 2,
                pad: 0,
            }),
            mode: "enforce",
            interfaces: vec![IfaceStatus {
                name: "veth0".into(),
                ifindex: 3,
                xdp_mode: Some("native".into()),
                xdp_link: Some(LinkIds { link: 12, prog: 45 }),
                tc_link: Some(LinkIds { link: 13, prog: 46 }),
                tc_filter: None,
                mode: "monitor",
                own_mode: true,
                attached_unix_ns: Some(1_000_000_000_000_000_000),
            }],
            maps: vec![MapFill {
                name: "MPTCP_CONNS",
                entries: 1,
                max: 1024,
            }],
            store: None,
        }
    }

    #[test]
    fn text_names_the_process_or_its_absence() {
        let now = 1_000_003_661_000_000_000;
        let text = format_status(&report(Some(42)), now);
        assert!(
            text.contains(
                "loader:     pid 42, running since 2001-09-09T01:47:40.000000Z (1h 0m 1s ago)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "protected:  since 2001-09-09T01:46:40.000000Z (1h 1m 1s ago); 2 run(s) so far"
            ),
            "{text}"
        );
        assert!(text.contains("interface:  veth0 (ifindex 3): monitor mode; XDP ingress native (link 12, prog 45); TCX egress (link 13, prog 46)"), "{text}");
        assert!(text.contains("mode:       enforce (global)"));
        assert!(text.contains("map:        MPTCP_CONNS 1/1024"));
        let orphan = format_status(&report(None), now);
        assert!(
            orphan.contains("no loader process: programs attached by pinned links"),
            "{orphan}"
        );
    }

    #[test]
    fn json_has_every_field() {
        let value = status_json(&report(None), 1_000_000_100_000_000_000);
        assert_eq!(value["loader_process"], false);
        assert!(value["pid"].is_null());
        assert_eq!(value["uptime_s"], 100);
        assert_eq!(value["version"], "0.1.0");
        assert_eq!(value["interfaces"][0]["xdp"]["link_id"], 12);
        assert_eq!(value["interfaces"][0]["tc_egress"]["prog_id"], 46);
        assert_eq!(value["interfaces"][0]["mode_source"], "interface");
        assert_eq!(value["maps"]["MPTCP_CONNS"]["max"], 1024);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration_s(5), "5s");
        assert_eq!(format_duration_s(65), "1m 5s");
        assert_eq!(format_duration_s(3_725), "1h 2m 5s");
        assert_eq!(format_duration_s(90_061), "1d 1h 1m");
    }
}
