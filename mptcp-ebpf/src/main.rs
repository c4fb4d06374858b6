//! XDP fast path of the MPTCP signalling firewall.
//!
//! For every frame: parse up to the TCP options (mptcp-common), learn the keys of new MPTCP
//! connections from MP_CAPABLE, and check the truncated HMAC of every ADD_ADDR. A wrong HMAC is
//! dropped in enforce mode; everything the program cannot judge passes and is counted.
//!
//! Structure, for the verifier: `prepare` parses and looks up, and leaves at most two HMAC jobs
//! and the frame's reason in a per-CPU map value; `run_hmac_jobs` then does the SHA-256 work
//! from a single place (see `HmacJob`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use mptcp_common::{
    counters::{Counter, COUNTER_COUNT},
    hmac::{add_addr_truncated, finish, midstate},
    maps::{
        Config, ConnState, FlowKey, FlowRef, HmacJob, HmacJobs, KeyEvent, CONN_FLAG_KEY_CONFLICT,
        KEY_EVENTS_BYTES, MAX_CONNS, MAX_FLOWS, MODE_MONITOR, ROLE_A,
    },
    packet::{
        parse_tcp, read_add_addr, read_capable_keys, walk_options_in, OptRef, PacketView,
        TcpSegment, WalkState, MAX_ADD_ADDRS,
    },
    validate::{add_addr_block, add_addr_reason, drops},
};

/// BPF_NOEXIST: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;
/// BPF_ANY: insert or replace.
const BPF_ANY: u64 = 0;
/// Largest frame offset the parser reads; also gives the verifier a bound on every offset.
const MAX_FRAME_OFFSET: usize = 0x3fff;

#[map]
static MPTCP_CONNS: LruHashMap<u64, ConnState> = LruHashMap::with_max_entries(MAX_CONNS, 0);
#[map]
static MPTCP_FLOWS: LruHashMap<FlowKey, FlowRef> = LruHashMap::with_max_entries(MAX_FLOWS, 0);
#[map]
static MPTCP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);
#[map]
static MPTCP_KEYEVENTS: RingBuf = RingBuf::with_byte_size(KEY_EVENTS_BYTES, 0);
#[map]
static MPTCP_CONFIG: Array<Config> = Array::with_max_entries(1, 0);
/// Per-CPU space to build a ConnState off the 512-byte BPF stack.
#[map]
static MPTCP_SCRATCH: PerCpuArray<ConnState> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU option-walk state (see `WalkState` for why it is not on the stack).
#[map]
static MPTCP_WALK: PerCpuArray<WalkState> = PerCpuArray::with_max_entries(1, 0);
/// Per-CPU HMAC jobs of the current frame (see `HmacJob`).
#[map]
static MPTCP_HMAC_JOBS: PerCpuArray<HmacJobs> = PerCpuArray::with_max_entries(1, 0);

/// The XDP frame as a bounds-checked byte source for the shared parser.
struct Frame<'a>(&'a XdpContext);

impl PacketView for Frame<'_> {
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

#[xdp]
pub fn mptcp_xdp_ingress(ctx: XdpContext) -> u32 {
    let Some(jobs) = MPTCP_HMAC_JOBS.get_ptr_mut(0) else {
        count(Counter::MptcpOther);
        return XDP_PASS;
    };
    // SAFETY: per-CPU map value, used only by this invocation.
    let jobs = unsafe { &mut *jobs };
    prepare(&ctx, jobs);
    let reason = run_hmac_jobs(jobs);
    count(reason);
    if drops(reason) {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// Benchmark baseline: the cheapest possible XDP program.
#[xdp]
pub fn xdp_pass_baseline(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = MPTCP_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn mode() -> u32 {
    MPTCP_CONFIG.get(0).map_or(MODE_MONITOR, |c| c.mode)
}

/// Parses the frame, learns keys, prepares the HMAC jobs and stores the frame's reason so far.
/// Each stage leaves its result in per-CPU map memory, so the next stage is verified once for
/// all the paths of the previous one (see `WalkState`, `HmacJob`).
#[inline(never)]
fn prepare(ctx: &XdpContext, jobs: &mut HmacJobs) {
    for job in &mut jobs.jobs {
        job.active = 0;
    }
    let Some(walk) = MPTCP_WALK.get_ptr_mut(0) else {
        jobs.reason = Counter::MptcpOther as u32;
        return;
    };
    // SAFETY: per-CPU map value, used only by this invocation.
    let walk = unsafe { &mut *walk };
    let reason = match parse_into(ctx, walk) {
        Some(reason) => reason,
        None => {
            walk_options(ctx, walk);
            decide(ctx, core::hint::black_box(walk), jobs)
        }
    };
    jobs.reason = reason as u32;
}

/// Parses L2..L4 into `walk.seg`; returns the reason when the frame is not examined further.
#[inline(never)]
fn parse_into(ctx: &XdpContext, walk: &mut WalkState) -> Option<Counter> {
    match parse_tcp(&Frame(ctx)) {
        Ok(seg) => {
            walk.seg = seg;
            None
        }
        Err(reason) => Some(reason),
    }
}

#[inline(never)]
fn walk_options(ctx: &XdpContext, walk: &mut WalkState) {
    walk_options_in(&Frame(ctx), walk);
}

#[inline(always)]
fn decide(ctx: &XdpContext, walk: &WalkState, jobs: &mut HmacJobs) -> Counter {
    let frame = Frame(ctx);
    let seg = &walk.seg;
    let opts = &walk.found;
    if opts.count == 0 {
        return if opts.malformed { Counter::Malformed } else { Counter::TcpNoMptcp };
    }
    let mut reason = Counter::MptcpOther;
    if opts.malformed {
        reason = reason.max(Counter::Malformed);
    }
    if opts.echoes > 0 {
        reason = reason.max(Counter::AddAddrEcho);
    }
    if let Some(opt) = opts.capable_keys {
        reason = reason.max(learn_keys(ctx, &frame, seg, opt));
    }
    for i in 0..MAX_ADD_ADDRS {
        if let Some(opt) = opts.add_addrs[i] {
            reason = reason.max(prepare_add_addr(&frame, seg, &opt, &mut jobs.jobs[i]));
        }
    }
    reason
}

/// MP_CAPABLE with both keys, sent by A (this segment's source) to B.
#[inline(never)]
fn learn_keys(ctx: &XdpContext, frame: &Frame, seg: &TcpSegment, opt: OptRef) -> Counter {
    let Some((key_a, key_b)) = read_capable_keys(frame, opt) else {
        return Counter::Truncated;
    };
    let conn_id = ConnState::id_of(&key_a);
    if let Some(flow) = MPTCP_FLOWS.get_ptr(&seg.flow) {
        // SAFETY: map value pointer from a successful lookup.
        let known_id = unsafe { (*flow).conn_id };
        if let Some(conn) = MPTCP_CONNS.get_ptr_mut(&known_id) {
            // SAFETY: as above; the fields written are plain integers.
            unsafe {
                if (*conn).key_a == key_a && (*conn).key_b == key_b {
                    return Counter::KeysKnown;
                }
                (*conn).flags |= CONN_FLAG_KEY_CONFLICT;
            }
            return Counter::KeysConflict;
        }
        // The connection was evicted but the subflow was not: learn it again below.
    }
    let Some(scratch) = MPTCP_SCRATCH.get_ptr_mut(0) else {
        return Counter::MptcpOther;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU scratch slot; map value pointers from successful lookups.
    unsafe {
        (*scratch).key_a = key_a;
        (*scratch).key_b = key_b;
        (*scratch).ready = 0;
        (*scratch).flags = 0;
        (*scratch).learned_ns = now;
        if MPTCP_CONNS.insert(&conn_id, &*scratch, BPF_NOEXIST).is_err() {
            // Already there (another subflow carried the same Key-A): it must agree.
            match MPTCP_CONNS.get_ptr_mut(&conn_id) {
                Some(conn) if (*conn).key_b == key_b => {}
                Some(conn) => {
                    (*conn).flags |= CONN_FLAG_KEY_CONFLICT;
                    return Counter::KeysConflict;
                }
                None => {
                    count(Counter::MapInsertFailed);
                    return Counter::MptcpOther;
                }
            }
        }
    }
    let flow_ref = FlowRef { conn_id, src_role: ROLE_A, pad: [0; 7] };
    if MPTCP_FLOWS.insert(&seg.flow, &flow_ref, BPF_ANY).is_err() {
        count(Counter::MapInsertFailed);
    }
    match MPTCP_KEYEVENTS.reserve::<KeyEvent>(0) {
        Some(mut entry) => {
            entry.write(KeyEvent {
                flow: seg.flow,
                key_a,
                key_b,
                seen_ns: now,
                // SAFETY: reading a field of the XDP context.
                ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
                mpc_flags: frame.load::<4>(opt.off).map_or(0, |b| b[3]),
                pad: [0; 3],
            });
            entry.submit(0);
        }
        None => count(Counter::KeyEventLost),
    }
    Counter::KeysLearned
}

/// An E=0 ADD_ADDR: find its connection and the announcer's role, and prepare `job`.
/// Returns the reason if it can be decided without an HMAC, else `MptcpOther` (job active).
#[inline(never)]
fn prepare_add_addr(frame: &Frame, seg: &TcpSegment, opt: &OptRef, job: &mut HmacJob) -> Counter {
    let Some(add_addr) = read_add_addr(frame, *opt) else {
        return Counter::Truncated;
    };
    let (flow, announcer_is_key_source) = match MPTCP_FLOWS.get_ptr(&seg.flow) {
        Some(f) => (f, true),
        None => match MPTCP_FLOWS.get_ptr(&seg.flow.reversed()) {
            Some(f) => (f, false),
            None => return Counter::AddAddrUnknownConn,
        },
    };
    // SAFETY: map value pointer from a successful lookup.
    let flow = unsafe { *flow };
    let role = if announcer_is_key_source { flow.src_role } else { flow.src_role ^ 1 } & 1;
    let Some(conn) = MPTCP_CONNS.get_ptr(&flow.conn_id) else {
        return Counter::AddAddrUnknownConn;
    };
    // SAFETY: map value pointer from a successful lookup. A concurrent writer (the loader, the
    // fast path on another CPU) only ever stores the same deterministic midstates.
    unsafe {
        if (*conn).flags & CONN_FLAG_KEY_CONFLICT != 0 {
            return Counter::AddAddrUntrustedConn;
        }
        let idx = usize::from(role);
        if (*conn).ready & (1 << idx) != 0 {
            job.mid = (*conn).mid[idx & 1];
            job.need_midstate = 0;
        } else {
            // The key-learning window: the loader has not installed the midstates yet.
            job.need_midstate = 1;
        }
        if role == ROLE_A {
            job.key_sender = (*conn).key_a;
            job.key_receiver = (*conn).key_b;
        } else {
            job.key_sender = (*conn).key_b;
            job.key_receiver = (*conn).key_a;
        }
    }
    job.block = add_addr_block(&add_addr);
    job.expected = add_addr.hmac;
    job.conn_id = flow.conn_id;
    job.role = role;
    job.active = 1;
    Counter::MptcpOther
}

/// Runs the prepared HMAC checks and returns the frame's final reason.
#[inline(never)]
fn run_hmac_jobs(jobs: &mut HmacJobs) -> Counter {
    let mut reason = counter_from(jobs.reason);
    let mode = mode();
    for i in 0..MAX_ADD_ADDRS {
        let job = &mut jobs.jobs[i];
        if job.active == 0 {
            continue;
        }
        if job.need_midstate != 0 {
            job.mid = midstate(&job.key_sender, &job.key_receiver);
            if let Some(conn) = MPTCP_CONNS.get_ptr_mut(&job.conn_id) {
                let idx = usize::from(job.role & 1);
                // SAFETY: map value pointer from a successful lookup (see prepare_add_addr).
                unsafe {
                    (*conn).mid[idx] = job.mid;
                    (*conn).ready |= 1 << idx;
                }
            }
            count(Counter::MidstateComputedInline);
        }
        let ok = add_addr_truncated(&finish(&job.mid, &job.block)) == job.expected;
        reason = reason.max(add_addr_reason(ok, mode));
    }
    reason
}

/// The counter with this code (codes come from `prepare`, which only stores valid ones).
#[inline(always)]
fn counter_from(code: u32) -> Counter {
    let all = Counter::ALL;
    match all.get(code as usize) {
        Some(c) => *c,
        None => Counter::MptcpOther,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
