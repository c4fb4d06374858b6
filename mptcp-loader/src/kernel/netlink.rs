//! The little netlink aya does not offer: which XDP program an interface runs and in which
//! mode (`IFLA_XDP`), for `status` and for telling who holds an interface; the `cls_bpf`
//! filters on an interface's clsact egress hook (`RTM_GETTFILTER`), to find the egress filter
//! an earlier run attached on a kernel without TCX; removing `mptcp_tc_egress` filters (ours in
//! clsact mode, or leftovers of loader versions before the TCX links), which outlive the
//! process that added them; and whether a TCP socket with a given 4-tuple exists (`sock_diag`),
//! for the closed-subflow check. Hand-written: each is one request over the same small socket
//! wrapper, less than a netlink crate's dependency tree.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::programs::{tc::qdisc_detach_program, TcAttachType, TcError};
use mptcp_common::maps::PROG_TC_EGRESS;

use crate::kernel::error::KernelError;

/// `struct nlmsghdr` size.
const NLMSG_HDR_LEN: usize = 16;
/// `struct ifinfomsg` size.
const IFINFOMSG_LEN: usize = 16;
/// `IFLA_XDP` (nested) and the attributes inside it.
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
/// Attribute type bits that are flags, not part of the type (`NLA_F_NESTED`, `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// How an XDP program is attached (`XDP_ATTACHED_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// In the driver.
    Native,
    /// Generic (skb) XDP.
    Skb,
    /// Offloaded to the NIC.
    Hardware,
    /// Several programs in several modes.
    Multi,
}

impl XdpAttachMode {
    fn from_attached(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Native),
            2 => Some(Self::Skb),
            3 => Some(Self::Hardware),
            4 => Some(Self::Multi),
            _ => None,
        }
    }

    /// `native`, `skb`, `hw`, `multi`.
    #[must_use]
    pub const fn short(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
            Self::Hardware => "hw",
            Self::Multi => "multi",
        }
    }
}

/// The XDP program an interface runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpAttached {
    /// Its program id.
    pub prog_id: u32,
    /// Its mode.
    pub mode: XdpAttachMode,
}

/// The XDP program attached to interface `ifindex` of this network namespace, if any.
///
/// # Errors
/// When netlink fails (e.g. no such interface: `ENODEV`).
pub fn xdp_attached(ifindex: u32) -> io::Result<Option<XdpAttached>> {
    let socket = Netlink::open(libc::NETLINK_ROUTE)?;
    let mut body = vec![0u8; IFINFOMSG_LEN];
    body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    let seq = 3;
    let request = encode(
        libc::RTM_GETLINK,
        request_flags(libc::NLM_F_REQUEST | libc::NLM_F_ACK),
        seq,
        &body,
    );
    let replies = socket.transact(&request, seq)?;
    Ok(replies
        .iter()
        .find_map(|payload| xdp_of_link(payload, ifindex)))
}

/// `IFLA_XDP_FD`, `IFLA_XDP_FLAGS`, `IFLA_XDP_EXPECTED_FD` (inside `IFLA_XDP`).
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_EXPECTED_FD: u16 = 8;
/// `NLA_F_NESTED`.
const NLA_F_NESTED: u16 = 1 << 15;
/// `XDP_FLAGS_UPDATE_IF_NOEXIST`: fail with `EBUSY` if the interface has a program.
pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
/// `XDP_FLAGS_SKB_MODE`.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `XDP_FLAGS_REPLACE`: replace only the program given as expected (`IFLA_XDP_EXPECTED_FD`).
pub const XDP_FLAGS_REPLACE: u32 = 1 << 4;

/// Attaches program `fd` (-1: none) to interface `ifindex` through netlink (`RTM_SETLINK`,
/// `IFLA_XDP`) with `flags`; with `expected`, only if the interface runs exactly that program
/// (`XDP_FLAGS_REPLACE`), which makes the swap atomic: the interface never runs neither.
/// libxdp attaches its dispatchers this way (not through a bpf_link, which no one else could
/// replace).
///
/// # Errors
/// The kernel's (`EEXIST`/`EBUSY`: taken, or not the expected program).
pub fn set_xdp(ifindex: u32, fd: i32, flags: u32, expected: Option<i32>) -> io::Result<()> {
    let socket = Netlink::open(libc::NETLINK_ROUTE)?;
    let seq = 4;
    socket
        .transact(&set_xdp_request(ifindex, fd, flags, expected, seq), seq)
        .map(drop)
}

/// The `RTM_SETLINK` request of [`set_xdp`].
fn set_xdp_request(ifindex: u32, fd: i32, flags: u32, expected: Option<i32>, seq: u32) -> Vec<u8> {
    let attribute = |kind: u16, value: &[u8]| {
        let len = u16::try_from(4 + value.len()).expect("small attribute");
        let mut out = Vec::with_capacity(usize::from(len).next_multiple_of(4));
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
        out
    };
    let flags = if expected.is_some() {
        flags | XDP_FLAGS_REPLACE
    } else {
        flags
    };
    let mut xdp = attribute(IFLA_XDP_FD, &fd.to_ne_bytes());
    xdp.extend(attribute(IFLA_XDP_FLAGS, &flags.to_ne_bytes()));
    if let Some(expected) = expected {
        xdp.extend(attribute(IFLA_XDP_EXPECTED_FD, &expected.to_ne_bytes()));
    }
    let mut body = vec![0u8; IFINFOMSG_LEN];
    body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    body.extend(attribute(IFLA_XDP | NLA_F_NESTED, &xdp));
    encode(
        libc::RTM_SETLINK,
        request_flags(libc::NLM_F_REQUEST | libc::NLM_F_ACK),
        seq,
        &body,
    )
}

/// The `IFLA_XDP` of an `RTM_NEWLINK` payload (`ifinfomsg` then attributes) for `ifindex`.
fn xdp_of_link(payload: &[u8], ifindex: u32) -> Option<XdpAttached> {
    if payload.len() < IFINFOMSG_LEN || u32_at(payload, 4) != ifindex {
        return None;
    }
    let xdp = attributes(&payload[IFINFOMSG_LEN..])
        .find(|(kind, _)| *kind == IFLA_XDP)?
        .1;
    let mut mode = None;
    let mut prog_id = None;
    for (kind, value) in attributes(xdp) {
        match kind {
            IFLA_XDP_ATTACHED => {
                mode = value
                    .first()
                    .copied()
                    .and_then(XdpAttachMode::from_attached);
            }
            IFLA_XDP_PROG_ID if value.len() >= 4 => prog_id = Some(u32_at(value, 0)),
            _ => {}
        }
    }
    Some(XdpAttached {
        prog_id: prog_id?,
        mode: mode?,
    })
}

/// The (type, value) attributes of a netlink attribute stream; stops at a malformed one.
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let value = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((kind, value))
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// `struct tcmsg` size.
const TCMSG_LEN: usize = 20;
/// `RTM_GETTFILTER`.
const RTM_GETTFILTER: u16 = 46;
/// `TCA_KIND`, `TCA_OPTIONS`.
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
/// `TCA_BPF_NAME`, `TCA_BPF_ID` (inside `TCA_OPTIONS` of a `bpf` filter).
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_ID: u16 = 11;
/// `tcm_parent` of the clsact egress hook: `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)`.
pub const TC_PARENT_EGRESS: u32 = 0xffff_fff3;

/// A `cls_bpf` filter on an interface's clsact egress hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpfFilter {
    /// Its priority (`tc filter ... prio`).
    pub priority: u16,
    /// Its handle.
    pub handle: u32,
    /// The name its loader gave the program (`TCA_BPF_NAME`).
    pub name: String,
    /// The id of the program it runs.
    pub prog_id: u32,
}

/// The `cls_bpf` filters on the clsact egress hook of interface `ifindex` (none without a
/// clsact qdisc).
///
/// # Errors
/// When netlink fails.
pub fn egress_bpf_filters(ifindex: u32) -> io::Result<Vec<BpfFilter>> {
    let socket = Netlink::open(libc::NETLINK_ROUTE)?;
    let mut body = vec![0u8; TCMSG_LEN];
    body[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    body[12..16].copy_from_slice(&TC_PARENT_EGRESS.to_ne_bytes());
    let seq = 7;
    let request = encode(
        RTM_GETTFILTER,
        request_flags(libc::NLM_F_REQUEST | libc::NLM_F_DUMP),
        seq,
        &body,
    );
    match socket.transact(&request, seq) {
        Ok(replies) => Ok(replies.iter().filter_map(|r| bpf_filter_of(r)).collect()),
        // No such interface or no clsact qdisc: no filter.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The `bpf` filter an `RTM_NEWTFILTER` payload (`tcmsg` then attributes) describes, if it is
/// one (a dump also lists each priority's classifier itself, with handle 0).
fn bpf_filter_of(payload: &[u8]) -> Option<BpfFilter> {
    if payload.len() < TCMSG_LEN {
        return None;
    }
    let handle = u32_at(payload, 8);
    let info = u32_at(payload, 16);
    let mut kind = None;
    let mut options = None;
    for (attr, value) in attributes(&payload[TCMSG_LEN..]) {
        match attr {
            TCA_KIND => kind = Some(value),
            TCA_OPTIONS => options = Some(value),
            _ => {}
        }
    }
    if handle == 0 || kind? != b"bpf\0" {
        return None;
    }
    let mut name = None;
    let mut prog_id = None;
    for (attr, value) in attributes(options?) {
        match attr {
            TCA_BPF_NAME => {
                let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
                name = Some(String::from_utf8_lossy(&value[..end]).into_owned());
            }
            TCA_BPF_ID if value.len() >= 4 => prog_id = Some(u32_at(value, 0)),
            _ => {}
        }
    }
    Some(BpfFilter {
        priority: u16::try_from(info >> 16).expect("16 bits"),
        handle,
        name: name.unwrap_or_default(),
        prog_id: prog_id?,
    })
}

/// Removes `mptcp_tc_egress` netlink filters from `iface`'s egress: the one a run attached in
/// clsact mode (kernels without TCX), or leftovers of a loader version that attached the egress
/// program as a `cls_bpf` filter (they outlive the process). Returns whether there were any.
///
/// # Errors
/// When listing or deleting filters fails.
pub fn remove_stale_filters(iface: &str) -> Result<bool, KernelError> {
    match qdisc_detach_program(iface, TcAttachType::Egress, PROG_TC_EGRESS) {
        Ok(()) => Ok(true),
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        // No clsact qdisc at all: nothing can be attached to it.
        Err(TcError::NetlinkError(e))
            if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) =>
        {
            Ok(false)
        }
        Err(source) => Err(KernelError::Clsact {
            iface: iface.to_owned(),
            source,
        }),
    }
}

#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "netlink flag bits"
)]
const fn request_flags(flags: libc::c_int) -> u16 {
    flags as u16
}

/// One rtnetlink request: `nlmsghdr`, then `body`.
fn encode(msg_type: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let total = u32::try_from(NLMSG_HDR_LEN + body.len()).expect("short message");
    let mut message = Vec::with_capacity(total as usize);
    message.extend_from_slice(&total.to_ne_bytes());
    message.extend_from_slice(&msg_type.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    message.extend_from_slice(body);
    message
}

/// A netlink message as received: type, sequence number, payload.
#[derive(Debug, PartialEq, Eq)]
struct Received<'a> {
    msg_type: u16,
    seq: u32,
    payload: &'a [u8],
}

/// Splits a receive buffer into messages; stops at the first malformed header.
fn split_messages(mut buf: &[u8]) -> Vec<Received<'_>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDR_LEN || len > buf.len() {
            break;
        }
        out.push(Received {
            msg_type: u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes")),
            seq: u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes")),
            payload: &buf[NLMSG_HDR_LEN..len],
        });
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// The (negative) error code at the start of an `NLMSG_ERROR` / `NLMSG_DONE` payload.
fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(0..4)
        .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

/// A netlink socket of one protocol (`NETLINK_ROUTE`, `NETLINK_SOCK_DIAG`).
struct Netlink {
    fd: OwnedFd,
}

impl Netlink {
    fn open(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // The kernel answers at once; the timeout only guards against a reply that never comes.
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: valid option pointer and length.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                u32::try_from(size_of::<libc::timeval>()).expect("small"),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Sends `request` and reads until its ACK or the end of its dump; returns the payloads of
    /// the data messages received (dump entries).
    fn transact(&self, request: &[u8], seq: u32) -> io::Result<Vec<Vec<u8>>> {
        // SAFETY: request is a valid buffer of the given length.
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 64 * 1024];
        let mut entries = Vec::new();
        loop {
            // SAFETY: buf is a valid, writable buffer of the given length.
            let got =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
            for message in split_messages(&buf[..got]) {
                if message.seq != seq {
                    continue;
                }
                match i32::from(message.msg_type) {
                    libc::NLMSG_ERROR | libc::NLMSG_DONE => {
                        let code = error_code(message.payload);
                        return if code < 0 {
                            Err(io::Error::from_raw_os_error(-code))
                        } else {
                            Ok(entries)
                        };
                    }
                    _ => entries.push(message.payload.to_vec()),
                }
            }
        }
    }
}

/// `SOCK_DIAG_BY_FAMILY`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `struct inet_diag_req_v2` size.
const INET_DIAG_REQ_V2_LEN: usize = 56;

/// The `inet_diag_req_v2` that looks up the one TCP socket whose own end is `local`:`port`
/// and whose peer is `peer`:`peer_port` (addresses as in `FlowKey`: IPv4 in bytes 0..4; ports
/// in network order), in any state.
fn tcp_lookup_request(
    v4: bool,
    local: &[u8; 16],
    port: [u8; 2],
    peer: &[u8; 16],
    peer_port: [u8; 2],
) -> Vec<u8> {
    let family = if v4 { libc::AF_INET } else { libc::AF_INET6 };
    let mut body = Vec::with_capacity(INET_DIAG_REQ_V2_LEN);
    body.push(u8::try_from(family).expect("small"));
    body.push(u8::try_from(libc::IPPROTO_TCP).expect("small"));
    body.extend_from_slice(&[0, 0]); // extensions, pad
    body.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    body.extend_from_slice(&port); // inet_diag_sockid: sport, dport, src, dst (network order)
    body.extend_from_slice(&peer_port);
    body.extend_from_slice(local);
    body.extend_from_slice(peer);
    body.extend_from_slice(&0u32.to_ne_bytes()); // any interface
    body.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    debug_assert_eq!(body.len(), INET_DIAG_REQ_V2_LEN);
    body
}

/// The TCP state (`TCP_*` of `include/net/tcp_states.h`) of the socket in this network
/// namespace whose own end is `local`:`port` and whose peer is `peer`:`peer_port`; `None` when
/// there is none. Without an exact match the kernel may answer with the listener of `port`.
///
/// # Errors
/// When netlink fails otherwise.
pub fn tcp_socket_state(
    v4: bool,
    local: &[u8; 16],
    port: [u8; 2],
    peer: &[u8; 16],
    peer_port: [u8; 2],
) -> io::Result<Option<u8>> {
    let socket = Netlink::open(libc::NETLINK_SOCK_DIAG)?;
    let seq = 5;
    let body = tcp_lookup_request(v4, local, port, peer, peer_port);
    let request = encode(
        SOCK_DIAG_BY_FAMILY,
        request_flags(libc::NLM_F_REQUEST),
        seq,
        &body,
    );
    match socket.transact(&request, seq) {
        // `inet_diag_msg`: family, then state.
        Ok(replies) => Ok(replies.iter().find_map(|r| r.get(1).copied())),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The IPv4 and IPv6 addresses of this network namespace's interfaces, as (`FAMILY_V4` or
/// `FAMILY_V6`, address laid out as in `FlowKey`). Through `getifaddrs(3)`, which std lacks.
///
/// # Errors
/// When `getifaddrs` fails.
pub fn local_addresses() -> io::Result<Vec<(u8, [u8; 16])>> {
    use mptcp_common::maps::{FAMILY_V4, FAMILY_V6};
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below.
    if unsafe { libc::getifaddrs(&raw mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned; its address, when set, is a sockaddr
        // of the family it names.
        unsafe {
            let addr = (*cursor).ifa_addr;
            if !addr.is_null() {
                let mut bytes = [0u8; 16];
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        #[allow(
                            clippy::cast_ptr_alignment,
                            reason = "getifaddrs stores each address as its family's own struct"
                        )]
                        let sin = addr.cast::<libc::sockaddr_in>();
                        bytes[..4].copy_from_slice(&(*sin).sin_addr.s_addr.to_ne_bytes());
                        out.push((FAMILY_V4, bytes));
                    }
                    libc::AF_INET6 => {
                        #[allow(
                            clippy::cast_ptr_alignment,
                            reason = "getifaddrs stores each address as its family's own struct"
                        )]
                        let sin6 = addr.cast::<libc::sockaddr_in6>();
                        bytes.copy_from_slice(&(*sin6).sin6_addr.s6_addr);
                        out.push((FAMILY_V6, bytes));
                    }
                    _ => {}
                }
            }
            cursor = (*cursor).ifa_next;
        }
    }
    // SAFETY: the head getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    fn newlink(ifindex: u32, xdp: Option<(u8, u32)>) -> Vec<u8> {
        let mut p = vec![0u8; IFINFOMSG_LEN];
        p[4..8].copy_from_slice(&ifindex.to_ne_bytes());
        p.extend(attribute(3, b"veth0\0")); // IFLA_IFNAME first
        if let Some((attached, prog_id)) = xdp {
            let mut nested = attribute(IFLA_XDP_ATTACHED, &[attached]);
            nested.extend(attribute(IFLA_XDP_PROG_ID, &prog_id.to_ne_bytes()));
            p.extend(attribute(IFLA_XDP | 0x8000, &nested)); // NLA_F_NESTED set
        }
        p
    }

    #[test]
    fn set_xdp_request_replaces_only_the_expected_program() {
        let request = set_xdp_request(7, 11, XDP_FLAGS_SKB_MODE, Some(12), 4);
        assert_eq!(
            u16::from_ne_bytes([request[4], request[5]]),
            libc::RTM_SETLINK
        );
        let body = &request[NLMSG_HDR_LEN..];
        assert_eq!(u32_at(body, 4), 7, "ifindex");
        let (kind, xdp) = attributes(&body[IFINFOMSG_LEN..]).next().expect("IFLA_XDP");
        assert_eq!(kind, IFLA_XDP);
        let inner: Vec<(u16, u32)> = attributes(xdp).map(|(k, v)| (k, u32_at(v, 0))).collect();
        assert_eq!(
            inner,
            [
                (IFLA_XDP_FD, 11),
                (IFLA_XDP_FLAGS, XDP_FLAGS_SKB_MODE | XDP_FLAGS_REPLACE),
                (IFLA_XDP_EXPECTED_FD, 12)
            ]
        );
        let first = set_xdp_request(7, 11, XDP_FLAGS_UPDATE_IF_NOEXIST, None, 4);
        let body = &first[NLMSG_HDR_LEN..];
        let (_, xdp) = attributes(&body[IFINFOMSG_LEN..]).next().expect("IFLA_XDP");
        assert_eq!(attributes(xdp).count(), 2, "no expected fd");
    }

    #[test]
    fn getlink_request_asks_for_one_interface() {
        let mut body = vec![0u8; IFINFOMSG_LEN];
        body[4..8].copy_from_slice(&7u32.to_ne_bytes());
        let request = encode(
            libc::RTM_GETLINK,
            request_flags(libc::NLM_F_REQUEST | libc::NLM_F_ACK),
            3,
            &body,
        );
        assert_eq!(request.len(), 32);
        assert_eq!(u32::from_ne_bytes(request[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes(request[4..6].try_into().unwrap()), 18);
        assert_eq!(u16::from_ne_bytes(request[6..8].try_into().unwrap()), 1 | 4);
        assert_eq!(u32::from_ne_bytes(request[20..24].try_into().unwrap()), 7);
    }

    #[test]
    fn xdp_program_and_mode_are_read_from_a_link_message() {
        assert_eq!(
            xdp_of_link(&newlink(7, Some((1, 42))), 7),
            Some(XdpAttached {
                prog_id: 42,
                mode: XdpAttachMode::Native
            })
        );
        assert_eq!(
            xdp_of_link(&newlink(7, Some((2, 43))), 7).map(|x| x.mode),
            Some(XdpAttachMode::Skb)
        );
        assert_eq!(
            xdp_of_link(&newlink(7, Some((2, 43))), 8),
            None,
            "other interface"
        );
        assert_eq!(xdp_of_link(&newlink(7, None), 7), None, "no XDP");
        assert_eq!(
            xdp_of_link(&newlink(7, Some((0, 0))), 7),
            None,
            "XDP_ATTACHED_NONE"
        );
        assert_eq!(XdpAttachMode::Skb.short(), "skb");
    }

    fn tfilter(handle: u32, kind: &[u8], name: &[u8], prog_id: u32) -> Vec<u8> {
        let mut p = vec![0u8; TCMSG_LEN];
        p[4..8].copy_from_slice(&7u32.to_ne_bytes());
        p[8..12].copy_from_slice(&handle.to_ne_bytes());
        p[12..16].copy_from_slice(&TC_PARENT_EGRESS.to_ne_bytes());
        // Priority 1, protocol ETH_P_ALL in network order.
        p[16..20].copy_from_slice(&((1u32 << 16) | 0x0300).to_ne_bytes());
        p.extend(attribute(TCA_KIND, kind));
        let mut options = attribute(TCA_BPF_NAME, name);
        options.extend(attribute(TCA_BPF_ID, &prog_id.to_ne_bytes()));
        p.extend(attribute(TCA_OPTIONS | 0x8000, &options));
        p
    }

    #[test]
    fn bpf_filters_are_read_from_a_filter_dump() {
        assert_eq!(
            bpf_filter_of(&tfilter(0x4d46, b"bpf\0", b"mptcp_tc_egress\0", 46)),
            Some(BpfFilter {
                priority: 1,
                handle: 0x4d46,
                name: "mptcp_tc_egress".into(),
                prog_id: 46
            })
        );
        // The priority's classifier itself (handle 0), and other kinds of filters.
        assert_eq!(bpf_filter_of(&tfilter(0, b"bpf\0", b"x\0", 1)), None);
        assert_eq!(bpf_filter_of(&tfilter(1, b"u32\0", b"x\0", 1)), None);
        assert_eq!(bpf_filter_of(&[0; 8]), None);
    }

    #[test]
    fn replies_are_split_and_errors_read() {
        let mut buf = Vec::new();
        for (msg_type, seq, payload) in [
            (44u16, 9u32, &[1u8, 2, 3][..]),
            (2, 9, &(-17i32).to_ne_bytes()[..]),
        ] {
            let len = u32::try_from(NLMSG_HDR_LEN + payload.len()).unwrap();
            buf.extend_from_slice(&len.to_ne_bytes());
            buf.extend_from_slice(&msg_type.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(payload);
            buf.resize(buf.len().next_multiple_of(4), 0);
        }
        buf.extend_from_slice(&[0xff; 5]); // a truncated header is ignored
        let messages = split_messages(&buf);
        assert_eq!(messages.len(), 2);
        assert_eq!(
            messages[0],
            Received {
                msg_type: 44,
                seq: 9,
                payload: &[1, 2, 3]
            }
        );
        assert_eq!(error_code(messages[1].payload), -libc::EEXIST);
        assert_eq!(error_code(&[]), 0);
    }
}
