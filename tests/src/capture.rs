//! Packet captures inside a namespace (tcpdump to a pcap file) and a small pcap reader that
//! finds MPTCP ADD_ADDR options, RSTs and MP_CAPABLE options in what was captured.
//!
//! tcpdump sees a packet after XDP has passed it: a packet an XDP program drops on that
//! interface never reaches the capture. That is what makes the capture a witness of "reached the
//! server stack".

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    error::{LabError, Result},
    netns::Netns,
    proc::Proc,
};

/// Bytes captured per packet: Ethernet + IP + TCP headers with options fit.
const SNAPLEN: &str = "256";
/// tcpdump's default snapshot length: whole frames.
const WHOLE_FRAMES: &str = "262144";
/// tcpdump's kernel buffer (`-B`, KiB).
const BUFFER_KIB: &str = "16384";

/// A running tcpdump writing a pcap file.
pub struct Capture {
    proc: Proc,
    path: PathBuf,
    iface: String,
}

impl Capture {
    /// Starts `tcpdump -i <iface> -w <path> -U <filter>` in `ns` and waits until it listens.
    ///
    /// # Errors
    /// When tcpdump cannot start or does not report listening within 10 s.
    pub fn start(ns: &Netns, iface: &str, path: &Path, filter: &str) -> Result<Capture> {
        Capture::start_with_snaplen(ns, iface, path, filter, SNAPLEN)
    }

    /// Like [`Capture::start`], but keeps whole frames (tcpdump's default snapshot length), as
    /// the Linux captures of `tests/fixtures/` do.
    ///
    /// # Errors
    /// As [`Capture::start`].
    pub fn start_whole_frames(
        ns: &Netns,
        iface: &str,
        path: &Path,
        filter: &str,
    ) -> Result<Capture> {
        Capture::start_with_snaplen(ns, iface, path, filter, WHOLE_FRAMES)
    }

    fn start_with_snaplen(
        ns: &Netns,
        iface: &str,
        path: &Path,
        filter: &str,
        snaplen: &str,
    ) -> Result<Capture> {
        let path_arg = path.display().to_string();
        let mut args = vec![
            "-i",
            iface,
            "-n",
            // Without immediate mode, libpcap hands packets over per ring block, and whatever
            // sits in the current block when tcpdump is interrupted is lost.
            "--immediate-mode",
            "-U", // and write each packet as it arrives
            // Headers are enough for the tests, and a small snapshot keeps the 1 MB burst of 64 KB
            // GRO frames from overflowing the kernel buffer (which would lose later packets).
            "-s",
            snaplen,
            "-B",
            BUFFER_KIB,
            "-Z",
            "root", // do not drop privileges: the pcap lives in a root-only directory
            "-w",
            &path_arg,
        ];
        args.extend(filter.split_whitespace());
        let mut proc = ns.spawn(&format!("tcpdump on {iface}"), "tcpdump", &args)?;
        proc.wait_for_line("`listening on`", Duration::from_secs(10), |l| {
            l.contains("listening on")
        })?;
        Ok(Capture {
            proc,
            path: path.to_owned(),
            iface: iface.to_owned(),
        })
    }

    /// The pcap file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops tcpdump (SIGINT, so it flushes) and parses the pcap.
    ///
    /// # Errors
    /// When tcpdump does not stop or the file cannot be parsed.
    pub fn stop(mut self) -> Result<CaptureReport> {
        // Give packets already on the wire a moment to be written.
        std::thread::sleep(Duration::from_millis(100));
        self.proc.stop(libc::SIGINT, Duration::from_secs(5))?;
        let log = self.proc.log();
        let dropped_by_kernel = log
            .lines()
            .find_map(|l| {
                l.strip_prefix("stderr: ")?
                    .strip_suffix(" packets dropped by kernel")
            })
            .and_then(|n| n.trim().parse().ok());
        let bytes = fs::read(&self.path).map_err(LabError::io(format!(
            "reading the capture {}",
            self.path.display()
        )))?;
        let frames = read_pcap(&bytes)?;
        let add_addrs = frames.iter().flat_map(|f| add_addrs_in_frame(f)).collect();
        let state_segments = frames.iter().filter_map(|f| state_segment(f)).collect();
        Ok(CaptureReport {
            iface: self.iface.clone(),
            path: self.path.clone(),
            frames: frames.len(),
            dropped_by_kernel,
            add_addrs,
            state_segments,
        })
    }
}

/// What a capture saw.
#[derive(Clone, Debug)]
pub struct CaptureReport {
    /// Interface captured on.
    pub iface: String,
    /// The pcap file.
    pub path: PathBuf,
    /// Number of frames.
    pub frames: usize,
    /// tcpdump's "packets dropped by kernel" (`None` if it did not say). A non-zero value
    /// means the capture cannot be trusted to have seen everything.
    pub dropped_by_kernel: Option<u64>,
    /// Every ADD_ADDR option seen, in order.
    pub add_addrs: Vec<AddAddrSeen>,
    /// Every segment seen that carries RST or an MP_CAPABLE option, in order.
    pub state_segments: Vec<StateSegmentSeen>,
}

impl CaptureReport {
    /// ADD_ADDRs (not echoes) announcing `addr` with `id`.
    #[must_use]
    pub fn count_announcements(&self, id: u8, addr: IpAddr) -> usize {
        self.add_addrs
            .iter()
            .filter(|a| !a.echo && a.id == id && a.addr == addr)
            .count()
    }

    /// RST segments with sequence number `seq`.
    #[must_use]
    pub fn count_resets(&self, seq: u32) -> usize {
        self.state_segments
            .iter()
            .filter(|s| s.flags & TCP_RST != 0 && s.seq == seq)
            .count()
    }

    /// Segments whose MP_CAPABLE option carries `key` (as sender's or receiver's key).
    #[must_use]
    pub fn count_capable_with_key(&self, key: [u8; 8]) -> usize {
        self.state_segments
            .iter()
            .filter(|s| s.capable_keys.contains(&key))
            .count()
    }

    /// ADD_ADDRs (not echoes) announcing `addr`, whatever the id.
    #[must_use]
    pub fn count_announcing(&self, addr: IpAddr) -> usize {
        self.add_addrs
            .iter()
            .filter(|a| !a.echo && a.addr == addr)
            .count()
    }
}

/// One ADD_ADDR option found in a captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddAddrSeen {
    /// IP source of the segment.
    pub src: IpAddr,
    /// IP destination.
    pub dst: IpAddr,
    /// TCP source port.
    pub sport: u16,
    /// TCP destination port.
    pub dport: u16,
    /// Address ID.
    pub id: u8,
    /// Announced address.
    pub addr: IpAddr,
    /// Announced port, if present.
    pub port: Option<u16>,
    /// E bit (echo, no HMAC).
    pub echo: bool,
    /// Truncated HMAC, when E=0.
    pub hmac: Option<[u8; 8]>,
}

/// A captured segment that carries RST or an MP_CAPABLE option: what can end a subflow or (re)key
/// a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateSegmentSeen {
    /// IP source.
    pub src: IpAddr,
    /// IP destination.
    pub dst: IpAddr,
    /// TCP source port.
    pub sport: u16,
    /// TCP destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// TCP flags (the low byte: FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10, ...).
    pub flags: u8,
    /// The keys of its MP_CAPABLE options, in option order (sender's, then receiver's; none for
    /// a v1 SYN's option or without MP_CAPABLE).
    pub capable_keys: Vec<[u8; 8]>,
}

/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;

/// The frames of a classic pcap file (either byte order, µs or ns timestamps).
/// Only Ethernet captures are supported (tcpdump on a veth).
///
/// # Errors
/// On a bad magic number, a non-Ethernet link type, or a truncated record.
pub fn read_pcap(bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
    use pcap_file::{pcap::PcapReader, DataLink};
    let err = |detail: String| LabError::parse("pcap", detail);
    let mut reader = PcapReader::new(bytes)
        .map_err(|e| err(format!("not a pcap file (pcapng is not supported): {e}")))?;
    if reader.header().datalink != DataLink::ETHERNET {
        return Err(err("link type is not Ethernet".to_owned()));
    }
    let mut frames = Vec::new();
    // Raw records: pcap-file's checked ones refuse a frame longer than the snap length, which
    // is what a capture with `tcpdump -s N` holds.
    while let Some(packet) = reader.next_raw_packet() {
        let packet = packet.map_err(|e| err(format!("record {}: {e}", frames.len())))?;
        frames.push(packet.data.into_owned());
    }
    Ok(frames)
}

/// Every ADD_ADDR option in an Ethernet frame carrying IPv4 or IPv6 TCP (no VLAN, no IPv6
/// extension headers: the lab sends neither).
#[must_use]
pub fn add_addrs_in_frame(frame: &[u8]) -> Vec<AddAddrSeen> {
    parse_add_addrs(frame).unwrap_or_default()
}

fn parse_add_addrs(frame: &[u8]) -> Option<Vec<AddAddrSeen>> {
    let seg = parse_segment(frame)?;
    let found = tcp_options(seg.options)
        .filter(|opt| opt[0] == MPTCP_KIND)
        .filter_map(decode_add_addr)
        .map(|a| AddAddrSeen {
            src: seg.src,
            dst: seg.dst,
            sport: seg.sport,
            dport: seg.dport,
            ..a
        })
        .collect();
    Some(found)
}

/// The frame as a [`StateSegmentSeen`] when it is a TCP segment with RST or an MP_CAPABLE option
/// (same frames as [`add_addrs_in_frame`]).
#[must_use]
pub fn state_segment(frame: &[u8]) -> Option<StateSegmentSeen> {
    const SUBTYPE_MP_CAPABLE: u8 = 0;
    let seg = parse_segment(frame)?;
    let mut capable = false;
    let mut capable_keys = Vec::new();
    for opt in tcp_options(seg.options) {
        if opt[0] != MPTCP_KIND || opt.get(2).is_none_or(|b| b >> 4 != SUBTYPE_MP_CAPABLE) {
            continue;
        }
        capable = true;
        // Version 1: the sender's key from length 12 on, the receiver's from length 20 on.
        capable_keys.extend(
            [4..12, 12..20]
                .into_iter()
                .filter_map(|r| <[u8; 8]>::try_from(opt.get(r)?).ok()),
        );
    }
    (capable || seg.flags & TCP_RST != 0).then_some(StateSegmentSeen {
        src: seg.src,
        dst: seg.dst,
        sport: seg.sport,
        dport: seg.dport,
        seq: seg.seq,
        flags: seg.flags,
        capable_keys,
    })
}

/// MPTCP's TCP option kind.
const MPTCP_KIND: u8 = 30;

/// The TCP header fields the readers need, and the option bytes.
struct Segment<'a> {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    flags: u8,
    options: &'a [u8],
}

fn parse_segment(frame: &[u8]) -> Option<Segment<'_>> {
    const TCP: u8 = 6;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (src, dst, tcp) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            if *ip.get(9)? != TCP {
                return None;
            }
            let src = IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?));
            let dst = IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?));
            (src, dst, ip.get(ihl..)?)
        }
        0x86dd => {
            if *ip.get(6)? != TCP {
                return None;
            }
            let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(8..24)?).ok()?));
            let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip.get(24..40)?).ok()?));
            (src, dst, ip.get(40..)?)
        }
        _ => return None,
    };
    let doff = usize::from(tcp.get(12)? >> 4) * 4;
    Some(Segment {
        src,
        dst,
        sport: u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]),
        dport: u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]),
        seq: u32::from_be_bytes(<[u8; 4]>::try_from(tcp.get(4..8)?).ok()?),
        flags: *tcp.get(13)?,
        options: tcp.get(20..doff)?,
    })
}

pub use mptcp_lab::wire::tcp_options;

/// Decodes one kind-30 option if it is a v1 ADD_ADDR (length table of RFC 8684 §3.4.1).
fn decode_add_addr(opt: &[u8]) -> Option<AddAddrSeen> {
    const SUBTYPE_ADD_ADDR: u8 = 3;
    if opt.get(2)? >> 4 != SUBTYPE_ADD_ADDR {
        return None;
    }
    let echo = opt[2] & 1 == 1;
    // (address length, has port) from the option length and E.
    let (alen, has_port) = match (opt.len(), echo) {
        (16, false) | (8, true) => (4, false),
        (18, false) | (10, true) => (4, true),
        (28, false) | (20, true) => (16, false),
        (30, false) | (22, true) => (16, true),
        _ => return None,
    };
    let addr_bytes = opt.get(4..4 + alen)?;
    let addr = if alen == 4 {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(addr_bytes).ok()?))
    } else {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(addr_bytes).ok()?))
    };
    let port = has_port.then(|| u16::from_be_bytes([opt[4 + alen], opt[5 + alen]]));
    let hmac = (!echo)
        .then(|| <[u8; 8]>::try_from(&opt[opt.len() - 8..]).ok())
        .flatten();
    let unspecified = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    Some(AddAddrSeen {
        src: unspecified,
        dst: unspecified,
        sport: 0,
        dport: 0,
        id: opt[3],
        addr,
        port,
        echo,
        hmac,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forged-style frame: IPv4 pure ACK with NOP NOP TS and a 16-byte ADD_ADDR.
    fn frame() -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 68, 0, 0, 0x40, 0, 64, 6, 0, 0];
        ip.extend([198, 18, 1, 1, 198, 18, 1, 2]);
        let mut tcp = vec![
            0xa9, 0x4c, 0x27, 0x10, 0, 0, 0, 1, 0, 0, 0, 2, 0xc0, 0x10, 0, 63, 0, 0, 0, 0,
        ];
        tcp.extend([1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        tcp.extend([30, 16, 0x30, 9, 198, 18, 3, 66, 1, 2, 3, 4, 5, 6, 7, 8]);
        f.extend(ip);
        f.extend(tcp);
        f
    }

    #[test]
    fn finds_add_addr() {
        let found = add_addrs_in_frame(&frame());
        assert_eq!(found.len(), 1);
        let a = &found[0];
        assert_eq!((a.sport, a.dport, a.id, a.echo), (43340, 10000, 9, false));
        assert_eq!(a.addr, IpAddr::V4(Ipv4Addr::new(198, 18, 3, 66)));
        assert_eq!(a.src, IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)));
        assert_eq!(a.hmac, Some([1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(a.port, None);
    }

    #[test]
    fn echo_and_garbage() {
        let mut f = frame();
        // Turn it into an 8-byte echo: length 8, E=1, then NOP padding for the rest.
        let opt = f.len() - 16;
        f[opt + 1] = 8;
        f[opt + 2] = 0x31;
        for b in &mut f[opt + 8..] {
            *b = 1;
        }
        let found = add_addrs_in_frame(&f);
        assert_eq!(found.len(), 1);
        assert!(found[0].echo && found[0].hmac.is_none());
        assert!(add_addrs_in_frame(&f[..30]).is_empty());
        assert!(add_addrs_in_frame(&[]).is_empty());
    }

    #[test]
    fn finds_resets_and_capable_keys() {
        let mut f = frame();
        assert!(state_segment(&f).is_none(), "an ADD_ADDR is neither");
        // The ADD_ADDR becomes an MP_CAPABLE third ACK's first 16 bytes: too short for the
        // receiver's key, so only the sender's is read.
        let opt = f.len() - 16;
        f[opt + 2] = 0x01;
        let seen = state_segment(&f).unwrap();
        assert_eq!(seen.capable_keys, vec![[198, 18, 3, 66, 1, 2, 3, 4]]);
        assert_eq!((seen.seq, seen.flags), (1, 0x10));
        // A blind RST: no options at all (data offset 5).
        let mut rst = frame()[..14 + 20 + 20].to_vec();
        rst[14 + 20 + 12] = 0x50;
        rst[14 + 20 + 13] = TCP_RST;
        let seen = state_segment(&rst).unwrap();
        assert!(seen.capable_keys.is_empty());
        let report = CaptureReport {
            iface: "sveth1".into(),
            path: PathBuf::new(),
            frames: 1,
            dropped_by_kernel: Some(0),
            add_addrs: Vec::new(),
            state_segments: vec![seen],
        };
        assert_eq!(report.count_resets(1), 1);
        assert_eq!(report.count_resets(2), 0);
        assert_eq!(
            report.count_capable_with_key([198, 18, 3, 66, 1, 2, 3, 4]),
            0
        );
    }

    #[test]
    fn pcap_roundtrip() {
        let f = frame();
        let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        pcap.extend([0u8; 8]);
        pcap.extend(262_144u32.to_le_bytes());
        pcap.extend(1u32.to_le_bytes());
        for _ in 0..2 {
            pcap.extend([0u8; 8]);
            let len = u32::try_from(f.len()).unwrap();
            pcap.extend(len.to_le_bytes());
            pcap.extend(len.to_le_bytes());
            pcap.extend(&f);
        }
        // A record cut at the snap length: its original length is larger than the snap length.
        pcap.extend([0u8; 8]);
        pcap.extend(u32::try_from(f.len()).unwrap().to_le_bytes());
        pcap.extend(300_000u32.to_le_bytes());
        pcap.extend(&f);
        let frames = read_pcap(&pcap).unwrap();
        assert_eq!(frames, vec![f.clone(), f.clone(), f]);
        assert!(read_pcap(&pcap[..pcap.len() - 1]).is_err());
        assert!(read_pcap(b"not a pcap at all, really not").is_err());
    }
}
