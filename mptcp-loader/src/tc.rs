//! The clsact qdisc the tc egress program hangs from, and the little rtnetlink that aya does not
//! offer: deleting the qdisc, and checking that nobody else's filter hangs from it first.
//!
//! Why a netlink (`cls_bpf`) filter and not a TCX link (kernel >= 6.6): `tc filter show dev IF
//! egress` shows it, as operators expect, and it works on older kernels. The price is that a
//! filter outlives a crashed run; [`remove_stale_filters`] removes such leftovers before the
//! next run attaches (only after that run's XDP attach succeeded, which no live run would allow).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::programs::{
    tc::{qdisc_add_clsact, qdisc_detach_program},
    TcAttachType, TcError,
};
use mptcp_common::maps::PROG_TC_EGRESS;

use crate::errors::LoaderError;

/// `TC_H_CLSACT`: parent of the clsact qdisc (same value as `TC_H_INGRESS`).
const TC_H_CLSACT: u32 = 0xffff_fff1;
/// The clsact qdisc's own handle, `ffff:`.
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// Filter parents inside clsact: `ffff:fff2` (ingress) and `ffff:fff3` (egress).
const CLSACT_INGRESS: u32 = 0xffff_fff2;
const CLSACT_EGRESS: u32 = 0xffff_fff3;
/// `struct nlmsghdr` size.
const NLMSG_HDR_LEN: usize = 16;

/// Adds a clsact qdisc to `iface` unless it has one. Returns whether we added it (and so own
/// it, and remove it again on exit).
///
/// # Errors
/// [`LoaderError::Clsact`] when the qdisc can be neither added nor found;
/// [`LoaderError::QdiscInTheWay`] when another qdisc (`ingress`) holds clsact's handle: a filter
/// for "egress" would silently land in that qdisc's ingress block.
pub fn ensure_clsact(iface: &str, ifindex: u32) -> Result<bool, LoaderError> {
    match qdisc_add_clsact(iface) {
        Ok(()) => Ok(true),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
            let kind = RtNetlink::open()
                .and_then(|socket| socket.qdisc_kind(ifindex, CLSACT_HANDLE))
                .map_err(|e| LoaderError::Clsact {
                    iface: iface.to_owned(),
                    source: TcError::IoError(e),
                })?;
            match kind.as_deref() {
                Some("clsact") => Ok(false),
                other => Err(LoaderError::QdiscInTheWay {
                    iface: iface.to_owned(),
                    kind: other.unwrap_or("unknown").to_owned(),
                }),
            }
        }
        Err(source) => Err(LoaderError::Clsact {
            iface: iface.to_owned(),
            source,
        }),
    }
}

/// Removes `mptcp_tc_egress` filters left on `iface`'s egress by a run that died without
/// cleaning up. Returns whether there were any.
///
/// # Errors
/// When listing or deleting filters fails.
pub fn remove_stale_filters(iface: &str) -> Result<bool, LoaderError> {
    match qdisc_detach_program(iface, TcAttachType::Egress, PROG_TC_EGRESS) {
        Ok(()) => Ok(true),
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        // No clsact qdisc at all: nothing can be attached to it.
        Err(TcError::NetlinkError(e))
            if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) =>
        {
            Ok(false)
        }
        Err(source) => Err(LoaderError::Clsact {
            iface: iface.to_owned(),
            source,
        }),
    }
}

/// Deletes the clsact qdisc of interface `ifindex` if no filter hangs from it any more (ours
/// must be detached first). Returns whether it was deleted; `false` means someone else attached
/// a filter meanwhile and the qdisc is theirs to keep.
///
/// # Errors
/// When netlink fails.
pub fn delete_clsact_if_unused(ifindex: u32) -> io::Result<bool> {
    let socket = RtNetlink::open()?;
    let filters = socket.count_filters(ifindex, CLSACT_INGRESS)?
        + socket.count_filters(ifindex, CLSACT_EGRESS)?;
    if filters > 0 {
        return Ok(false);
    }
    let request = encode_request(
        libc::RTM_DELQDISC,
        request_flags(libc::NLM_F_REQUEST | libc::NLM_F_ACK),
        1,
        &TcMsg::new(ifindex, CLSACT_HANDLE, TC_H_CLSACT),
        Some("clsact"),
    );
    socket.transact(&request, 1)?;
    Ok(true)
}

/// `struct tcmsg`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TcMsg {
    ifindex: u32,
    handle: u32,
    parent: u32,
}

impl TcMsg {
    const fn new(ifindex: u32, handle: u32, parent: u32) -> Self {
        Self {
            ifindex,
            handle,
            parent,
        }
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

/// One rtnetlink request for a tc object: `nlmsghdr`, `tcmsg`, and an optional `TCA_KIND`.
fn encode_request(msg_type: u16, flags: u16, seq: u32, tc: &TcMsg, kind: Option<&str>) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    const AF_UNSPEC: u8 = 0;
    body.extend_from_slice(&[AF_UNSPEC, 0, 0, 0]); // family, padding
    body.extend_from_slice(&tc.ifindex.to_ne_bytes());
    body.extend_from_slice(&tc.handle.to_ne_bytes());
    body.extend_from_slice(&tc.parent.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes()); // tcm_info
    if let Some(kind) = kind {
        let value_len = kind.len() + 1; // NUL-terminated
        let attr_len = u16::try_from(4 + value_len).expect("short attribute");
        body.extend_from_slice(&attr_len.to_ne_bytes());
        body.extend_from_slice(&libc::TCA_KIND.to_ne_bytes());
        body.extend_from_slice(kind.as_bytes());
        body.push(0);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let total = u32::try_from(NLMSG_HDR_LEN + body.len()).expect("short message");
    let mut message = Vec::with_capacity(total as usize);
    message.extend_from_slice(&total.to_ne_bytes());
    message.extend_from_slice(&msg_type.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    message.extend_from_slice(&body);
    message
}

/// A netlink message as received: type, sequence number, payload.
#[derive(Debug, PartialEq, Eq)]
struct Received<'a> {
    msg_type: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The `TCA_KIND` of the qdisc with `handle` on `ifindex`, from the payloads of an
/// `RTM_GETQDISC` dump (`tcmsg` then attributes).
fn qdisc_kind_in<'a>(
    payloads: impl IntoIterator<Item = &'a [u8]>,
    ifindex: u32,
    handle: u32,
) -> Option<String> {
    const TCMSG_LEN: usize = 20;
    let u32_at =
        |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    payloads.into_iter().find_map(|payload| {
        if payload.len() < TCMSG_LEN
            || u32_at(payload, 4) != ifindex
            || u32_at(payload, 8) != handle
        {
            return None;
        }
        let mut attrs = &payload[TCMSG_LEN..];
        while attrs.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
            let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
            if len < 4 || len > attrs.len() {
                return None;
            }
            if kind == libc::TCA_KIND {
                let value = &attrs[4..len];
                let text = value.split(|b| *b == 0).next().unwrap_or_default();
                return Some(String::from_utf8_lossy(text).into_owned());
            }
            attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
        }
        None
    })
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

/// A NETLINK_ROUTE socket.
struct RtNetlink {
    fd: OwnedFd,
}

impl RtNetlink {
    fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
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

    /// Filters (of any kind) attached under `parent` on `ifindex`.
    fn count_filters(&self, ifindex: u32, parent: u32) -> io::Result<usize> {
        let seq = parent; // distinct per request on this socket
        let request = encode_request(
            libc::RTM_GETTFILTER,
            request_flags(libc::NLM_F_REQUEST | libc::NLM_F_DUMP),
            seq,
            &TcMsg::new(ifindex, 0, parent),
            None,
        );
        Ok(self.transact(&request, seq)?.len())
    }

    /// The kind of the qdisc with `handle` on `ifindex`, if there is one.
    fn qdisc_kind(&self, ifindex: u32, handle: u32) -> io::Result<Option<String>> {
        let seq = 2;
        let request = encode_request(
            libc::RTM_GETQDISC,
            request_flags(libc::NLM_F_REQUEST | libc::NLM_F_DUMP),
            seq,
            &TcMsg::new(ifindex, 0, 0),
            None,
        );
        let payloads = self.transact(&request, seq)?;
        Ok(qdisc_kind_in(
            payloads.iter().map(Vec::as_slice),
            ifindex,
            handle,
        ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_request_matches_tc_qdisc_del_clsact() {
        let request = encode_request(
            libc::RTM_DELQDISC,
            request_flags(libc::NLM_F_REQUEST | libc::NLM_F_ACK),
            7,
            &TcMsg::new(3, CLSACT_HANDLE, TC_H_CLSACT),
            Some("clsact"),
        );
        // 16 header + 20 tcmsg + 4 attribute header + "clsact\0" padded to 8.
        assert_eq!(request.len(), 48);
        assert_eq!(u32::from_ne_bytes(request[0..4].try_into().unwrap()), 48);
        assert_eq!(u16::from_ne_bytes(request[4..6].try_into().unwrap()), 37);
        assert_eq!(u16::from_ne_bytes(request[6..8].try_into().unwrap()), 1 | 4);
        assert_eq!(u32::from_ne_bytes(request[8..12].try_into().unwrap()), 7);
        assert_eq!(request[16], 0, "AF_UNSPEC");
        assert_eq!(i32::from_ne_bytes(request[20..24].try_into().unwrap()), 3);
        assert_eq!(
            u32::from_ne_bytes(request[24..28].try_into().unwrap()),
            0xffff_0000
        );
        assert_eq!(
            u32::from_ne_bytes(request[28..32].try_into().unwrap()),
            0xffff_fff1
        );
        assert_eq!(u16::from_ne_bytes(request[36..38].try_into().unwrap()), 11);
        assert_eq!(u16::from_ne_bytes(request[38..40].try_into().unwrap()), 1);
        assert_eq!(&request[40..48], b"clsact\0\0");
    }

    #[test]
    fn qdisc_kind_is_read_from_a_dump() {
        let qdisc = |ifindex: u32, handle: u32, kind: &str| {
            let mut p = vec![0u8; 4];
            p.extend_from_slice(&ifindex.to_ne_bytes());
            p.extend_from_slice(&handle.to_ne_bytes());
            p.extend_from_slice(&0xffff_fff1u32.to_ne_bytes());
            p.extend_from_slice(&0u32.to_ne_bytes());
            // An attribute before TCA_KIND, then TCA_KIND.
            p.extend_from_slice(&8u16.to_ne_bytes());
            p.extend_from_slice(&2u16.to_ne_bytes());
            p.extend_from_slice(&[0; 4]);
            let len = u16::try_from(4 + kind.len() + 1).unwrap();
            p.extend_from_slice(&len.to_ne_bytes());
            p.extend_from_slice(&libc::TCA_KIND.to_ne_bytes());
            p.extend_from_slice(kind.as_bytes());
            p.push(0);
            p.resize(p.len().next_multiple_of(4), 0);
            p
        };
        let dump = [
            qdisc(3, 0, "noqueue"),
            qdisc(4, CLSACT_HANDLE, "clsact"),
            qdisc(3, CLSACT_HANDLE, "ingress"),
        ];
        let payloads = || dump.iter().map(Vec::as_slice);
        assert_eq!(
            qdisc_kind_in(payloads(), 3, CLSACT_HANDLE).as_deref(),
            Some("ingress")
        );
        assert_eq!(
            qdisc_kind_in(payloads(), 4, CLSACT_HANDLE).as_deref(),
            Some("clsact")
        );
        assert_eq!(qdisc_kind_in(payloads(), 5, CLSACT_HANDLE), None);
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
