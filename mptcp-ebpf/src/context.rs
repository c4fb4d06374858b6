//! What the XDP and tc programs offer the shared code: the frame's bytes, its interface, and
//! whether it is the host's own.

use aya_ebpf::programs::{TcContext, XdpContext};
use mptcp_common::packet::PacketView;

/// Largest frame offset the parser reads; also gives the verifier a bound on every offset.
const MAX_FRAME_OFFSET: usize = 0x3fff;

/// What both program types offer the shared code.
pub(crate) trait PacketCtx {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    fn ifindex(&self) -> u32;
    /// Whether the frame is the host's own: sent by its stack, not received or forwarded.
    /// Only such segments are evidence an attacker cannot forge blind.
    #[allow(
        clippy::wrong_self_convention,
        reason = "a question about the frame, not a conversion"
    )]
    fn from_host(&self) -> bool;
}

impl PacketCtx for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading a field of the XDP context.
        unsafe { (*self.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn from_host(&self) -> bool {
        false
    }
}

impl PacketCtx for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: reading a field of the skb context.
        unsafe { (*self.skb.skb).ifindex }
    }
    #[inline(always)]
    fn from_host(&self) -> bool {
        // A forwarded packet keeps the interface it arrived on; the host's own have none.
        // SAFETY: reading a field of the skb context.
        unsafe { (*self.skb.skb).ingress_ifindex == 0 }
    }
}

/// A frame as a bounds-checked byte source for the shared parser.
pub(crate) struct Frame<'a, C>(pub(crate) &'a C);

impl<C: PacketCtx> PacketView for Frame<'_, C> {
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off > MAX_FRAME_OFFSET {
            return None;
        }
        // black_box keeps LLVM from rewriting `p + 1 > end` into `p >= end`, a form from which
        // the verifier learns no readable range for a variable-offset packet pointer.
        let p = core::hint::black_box(self.0.data() + off);
        if p + N > self.0.data_end() {
            return None;
        }
        // SAFETY: the N bytes at p were just checked to lie inside the frame.
        Some(unsafe { core::ptr::read_unaligned(p as *const [u8; N]) })
    }
}
