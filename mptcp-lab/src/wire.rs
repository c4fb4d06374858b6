//! Raw packets for the forgers: a packet socket that sniffs or sends whole Ethernet frames on one
//! interface (`AF_PACKET`), a raw IPv4 socket that sends TCP segments (the kernel adds the IP
//! header), and [`Sniffed`], what the forgers read from an IPv4 TCP frame. Frames are built with
//! the shared frame builder ([`ipv4_frame`], over `mptcp_common::testing::Frame`) and parsed
//! with the fast path's own parser (`mptcp_common::packet`).

use std::{
    ffi::CString,
    io, mem,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use mptcp_common::{
    packet::{
        parse_tcp, read_capable_keys, read_join, walk_options, Join, ETH_P_IP, TCPOPT_EOL,
        TCPOPT_NOP,
    },
    testing::Frame,
};

/// `ETH_P_ALL`: every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// The TCP timestamps option (kind 8, length 10).
const TCPOPT_TIMESTAMP: u8 = 8;
/// A burst of GSO frames must not overflow the sniffer's queue while it parses.
const SNIFF_RCVBUF: libc::c_int = 64 << 20;

/// `N` random bytes from the kernel (`getrandom(2)`).
///
/// # Panics
/// When the kernel has no randomness to give (never on a booted Linux).
#[must_use]
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: writes at most N - filled bytes into the rest of `out`.
        let n = unsafe { libc::getrandom(out[filled..].as_mut_ptr().cast(), N - filled, 0) };
        assert!(n > 0, "getrandom: {}", io::Error::last_os_error());
        filled += usize::try_from(n).expect("positive");
    }
    out
}

/// A random `u32`.
#[must_use]
pub fn random_u32() -> u32 {
    u32::from_be_bytes(random_bytes())
}

/// The index of interface `iface` in the calling thread's network namespace.
///
/// # Errors
/// When there is no such interface.
pub fn ifindex(iface: &str) -> io::Result<i32> {
    let name = CString::new(iface).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {iface}: {}", io::Error::last_os_error()),
        ));
    }
    i32::try_from(index).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(err.kind(), format!("{what}: {err}")));
    }
    Ok(rc)
}

/// An `AF_PACKET` socket on one interface (or all of them): sniffs frames in both directions,
/// or sends whole frames.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    fn open(protocol: u16, iface: Option<&str>) -> io::Result<PacketSocket> {
        let proto_be = protocol.to_be();
        // SAFETY: plain socket(2) call.
        let fd = check(
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto_be)) },
            "socket(AF_PACKET)",
        )?;
        // SAFETY: the kernel just returned this descriptor to us.
        let sock = PacketSocket {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        };
        if let Some(iface) = iface {
            // SAFETY: sockaddr_ll is plain data; zero is a valid value for every field.
            let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
            addr.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET fits");
            addr.sll_protocol = proto_be;
            addr.sll_ifindex = ifindex(iface)?;
            // SAFETY: `addr` is a valid sockaddr_ll of the size given.
            check(
                unsafe {
                    libc::bind(
                        sock.fd.as_raw_fd(),
                        (&raw const addr).cast(),
                        u32::try_from(mem::size_of::<libc::sockaddr_ll>()).expect("small"),
                    )
                },
                "bind(AF_PACKET)",
            )?;
        }
        Ok(sock)
    }

    /// A sniffer of every frame on `iface` (of every interface of the namespace when `None`),
    /// both directions, with a 64 MiB queue. Reads time out after `poll` so a sniffing thread
    /// can notice it should stop.
    ///
    /// # Errors
    /// When the socket cannot be opened (not root, no such interface).
    pub fn sniffer(iface: Option<&str>, poll: Duration) -> io::Result<PacketSocket> {
        let sock = PacketSocket::open(ETH_P_ALL, iface)?;
        // SO_RCVBUFFORCE goes past rmem_max (root); SO_RCVBUF is the fallback.
        if sock.set_int(libc::SO_RCVBUFFORCE, SNIFF_RCVBUF).is_err() {
            sock.set_int(libc::SO_RCVBUF, SNIFF_RCVBUF)?;
        }
        let timeout = libc::timeval {
            tv_sec: libc::time_t::try_from(poll.as_secs()).unwrap_or(1),
            tv_usec: libc::suseconds_t::from(poll.subsec_micros()),
        };
        // SAFETY: `timeout` is a valid timeval of the size given.
        check(
            unsafe {
                libc::setsockopt(
                    sock.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const timeout).cast(),
                    u32::try_from(mem::size_of::<libc::timeval>()).expect("small"),
                )
            },
            "SO_RCVTIMEO",
        )?;
        Ok(sock)
    }

    /// A socket that sends whole Ethernet frames out of `iface`.
    ///
    /// # Errors
    /// When the socket cannot be opened (not root, no such interface).
    pub fn sender(iface: &str) -> io::Result<PacketSocket> {
        PacketSocket::open(0, Some(iface))
    }

    fn set_int(&self, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: `value` is a valid c_int of the size given.
        check(
            unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&raw const value).cast(),
                    u32::try_from(mem::size_of::<libc::c_int>()).expect("small"),
                )
            },
            "setsockopt",
        )
        .map(drop)
    }

    /// Reads the next frame into `buf` (truncated to its size): `(bytes copied, length on the
    /// wire)`, or `None` when the read timed out.
    ///
    /// # Errors
    /// On any other socket error.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, usize)>> {
        // SAFETY: recv writes at most buf.len() bytes into `buf`.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(err),
            };
        }
        let wire = usize::try_from(n).expect("not negative");
        Ok(Some((wire.min(buf.len()), wire)))
    }

    /// Sends one whole frame.
    ///
    /// # Errors
    /// When the kernel refuses it.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: send reads frame.len() bytes of `frame`.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        check(i32::try_from(n).unwrap_or(-1), "send(AF_PACKET)").map(drop)
    }
}

/// Sends each TCP segment (header, options, payload, checksum included) to `dst` through a raw
/// IPv4 socket: the kernel of the calling thread's namespace adds the IP header and routes it.
///
/// # Errors
/// When the socket cannot be opened (not root) or a send fails.
pub fn send_tcp_segments(dst: Ipv4Addr, segments: &[Vec<u8>]) -> io::Result<()> {
    // SAFETY: plain socket(2) call.
    let fd = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) },
        "socket(AF_INET, SOCK_RAW)",
    )?;
    // SAFETY: the kernel just returned this descriptor to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_in is plain data; zero is a valid value for every field.
    let mut addr: libc::sockaddr_in = unsafe { mem::zeroed() };
    addr.sin_family = libc::sa_family_t::try_from(libc::AF_INET).expect("AF_INET fits");
    addr.sin_addr.s_addr = u32::from(dst).to_be();
    for segment in segments {
        // SAFETY: `segment` and `addr` are valid for the sizes given.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                segment.as_ptr().cast(),
                segment.len(),
                0,
                (&raw const addr).cast(),
                u32::try_from(mem::size_of::<libc::sockaddr_in>()).expect("small"),
            )
        };
        check(i32::try_from(n).unwrap_or(-1), "sendto(SOCK_RAW)")?;
    }
    Ok(())
}

/// `NOP NOP TS`, as Linux writes the timestamps option.
#[must_use]
pub fn timestamps_option(tsval: u32, tsecr: u32) -> Vec<u8> {
    let mut o = vec![TCPOPT_NOP, TCPOPT_NOP, TCPOPT_TIMESTAMP, 10];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&tsecr.to_be_bytes());
    o
}

/// The addresses and TCP header of an IPv4 segment to build with [`ipv4_frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Ethernet destination and source.
    pub macs: ([u8; 6], [u8; 6]),
    /// Source address and port.
    pub src: (Ipv4Addr, u16),
    /// Destination address and port.
    pub dst: (Ipv4Addr, u16),
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// TCP flags.
    pub flags: u8,
    /// Window.
    pub window: u16,
}

/// Ethernet + IPv4 (DF, TTL 64) + TCP with `options` (NOP-padded) and `payload`, checksums
/// filled: a frame a Linux receiver accepts.
#[must_use]
pub fn ipv4_frame(seg: &Segment, options: &[u8], payload: &[u8]) -> Frame {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&seg.src.0.octets());
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&seg.dst.0.octets());
    Frame {
        macs: seg.macs,
        src,
        dst,
        ports: (seg.src.1, seg.dst.1),
        flags: seg.flags,
        seq: seg.seq,
        ack: seg.ack,
        window: seg.window,
        payload: payload.to_vec(),
        ..Frame::v4(options)
    }
}

/// What the forgers read from a sniffed IPv4 TCP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sniffed {
    /// Ethernet source.
    pub mac_src: [u8; 6],
    /// Ethernet destination.
    pub mac_dst: [u8; 6],
    /// Source address and port.
    pub src: (Ipv4Addr, u16),
    /// Destination address and port.
    pub dst: (Ipv4Addr, u16),
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// TCP flags.
    pub flags: u8,
    /// Window.
    pub window: u16,
    /// Payload bytes (from the IP total length; the frame itself may be truncated).
    pub payload: u32,
    /// `(TSval, TSecr)` of the timestamps option.
    pub timestamps: Option<(u32, u32)>,
    /// Both keys of a key-carrying MP_CAPABLE: (sender's, receiver's).
    pub capable_keys: Option<([u8; 8], [u8; 8])>,
    /// The MP_JOIN, when its length fits the segment's flags.
    pub join: Option<Join>,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The options (kind, length and body) in the option bytes of a TCP header; NOPs are skipped,
/// and the walk ends at End of Option List or at an option whose length does not fit.
pub fn tcp_options(mut opts: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || loop {
        match *opts.first()? {
            TCPOPT_EOL => return None,
            TCPOPT_NOP => opts = &opts[1..],
            _ => {
                let len = usize::from(*opts.get(1)?);
                if len < 2 || len > opts.len() {
                    return None;
                }
                let (opt, rest) = opts.split_at(len);
                opts = rest;
                return Some(opt);
            }
        }
    })
}

/// The TSval and TSecr of the timestamps option in `options`, if any.
fn find_timestamps(options: &[u8]) -> Option<(u32, u32)> {
    tcp_options(options)
        .find(|o| o[0] == TCPOPT_TIMESTAMP && o.len() == 10)
        .and_then(|o| Some((be32(o, 2)?, be32(o, 6)?)))
}

/// True if sequence number `a` is after `b` (mod 2^32).
#[must_use]
pub fn seq_after(a: u32, b: u32) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 0x8000_0000
}

/// The later of two sequence numbers (`current` may be unknown yet).
#[must_use]
pub fn later(current: Option<u32>, candidate: u32) -> Option<u32> {
    match current {
        Some(c) if !seq_after(candidate, c) => Some(c),
        _ => Some(candidate),
    }
}

/// Reads an untagged Ethernet + IPv4 + TCP frame, `wire_len` bytes long on the wire (`frame` may
/// hold only its start). `None` for anything else.
#[must_use]
pub fn sniffed(frame: &[u8], wire_len: usize) -> Option<Sniffed> {
    if be16(frame, 12)? != ETH_P_IP {
        return None;
    }
    let seg = parse_tcp(frame).ok()?;
    let tcp = seg.opts_start - 20;
    let ip = 14;
    let ihl = tcp - ip;
    let doff = seg.opts_end - tcp;
    // GSO frames may carry 0 as the total length.
    let total = match usize::from(be16(frame, ip + 2)?) {
        0 => wire_len.saturating_sub(ip),
        n => n,
    };
    let opts = walk_options(frame, &seg);
    let addr = |b: [u8; 16]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    Some(Sniffed {
        mac_dst: frame.get(0..6)?.try_into().ok()?,
        mac_src: frame.get(6..12)?.try_into().ok()?,
        src: (addr(seg.flow.saddr), u16::from_be_bytes(seg.flow.sport)),
        dst: (addr(seg.flow.daddr), u16::from_be_bytes(seg.flow.dport)),
        seq: be32(frame, tcp + 4)?,
        ack: be32(frame, tcp + 8)?,
        flags: seg.flags,
        window: be16(frame, tcp + 14)?,
        payload: u32::try_from(total.saturating_sub(ihl + doff)).ok()?,
        timestamps: find_timestamps(frame.get(seg.opts_start..seg.opts_end)?),
        capable_keys: opts.capable_keys.and_then(|o| read_capable_keys(frame, o)),
        join: opts.join.and_then(|o| read_join(frame, o)),
    })
}

/// Parses `aa:bb:cc:dd:ee:ff`.
///
/// # Errors
/// When it is not six hex bytes.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("MAC address {text}: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("MAC address {text}: not six bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mptcp_frames::{join_synack, mpc_third_ack, KEY_A, KEY_B};

    fn segment(flags: u8) -> Segment {
        Segment {
            macs: ([2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 1, 1]),
            src: (Ipv4Addr::new(198, 18, 1, 1), 40000),
            dst: (Ipv4Addr::new(198, 18, 1, 2), 10000),
            seq: 0x0102_0304,
            ack: 0x0506_0708,
            flags,
            window: 502,
        }
    }

    #[test]
    fn a_built_frame_reads_back_with_checksums_that_verify() {
        let options = [timestamps_option(7, 9), mpc_third_ack(&KEY_A, &KEY_B)].concat();
        let bytes = ipv4_frame(&segment(0x10), &options, b"abc").wire_bytes();
        let got = sniffed(&bytes, bytes.len()).expect("an IPv4 TCP frame");
        assert_eq!(got.mac_src, [2, 0, 0, 0, 1, 1]);
        assert_eq!(got.mac_dst, [2, 0, 0, 0, 1, 2]);
        assert_eq!(got.src, (Ipv4Addr::new(198, 18, 1, 1), 40000));
        assert_eq!(got.dst, (Ipv4Addr::new(198, 18, 1, 2), 10000));
        assert_eq!(
            (got.seq, got.ack, got.window),
            (0x0102_0304, 0x0506_0708, 502)
        );
        assert_eq!((got.flags, got.payload), (0x10, 3));
        assert_eq!(got.timestamps, Some((7, 9)));
        assert_eq!(got.capable_keys, Some((KEY_A, KEY_B)));
        assert_eq!(got.join, None);
        // A checksum over data that includes its own checksum sums to zero.
        assert_eq!(
            mptcp_common::testing::internet_checksum(&[&bytes[14..34]]),
            0
        );
        let mut pseudo = bytes[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, u8::try_from(bytes.len() - 34).unwrap()]);
        assert_eq!(
            mptcp_common::testing::internet_checksum(&[&pseudo, &bytes[34..]]),
            0
        );
        // The raw-socket segment is the frame's TCP part.
        let frame = ipv4_frame(&segment(0x10), &options, b"abc");
        assert_eq!(frame.tcp_segment(), bytes[34..]);
    }

    #[test]
    fn a_join_synack_and_a_truncated_gso_frame_read_back() {
        let option = join_synack(3, &KEY_B, &KEY_A, &[1, 2, 3, 4], &[5, 6, 7, 8]);
        let bytes = ipv4_frame(&segment(0x12), &option, &[]).wire_bytes();
        let got = sniffed(&bytes, bytes.len()).unwrap();
        assert!(matches!(
            got.join,
            Some(Join::SynAck {
                addr_id: 3,
                nonce: [1, 2, 3, 4],
                ..
            })
        ));
        // A GSO frame: total length 0, 3000 bytes of payload on the wire, 256 bytes captured.
        let mut big = ipv4_frame(&segment(0x10), &timestamps_option(1, 2), &[0; 3000]).wire_bytes();
        let wire = big.len();
        big[16..18].copy_from_slice(&[0, 0]);
        big.truncate(256);
        assert_eq!(sniffed(&big, wire).unwrap().payload, 3000);
        assert_eq!(sniffed(&bytes[..30], bytes.len()), None);
    }

    #[test]
    fn sequence_space_wraps() {
        assert!(seq_after(5, u32::MAX - 5));
        assert_eq!(later(Some(u32::MAX - 1), 3), Some(3));
        assert_eq!(later(Some(3), u32::MAX - 1), Some(3));
    }

    #[test]
    fn options_walk_skips_nops_and_stops_at_eol_or_a_bad_length() {
        let opts = [1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9, 30, 3, 0x10, 0, 30, 4];
        let walked: Vec<&[u8]> = tcp_options(&opts).collect();
        assert_eq!(walked, [&opts[2..12], &opts[12..15]]);
        assert_eq!(find_timestamps(&opts), Some((7, 9)));
        assert_eq!(tcp_options(&[2, 1, 0]).count(), 0);
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:00:00:00:01:0a"), Ok([2, 0, 0, 0, 1, 10]));
        assert!(parse_mac("02:00:00:00:01").is_err());
        assert!(parse_mac("zz:00:00:00:01:02").is_err());
    }
}
