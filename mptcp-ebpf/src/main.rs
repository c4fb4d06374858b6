//! Fast path of the MPTCP signalling firewall: an XDP ingress program that checks, and a tc
//! egress program that learns what the host itself sends.
//!
//! Ingress, for every frame: parse up to the TCP options (mptcp-common), learn the keys of new
//! MPTCP connections from MP_CAPABLE, check the truncated HMAC of every ADD_ADDR, gate MP_JOIN
//! SYNs on known tokens, check MP_JOIN SYN/ACK and third-ACK HMACs, check MP_FASTCLOSE keys, and
//! follow subflow and connection lifetimes. A failed check drops in enforce mode; everything the
//! program cannot judge passes and is counted.
//!
//! Both programs run the same stages (`process`), each a BPF function that leaves its result
//! in the frame's per-CPU `FrameScratch` (mptcp-common), so the verifier checks each stage once
//! for all the paths of the one before:
//!
//! 1. `everyday_reason`: no options, timestamps, DSS, decided from fixed offsets;
//! 2. `prepare`: the general parser and option walk, then `decide`, one per direction:
//!    [`ingress::decide`] checks, [`egress::decide`] learns, over the shared state code in
//!    [`conn`];
//! 3. [`crypto::run_jobs`]: every SHA-256 computation the frame needs.
//!
//! Modules: `context` (what XDP and tc offer the shared code), `maps` (the maps and their
//! helpers), `conn` (connection, subflow and join state), `ingress`, `egress`, `crypto`,
//! `baselines` (benchmark reference programs).
#![no_std]
#![no_main]
// Atomic add on map memory: the BPF target's core has no AtomicU64::fetch_add.
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "core_intrinsics, for the atomic add above"
)]
// Map keys go to aya's lookups by reference: a key moved into the generic call is first
// copied on the 512-byte BPF stack.
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys by reference keep them off the BPF stack"
)]
// Truncating casts here are deliberate: seconds since boot in u32 (they wrap, compared with
// wrapping_sub), lengths bounded by DROP_SNAP_LEN or the frame, and counter codes.
#![allow(
    clippy::cast_possible_truncation,
    reason = "each truncation is bounded or wraps by design"
)]
// aya's program macros hand each entry point its context by value.
#![allow(
    clippy::needless_pass_by_value,
    reason = "entry point signatures are aya's"
)]

mod baselines;
mod conn;
mod context;
mod crypto;
mod egress;
mod ingress;
mod maps;

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        TC_ACT_UNSPEC,
    },
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use mptcp_common::{
    counters::Counter,
    maps::{
        FrameChecks, FrameScratch, KeyEvent, JOB_NONE, JOIN_JOB_SLOT, KEY_EVENT_LEARNED,
        TOKENS_NONE,
    },
    packet::{everyday, everyday_flow, parse_tcp, walk_options_in, Everyday, WalkState},
    validate::{drops, end_flags},
};

use crate::{
    conn::note_activity_of,
    context::{Frame, PacketCtx},
    maps::{count, counter_from, mode, now_ns, MPTCP_FRAME, MPTCP_KEYEVENTS},
};

/// Multi-buffer aware (`xdp.frags`): drivers and MTUs that split a frame over several buffers
/// (veth above about 3500 bytes, jumbo frames on most NICs) accept it in native mode. Parsing
/// reads `data..data_end` only, the first buffer, where the headers are; a frame whose headers
/// do not fit there is counted `truncated` and passes.
#[xdp(frags)]
pub fn mptcp_xdp_ingress(ctx: XdpContext) -> u32 {
    xdp_ingress::<true>(&ctx)
}

/// The same program for kernels before 5.18, which refuse `xdp.frags` and have neither
/// `bpf_xdp_get_buff_len` nor `bpf_xdp_load_bytes`: the loader loads this one where the kernel
/// rejects the frags flag (`mptcp_loader::xdp_ingress_program`). A frame is then one buffer.
#[xdp]
pub fn mptcp_xdp_ingress_single_buffer(ctx: XdpContext) -> u32 {
    xdp_ingress::<false>(&ctx)
}

/// `FRAGS`: the program is loaded multi-buffer aware, and the kernel has the 5.18 helpers.
#[inline(always)]
fn xdp_ingress<const FRAGS: bool>(ctx: &XdpContext) -> u32 {
    let reason = process::<XdpContext, false>(ctx);
    count(reason);
    if reason.is_event() {
        ingress::drop_event::<FRAGS>(ctx, reason);
    }
    if drops(reason) {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// The host's own segments: learn keys and nonces, never drop. Returns `TC_ACT_UNSPEC`
/// (`TCX_NEXT` on a TCX link): no verdict, so the TCX programs after it and the classic clsact
/// filters still run; `TC_ACT_OK` (`TCX_PASS`) would end the chain here.
#[classifier]
pub fn mptcp_tc_egress(ctx: TcContext) -> i32 {
    if process::<TcContext, true>(&ctx) == Counter::KeysLearned {
        count(Counter::EgressKeysLearned);
    }
    count(Counter::Egress);
    TC_ACT_UNSPEC
}

/// The stages of one frame, both directions (see the crate documentation).
#[inline(always)]
fn process<C: PacketCtx, const EGRESS: bool>(ctx: &C) -> Counter {
    let Some(scratch) = MPTCP_FRAME.get_ptr_mut(0) else {
        return Counter::MptcpOther;
    };
    // SAFETY: per-CPU map value, used only by this invocation.
    let scratch = unsafe { &mut *scratch };
    everyday_reason::<C, EGRESS>(ctx, scratch);
    if scratch.reason != UNDECIDED {
        return counter_from(scratch.reason);
    }
    prepare::<C, EGRESS>(ctx, scratch);
    let checks = &mut scratch.checks;
    if checks.tokens.op == TOKENS_NONE
        && checks.jobs[0].kind == JOB_NONE
        && checks.jobs[1].kind == JOB_NONE
        && checks.jobs[JOIN_JOB_SLOT].kind == JOB_NONE
    {
        // The common case: no crypto for this frame.
        announce(checks);
        return counter_from(scratch.reason);
    }
    let reason = crypto::run_jobs(checks, counter_from(scratch.reason));
    // Left where the differential tests read each frame's reason.
    scratch.reason = reason as u32;
    announce(&mut scratch.checks);
    reason
}

/// Sends the loader what this frame proved about a connection (a validated join's subflow, an
/// authenticated end), if anything: a loader that shares its connections with other boxes
/// tells them.
#[inline(never)]
fn announce(checks: &mut FrameChecks) {
    if checks.announce.kind == KEY_EVENT_LEARNED {
        return;
    }
    checks.announce.seen_ns = now_ns();
    checks.announce.ifindex = checks.ifindex;
    if MPTCP_KEYEVENTS
        .output::<KeyEvent>(&checks.announce, 0)
        .is_err()
    {
        count(Counter::KeyEventLost);
    }
}

/// `FrameScratch::reason` before a frame's reason is known.
const UNDECIDED: u32 = u32::MAX;

/// Decides the everyday shapes (no options, timestamps, a DSS) from fixed offsets, with the
/// sampled activity refresh of a DSS segment's subflow; leaves the reason in `scratch.reason`, or
/// [`UNDECIDED`] for the general path. The result goes through map memory so that the general
/// path after it is verified once, not once per shape.
#[inline(never)]
fn everyday_reason<C: PacketCtx, const EGRESS: bool>(ctx: &C, scratch: &mut FrameScratch) {
    scratch.reason = UNDECIDED;
    let Some(shape) = everyday(&Frame(ctx), end_flags(EGRESS)) else {
        return;
    };
    if shape == (Everyday::Dss { sample: true }) {
        if let Some(flow) = everyday_flow(&Frame(ctx)) {
            note_activity_of(&flow);
        }
    }
    scratch.reason = shape.reason() as u32;
}

/// Parses the frame and decides what its options mean in this direction: does the map work,
/// prepares the crypto jobs and stores the frame's reason so far.
#[inline(never)]
fn prepare<C: PacketCtx, const EGRESS: bool>(ctx: &C, scratch: &mut FrameScratch) {
    let checks = &mut scratch.checks;
    for job in &mut checks.jobs {
        job.kind = JOB_NONE;
    }
    checks.tokens.op = TOKENS_NONE;
    checks.ifindex = ctx.ifindex();
    checks.mode = mode(checks.ifindex);
    checks.note.family = 0;
    checks.note.token = [0; 4];
    checks.announce.kind = KEY_EVENT_LEARNED;
    if !parse_into(ctx, scratch) {
        return;
    }
    let seg = &scratch.walk.seg;
    let reason = if seg.opts_start >= seg.opts_end && seg.flags & end_flags(EGRESS) == 0 {
        // No options, no FIN or RST: nothing to look at (most data segments without timestamps).
        Counter::TcpNoMptcp
    } else {
        walk_options(ctx, &mut scratch.walk);
        let walk = core::hint::black_box(&scratch.walk);
        if EGRESS {
            egress::decide(ctx, walk, &mut scratch.checks)
        } else {
            ingress::decide(ctx, walk, &mut scratch.checks)
        }
    };
    scratch.reason = reason as u32;
}

/// Parses L2..L4 into `scratch.walk.seg` and returns true, or stores the reason the frame is
/// not examined further in `scratch.reason` and returns false.
///
/// Not an `Option<Counter>`: rustc encodes its `None` as the niche -1, and LLVM's BPF backend
/// with 32-bit ALU but without JMP32 (`--cpu-features=+alu32` on CPU v1) compared that returned
/// value, zero-extended, with a sign-extended -1: `None` was never seen and every frame on the
/// general path was counted `mptcp_other`. A bool (returned zero-extended) and a reason in map
/// memory leave nothing to extend. `tests/tests/prog_test_run.rs` checks the object's CPU level.
#[inline(never)]
fn parse_into<C: PacketCtx>(ctx: &C, scratch: &mut FrameScratch) -> bool {
    match parse_tcp(&Frame(ctx)) {
        Ok(seg) => {
            scratch.walk.seg = seg;
            true
        }
        Err(reason) => {
            scratch.reason = reason as u32;
            false
        }
    }
}

#[inline(never)]
fn walk_options<C: PacketCtx>(ctx: &C, walk: &mut WalkState) {
    walk_options_in(&Frame(ctx), walk);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
