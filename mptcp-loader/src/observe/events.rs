//! Drop events: the fast path queues a [`DropEvent`] in the `MPTCP_DROPS` ring buffer for every
//! dropped or would-drop segment (rate-limited per CPU in the kernel, `Config::event_rate` /
//! `event_burst`). `run` consumes them:
//!
//! - each one is appended as one JSON line to `events.jsonl` in the run's state directory
//!   ([`default_state_dir`]: `/run/mptcp-fw/netns-<inode>`), which is size-bounded with one
//!   rotation (`events.jsonl.1`); `mptcp-loader events [--follow]` prints them;
//! - each one is logged, at most [`LOG_LINES_PER_S`] lines per second (burst
//!   [`LOG_LINES_BURST`]); what is over is counted (`loader_drop_event_lines_suppressed`) and
//!   summed up in one "suppressed K drop events" line;
//! - with `run --pcap FILE`, its frame snapshot goes to a pcap file ([`crate::observe::pcap`]).
//!
//! The ring buffer is a pinned map shared by successive runs: events queued while no loader ran
//! wait there (up to its 1 MiB) and are written, with their original time, by the next run.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write},
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use mptcp_common::{
    counters::Counter,
    maps::{DropEvent, DROP_SNAP_LEN, FAMILY_V4, FAMILY_V6},
};
use serde_json::{json, Value};

use crate::{
    clock::{rfc3339, ClockOffset},
    conn::keys::hex,
    errors::IoError,
    kernel::preflight::interface_name,
    observe::error::ObserveError,
    observe::loader_counters::{LoaderCounter, LoaderCounters},
    observe::pcap::PcapWriter,
};

/// Parent of the default state directories.
pub const STATE_ROOT: &str = "/run/mptcp-fw";
/// Name of the events file in the state directory.
pub const EVENTS_FILE: &str = "events.jsonl";
/// Name of the rotated events file.
pub const EVENTS_FILE_ROTATED: &str = "events.jsonl.1";
/// Default size bound of the events file (the rotated one holds as much again).
pub const DEFAULT_EVENTS_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Drop events logged per second at most.
pub const LOG_LINES_PER_S: u32 = 10;
/// Drop events logged in a burst above that rate.
pub const LOG_LINES_BURST: u32 = 20;

/// The state directory that goes with a pin directory: `/run/mptcp-fw/<pin directory name>`
/// (`netns-<inode>` for the default pin directory).
#[must_use]
pub fn default_state_dir(pin_dir: &Path) -> PathBuf {
    let name = pin_dir
        .file_name()
        .map_or_else(|| "default".into(), |n| n.to_string_lossy().into_owned());
    Path::new(STATE_ROOT).join(name)
}

/// Reads a [`DropEvent`] from a ring-buffer record, or `None` if the record is too short.
#[must_use]
pub fn parse_drop_event(record: &[u8]) -> Option<DropEvent> {
    if record.len() < size_of::<DropEvent>() {
        return None;
    }
    // SAFETY: the length was checked, DropEvent is plain old data (every bit pattern is
    // valid), and read_unaligned has no alignment requirement.
    Some(unsafe { record.as_ptr().cast::<DropEvent>().read_unaligned() })
}

/// The name of a counter code (`reason-N` for a code this loader does not know).
#[must_use]
pub fn reason_name(code: u32) -> String {
    usize::try_from(code)
        .ok()
        .and_then(|i| Counter::ALL.get(i))
        .map_or_else(|| format!("reason-{code}"), |c| c.name().to_owned())
}

fn address(family: u8, bytes: &[u8; 16]) -> Option<String> {
    match family {
        FAMILY_V4 => Some(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()),
        FAMILY_V6 => Some(Ipv6Addr::from(*bytes).to_string()),
        _ => None,
    }
}

/// The snapshot bytes of an event (at most its buffer).
#[must_use]
pub fn snapshot(event: &DropEvent) -> &[u8] {
    &event.snap[..usize::from(event.snap_len).min(event.snap.len())]
}

/// One event as a JSON object: time (RFC 3339, UTC), interface, reason, whether it was dropped,
/// the 4-tuple, the MP_JOIN token and the announced address, port and id (`null` when the
/// segment carried none).
#[must_use]
pub fn event_json(event: &DropEvent, iface: &str, unix_ns: u64) -> Value {
    let flow = &event.flow;
    let port = u16::from_be_bytes(event.announced_port);
    let announced = event.announced_family != 0;
    json!({
        "time": rfc3339(unix_ns),
        "iface": iface,
        "reason": reason_name(event.reason),
        "dropped": event.dropped != 0,
        "src": address(flow.family, &flow.saddr),
        "sport": u16::from_be_bytes(flow.sport),
        "dst": address(flow.family, &flow.daddr),
        "dport": u16::from_be_bytes(flow.dport),
        "token": (event.token != [0; 4]).then(|| hex(&event.token)),
        "announced_addr": address(event.announced_family, &event.announced_addr),
        "announced_port": (announced && port != 0).then_some(port),
        "announced_id": announced.then_some(event.announced_id),
        "frame_len": event.frame_len,
    })
}

/// One log line for an event.
#[must_use]
pub fn event_log_line(event: &DropEvent, iface: &str) -> String {
    let flow = crate::conn::install::format_flow(&event.flow);
    let verdict = if event.dropped != 0 {
        "dropped"
    } else {
        "would drop (monitor)"
    };
    let mut line = format!(
        "{verdict}: {} on {iface}: {flow}",
        reason_name(event.reason)
    );
    if event.token != [0; 4] {
        line.push_str(&format!(" token {}", hex(&event.token)));
    }
    if let Some(addr) = address(event.announced_family, &event.announced_addr) {
        line.push_str(&format!(" announcing id {} {addr}", event.announced_id));
        let port = u16::from_be_bytes(event.announced_port);
        if port != 0 {
            line.push_str(&format!(" port {port}"));
        }
    }
    line
}

/// A rate limit for log lines (`mptcp_common::validate::gcra`, the fast path's limiter); what it
/// refuses is counted until the next line it lets through.
#[derive(Clone, Debug)]
pub struct LogLimiter {
    interval_ns: u64,
    /// Lines let through at once beyond the first (gcra's burst).
    extra_burst: u64,
    /// gcra's theoretical arrival time; 0 starts with the whole burst available.
    tat: u64,
    suppressed: u64,
}

impl LogLimiter {
    /// `per_s` lines per second, `burst` at once; starts full.
    #[must_use]
    pub fn new(per_s: u32, burst: u32) -> Self {
        Self {
            interval_ns: 1_000_000_000 / u64::from(per_s.max(1)),
            extra_burst: u64::from(burst.max(1)) - 1,
            tat: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now_ns`; `Some(k)` says yes, with `k` lines suppressed
    /// since the last one let through (to report first).
    pub fn admit(&mut self, now_ns: u64) -> Option<u64> {
        let (conforms, tat) =
            mptcp_common::validate::gcra(self.tat, now_ns, self.interval_ns, self.extra_burst);
        self.tat = tat;
        if conforms {
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Lines suppressed and not reported yet; resets the count (for a periodic report).
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }
}

/// The events file being appended to, rotated once it would exceed its bound.
#[derive(Debug)]
pub struct EventsFile {
    path: PathBuf,
    rotated: PathBuf,
    max_bytes: u64,
    file: File,
    size: u64,
}

impl EventsFile {
    /// Opens (creating it and the directory if needed) `state_dir/events.jsonl` for appending.
    ///
    /// # Errors
    /// When the directory or the file cannot be created.
    pub fn open(state_dir: &Path, max_bytes: u64) -> Result<Self, ObserveError> {
        fs::create_dir_all(state_dir)
            .map_err(IoError::at("creating the state directory", state_dir))?;
        let path = state_dir.join(EVENTS_FILE);
        let file = open_append(&path)?;
        let size = file
            .metadata()
            .map_err(IoError::at("inspecting", &path))?
            .len();
        Ok(Self {
            rotated: state_dir.join(EVENTS_FILE_ROTATED),
            path,
            max_bytes,
            file,
            size,
        })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line (one `write`, so a reader never sees half of it). Returns whether the
    /// file was rotated first (it moves to `events.jsonl.1`, replacing the older one).
    ///
    /// # Errors
    /// When writing or rotating fails.
    pub fn append(&mut self, line: &str) -> Result<bool, ObserveError> {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let len = bytes.len() as u64;
        let rotate = self.size > 0 && self.size + len > self.max_bytes;
        if rotate {
            fs::rename(&self.path, &self.rotated).map_err(IoError::at("rotating", &self.path))?;
            self.file = open_append(&self.path)?;
            self.size = 0;
        }
        self.file
            .write_all(&bytes)
            .map_err(IoError::at("writing", &self.path))?;
        self.size += len;
        Ok(rotate)
    }
}

fn open_append(path: &Path) -> Result<File, IoError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(IoError::at("opening", path))
}

/// Where `run` puts drop events: the events file, the log (rate-limited), the pcap file.
#[derive(Debug)]
pub struct DropEventSink {
    file: EventsFile,
    pcap: Option<(PathBuf, PcapWriter)>,
    limiter: LogLimiter,
    names: HashMap<u32, String>,
}

impl DropEventSink {
    /// Opens the events file in `state_dir` and, if asked, creates the pcap file.
    ///
    /// # Errors
    /// When either cannot be created.
    pub fn open(
        state_dir: &Path,
        max_bytes: u64,
        pcap: Option<&Path>,
    ) -> Result<Self, ObserveError> {
        let pcap = pcap
            .map(|path| {
                let snaplen = u32::try_from(DROP_SNAP_LEN).expect("small");
                PcapWriter::create(path, snaplen)
                    .map(|w| (path.to_path_buf(), w))
                    .map_err(IoError::at("creating the pcap file", path))
            })
            .transpose()?;
        Ok(Self {
            file: EventsFile::open(state_dir, max_bytes)?,
            pcap,
            limiter: LogLimiter::new(LOG_LINES_PER_S, LOG_LINES_BURST),
            names: HashMap::new(),
        })
    }

    /// The events file.
    #[must_use]
    pub fn events_path(&self) -> &Path {
        self.file.path()
    }

    /// Records one event (`now_ns`: CLOCK_MONOTONIC, for the log rate limit).
    pub fn record(
        &mut self,
        event: &DropEvent,
        clock: ClockOffset,
        now_ns: u64,
        counters: &mut LoaderCounters,
    ) {
        counters.add(LoaderCounter::DropEvents, 1);
        let iface = self
            .names
            .entry(event.ifindex)
            .or_insert_with(|| interface_name(event.ifindex))
            .clone();
        let unix_ns = clock.unix_ns(event.seen_ns);
        let line = event_json(event, &iface, unix_ns).to_string();
        if let Err(e) = self.file.append(&line) {
            counters.add(LoaderCounter::DropEventWriteErrors, 1);
            log::warn!("drop event not recorded: {e}");
        }
        if let Some((path, pcap)) = &mut self.pcap {
            let snap = snapshot(event);
            if let Err(e) = pcap.write_frame(unix_ns, u32::from(event.frame_len), snap) {
                counters.add(LoaderCounter::DropEventWriteErrors, 1);
                log::warn!("writing {}: {e}", path.display());
            }
        }
        match self.limiter.admit(now_ns) {
            Some(suppressed) => {
                if suppressed > 0 {
                    log::warn!("{}", suppressed_line(suppressed));
                }
                log::warn!("{}", event_log_line(event, &iface));
            }
            None => counters.add(LoaderCounter::DropEventLinesSuppressed, 1),
        }
    }

    /// Logs how many events were not logged since the last line (called once a second).
    pub fn report_suppressed(&mut self) {
        let suppressed = self.limiter.take_suppressed();
        if suppressed > 0 {
            log::warn!("{}", suppressed_line(suppressed));
        }
    }
}

/// `suppressed 12 drop event lines (at most 10 a second are logged; all are in events.jsonl)`.
#[must_use]
pub fn suppressed_line(suppressed: u64) -> String {
    format!(
        "suppressed {suppressed} drop event line{} (at most {LOG_LINES_PER_S} a second are logged; all are in {EVENTS_FILE})",
        if suppressed == 1 { "" } else { "s" }
    )
}

/// Prints every recorded event of `state_dir` (the rotated file first) to `out`.
///
/// # Errors
/// [`ObserveError::NoEvents`] when neither file exists; I/O errors.
pub fn print_events(state_dir: &Path, out: &mut impl Write) -> Result<(), ObserveError> {
    let current = state_dir.join(EVENTS_FILE);
    let rotated = state_dir.join(EVENTS_FILE_ROTATED);
    if !current.exists() && !rotated.exists() {
        return Err(ObserveError::NoEvents {
            state_dir: state_dir.to_path_buf(),
        });
    }
    for path in [rotated, current] {
        match File::open(&path) {
            Ok(mut file) => {
                io::copy(&mut file, out).map_err(IoError::at("reading", &path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(IoError::at("reading", &path)(e).into()),
        }
    }
    out.flush().map_err(IoError::at("writing", "stdout"))?;
    Ok(())
}

/// `tail -f` on the events file: prints what it holds, then every line appended to it, across
/// rotations, until `keep_going` says stop (checked every `poll`).
///
/// # Errors
/// [`ObserveError::NoEvents`] when the file does not exist; I/O errors.
pub fn follow_events(
    state_dir: &Path,
    out: &mut impl Write,
    poll: Duration,
    mut keep_going: impl FnMut() -> bool,
) -> Result<(), ObserveError> {
    let path = state_dir.join(EVENTS_FILE);
    let open = |path: &Path| -> Result<(BufReader<File>, u64), ObserveError> {
        let file = File::open(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ObserveError::NoEvents {
                state_dir: state_dir.to_path_buf(),
            },
            _ => IoError::at("opening", path)(e).into(),
        })?;
        let inode = file
            .metadata()
            .map_err(IoError::at("inspecting", path))?
            .ino();
        Ok((BufReader::new(file), inode))
    };
    let (mut reader, mut inode) = open(&path)?;
    let mut partial = String::new();
    loop {
        drain_lines(&mut reader, &mut partial, out, &path)?;
        if !keep_going() {
            return Ok(());
        }
        std::thread::sleep(poll);
        match fs::metadata(&path) {
            // Rotated: finish the old file (our handle still reads it), then go on with the
            // new one.
            Ok(meta) if meta.ino() != inode => {
                drain_lines(&mut reader, &mut partial, out, &path)?;
                (reader, inode) = open(&path)?;
                partial.clear();
            }
            // Truncated by hand: start again from its beginning.
            Ok(meta) => {
                let position = reader
                    .stream_position()
                    .map_err(IoError::at("reading", &path))?;
                if meta.len() < position {
                    reader
                        .seek(SeekFrom::Start(0))
                        .map_err(IoError::at("reading", &path))?;
                    partial.clear();
                }
            }
            // Between the rename and the next write: wait for the new file.
            Err(_) => {}
        }
    }
}

/// Copies the complete lines `reader` has to `out`; a line being written stays in `partial`
/// until its end arrives.
fn drain_lines(
    reader: &mut BufReader<File>,
    partial: &mut String,
    out: &mut impl Write,
    path: &Path,
) -> Result<(), ObserveError> {
    loop {
        let read = reader
            .read_line(partial)
            .map_err(IoError::at("reading", path))?;
        if read == 0 || !partial.ends_with('\n') {
            return Ok(());
        }
        out.write_all(partial.as_bytes())
            .and_then(|()| out.flush())
            .map_err(IoError::at("writing", "stdout"))?;
        partial.clear();
    }
}

/// Reads a whole events file into lines (for tests and tools).
///
/// # Errors
/// When the file cannot be read.
pub fn read_lines(path: &Path) -> io::Result<Vec<String>> {
    let mut text = String::new();
    File::open(path)?.read_to_string(&mut text)?;
    Ok(text.lines().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use mptcp_common::maps::FlowKey;

    use super::*;

    fn event() -> DropEvent {
        let mut flow = FlowKey {
            family: FAMILY_V4,
            sport: 40000u16.to_be_bytes(),
            dport: 10000u16.to_be_bytes(),
            ..FlowKey::default()
        };
        flow.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        flow.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        let mut announced_addr = [0u8; 16];
        announced_addr[..4].copy_from_slice(&[198, 18, 7, 7]);
        DropEvent {
            seen_ns: 5,
            flow,
            ifindex: 3,
            reason: Counter::AddAddrBadHmacDropped as u32,
            dropped: 1,
            announced_family: FAMILY_V4,
            announced_id: 9,
            pad: 0,
            token: [0; 4],
            announced_addr,
            announced_port: [0, 0],
            frame_len: 82,
            snap_len: 82,
            snap: [0xab; DROP_SNAP_LEN],
            pad2: [0; 2],
        }
    }

    #[test]
    fn json_lines_carry_every_field() {
        let value = event_json(&event(), "s0", 1_764_183_900_123_456_789);
        assert_eq!(
            value.to_string(),
            r#"{"time":"2025-11-26T19:05:00.123456Z","iface":"s0","reason":"add_addr_bad_hmac_dropped","dropped":true,"src":"198.18.0.1","sport":40000,"dst":"198.18.0.2","dport":10000,"token":null,"announced_addr":"198.18.7.7","announced_port":null,"announced_id":9,"frame_len":82}"#
        );
        let mut join = event();
        join.reason = Counter::JoinSynUnknownTokenWouldDrop as u32;
        join.dropped = 0;
        join.token = [0xde, 0xad, 0xbe, 0xef];
        join.announced_family = 0;
        join.flow.family = FAMILY_V6;
        join.flow.saddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        join.flow.daddr = "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets();
        let value = event_json(&join, "s0", 0);
        assert_eq!(value["time"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(value["reason"], "join_syn_unknown_token_would_drop");
        assert_eq!(value["dropped"], false);
        assert_eq!(value["token"], "deadbeef");
        assert_eq!(value["src"], "2001:db8::1");
        assert!(value["announced_addr"].is_null() && value["announced_id"].is_null());
        assert_eq!(
            event_log_line(&join, "s0"),
            "would drop (monitor): join_syn_unknown_token_would_drop on s0: [2001:db8::1]:40000 -> [2001:db8::2]:10000 token deadbeef"
        );
        assert_eq!(
            event_log_line(&event(), "s0"),
            "dropped: add_addr_bad_hmac_dropped on s0: 198.18.0.1:40000 -> 198.18.0.2:10000 announcing id 9 198.18.7.7"
        );
        assert_eq!(reason_name(9999), "reason-9999");
    }

    #[test]
    fn records_parse_and_snapshots_are_bounded() {
        let ev = event();
        // SAFETY: DropEvent is repr(C) plain data; viewing it as bytes is fine.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<DropEvent>())
        };
        assert_eq!(parse_drop_event(bytes), Some(ev));
        assert_eq!(parse_drop_event(&bytes[..100]), None);
        assert_eq!(snapshot(&ev).len(), 82);
        let mut odd = ev;
        odd.snap_len = 999;
        assert_eq!(snapshot(&odd).len(), DROP_SNAP_LEN);
    }

    #[test]
    fn the_log_limiter_lets_a_burst_through_then_the_rate() {
        let mut limiter = LogLimiter::new(10, 3);
        let t0 = 1_000_000_000;
        assert_eq!(limiter.admit(t0), Some(0));
        assert_eq!(limiter.admit(t0), Some(0));
        assert_eq!(limiter.admit(t0), Some(0));
        assert_eq!(limiter.admit(t0), None);
        assert_eq!(limiter.admit(t0 + 50_000_000), None);
        // 100 ms later one token is back: the line reports the two suppressed before it.
        assert_eq!(limiter.admit(t0 + 100_000_000), Some(2));
        assert_eq!(limiter.admit(t0 + 100_000_000), None);
        assert_eq!(limiter.take_suppressed(), 1);
        assert_eq!(limiter.take_suppressed(), 0);
        // A long pause refills up to the burst, not more.
        let later = t0 + 60_000_000_000;
        for _ in 0..3 {
            assert!(limiter.admit(later).is_some());
        }
        assert_eq!(limiter.admit(later), None);
    }

    #[test]
    fn the_events_file_rotates_once_and_is_printed_in_order() {
        let dir = std::env::temp_dir().join(format!("mptcp-loader-events-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut out = Vec::new();
        assert!(matches!(
            print_events(&dir, &mut out),
            Err(ObserveError::NoEvents { .. })
        ));
        let mut file = EventsFile::open(&dir, 25).unwrap();
        assert!(!file.append("first line 1").unwrap());
        assert!(!file.append("line 2").unwrap());
        assert!(
            file.append("third line 3").unwrap(),
            "would exceed 25 bytes"
        );
        assert!(file.append("fourth line 4").unwrap());
        assert_eq!(
            read_lines(&dir.join(EVENTS_FILE_ROTATED)).unwrap(),
            ["third line 3"]
        );
        assert_eq!(read_lines(file.path()).unwrap(), ["fourth line 4"]);
        print_events(&dir, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "third line 3\nfourth line 4\n"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_sink_writes_json_lines_and_pcap_frames_and_counts() {
        let dir = std::env::temp_dir().join(format!("mptcp-loader-sink-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let pcap = dir.join("drops.pcap");
        fs::create_dir_all(&dir).unwrap();
        let mut sink = DropEventSink::open(&dir, 1 << 20, Some(&pcap)).unwrap();
        let mut counters = LoaderCounters::default();
        let clock = ClockOffset::between(0, 1_764_183_900_000_000_000);
        // 25 events at once: the first LOG_LINES_BURST are logged, the rest only counted.
        for _ in 0..25 {
            sink.record(&event(), clock, 1_000, &mut counters);
        }
        assert_eq!(counters.get(LoaderCounter::DropEvents), 25);
        assert_eq!(
            counters.get(LoaderCounter::DropEventLinesSuppressed),
            25 - u64::from(LOG_LINES_BURST)
        );
        assert_eq!(counters.get(LoaderCounter::DropEventWriteErrors), 0);
        let lines = read_lines(sink.events_path()).unwrap();
        assert_eq!(lines.len(), 25);
        let first: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(first["time"], "2025-11-26T19:05:00.000000Z");
        let bytes = fs::read(&pcap).unwrap();
        // Global header, then 25 records of a 16-byte header and the 82-byte snapshot.
        assert_eq!(bytes.len(), 24 + 25 * (16 + 82));
        assert_eq!(&bytes[24 + 16..24 + 16 + 82], &[0xab; 82]);
        assert_eq!(
            suppressed_line(5),
            "suppressed 5 drop event lines (at most 10 a second are logged; all are in events.jsonl)"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn follow_prints_appended_lines_across_a_rotation() {
        let dir = std::env::temp_dir().join(format!("mptcp-loader-follow-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut file = EventsFile::open(&dir, 30).unwrap();
        file.append("a1").unwrap();
        let mut rounds = 0;
        let mut out = Vec::new();
        follow_events(&dir, &mut out, Duration::from_millis(1), || {
            rounds += 1;
            match rounds {
                1 => file.append("b2").map(drop).unwrap(),
                // Rotates: b2's file moves away; c3 lands in a new file.
                2 => {
                    file.append("x".repeat(22).as_str()).unwrap();
                    assert!(file.append("c3").unwrap());
                }
                _ => {}
            }
            rounds < 4
        })
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text, format!("a1\nb2\n{}\nc3\n", "x".repeat(22)));
        fs::remove_dir_all(&dir).unwrap();
    }
}
