//! Benchmark baselines (`mptcp-bench`): the cheapest XDP program, and a plain parser written
//! the obvious way, to measure the validator against.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use mptcp_common::packet::PacketView;

use crate::context::{Frame, PacketCtx};

/// Benchmark baseline: the cheapest possible XDP program.
#[xdp]
pub fn xdp_pass_baseline(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[map]
static MPTCP_REFCOUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Benchmark reference: a plain parser written the obvious way (see
/// `mptcp_common::maps::PROG_XDP_PARSE_REFERENCE`), to measure the validator against.
#[xdp]
pub fn xdp_parse_reference(ctx: XdpContext) -> u32 {
    if reference_parse(&Frame(&ctx)) == Some(true) {
        if let Some(slot) = MPTCP_REFCOUNT.get_ptr_mut(0) {
            // SAFETY: per-CPU slot.
            unsafe { *slot += 1 };
        }
    }
    XDP_PASS
}

/// Whether the frame is TCP with a kind-30 option; `None` when it is not TCP or is cut short.
#[inline(always)]
fn reference_parse<C: PacketCtx>(frame: &Frame<C>) -> Option<bool> {
    let mut off = 12;
    let mut proto = u16::from_be_bytes(frame.load::<2>(off)?);
    for _ in 0..2 {
        if proto == 0x8100 || proto == 0x88a8 {
            off += 4;
            proto = u16::from_be_bytes(frame.load::<2>(off)?);
        }
    }
    off += 2;
    let tcp = if proto == 0x0800 {
        let [version_ihl] = frame.load::<1>(off)?;
        if frame.load::<1>(off + 9)? != [6] {
            return None;
        }
        off + usize::from(version_ihl & 0x0f) * 4
    } else if proto == 0x86dd {
        if frame.load::<1>(off + 6)? != [6] {
            return None;
        }
        off + 40
    } else {
        return None;
    };
    let [data_offset] = frame.load::<1>(tcp + 12)?;
    let end = tcp + usize::from(data_offset >> 4) * 4;
    let mut at = tcp + 20;
    // Twelve steps cover every real option layout (Linux's data segment takes four).
    for _ in 0..12 {
        if at >= end {
            break;
        }
        let [kind] = frame.load::<1>(at)?;
        match kind {
            0 => break,
            1 => at += 1,
            30 => return Some(true),
            _ => {
                let [len] = frame.load::<1>(at + 1)?;
                if len < 2 {
                    return None;
                }
                at += usize::from(len);
            }
        }
    }
    Some(false)
}
