//! Ingress: what the XDP program checks in every frame the host receives. Every ADD_ADDR's
//! truncated HMAC (from the tag cache, or prepared for the crypto stage), MP_JOIN SYNs against
//! known tokens, the SYN/ACK and third-ACK HMACs of pending joins, MP_FASTCLOSE keys; and the
//! drop events the loader reads.

use aya_ebpf::{
    helpers::{bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    maps::lpm_trie::Key as LpmKey,
    programs::XdpContext,
};
use mptcp_common::{
    counters::Counter,
    hmac::join_block,
    maps::{
        AddAddrTagKey, DropEvent, FlowKey, FrameChecks, JoinRateKey, ADDR_POLICY_PORTS,
        ADDR_POLICY_PREFIXES, DROP_SNAP_LEN, FAMILY_V4, FLOW_ESTABLISHED, JOB_ADD_ADDR,
        JOB_JOIN_ACK, JOB_JOIN_SYNACK, JOIN_ACK_VALID, JOIN_HAVE_RESPONDER_NONCE, JOIN_JOB_SLOT,
        JOIN_SYNACK_VALID,
    },
    packet::{read_add_addr, read_join, Join, OptRef, TcpSegment, WalkState, MAX_ADD_ADDRS},
    validate::{
        add_addr_block, add_addr_policy_reason, add_addr_reason, drops, fastclose_reason, gcra,
        join_state_fresh, join_syn_rate_reason, join_syn_reason,
    },
};

use crate::{
    conn::{
        begin, fastclose_ends_conn, finish, fresh_join, join_token, load_keys, load_midstates,
        load_sender_keys, lookup_flow, open_pending_join, refresh_last_seen, trusted_conn, unknown,
        JoinToken,
    },
    context::{Frame, PacketCtx},
    maps::{
        config, count, now_coarse_ns, now_ns, BPF_ANY, MPTCP_ADDTAGS, MPTCP_ALLOWPORT,
        MPTCP_ALLOW_V4, MPTCP_ALLOW_V6, MPTCP_CONFIG, MPTCP_DROPS, MPTCP_EVBUDGET, MPTCP_FRAME,
        MPTCP_JOINRATE, MPTCP_JOINS, NS_PER_S,
    },
};

/// Judges the MPTCP options of a received segment: returns the reason so far, with the HMAC
/// checks it needs left in `checks.jobs` for the crypto stage.
#[inline(always)]
pub(crate) fn decide<C: PacketCtx>(ctx: &C, walk: &WalkState, checks: &mut FrameChecks) -> Counter {
    let frame = Frame(ctx);
    let seg = &walk.seg;
    let opts = &walk.found;
    let mut reason = match begin::<C, false>(ctx, seg, opts, checks) {
        core::ops::ControlFlow::Break(reason) => return reason,
        core::ops::ControlFlow::Continue(reason) => reason,
    };
    if let Some(opt) = opts.join {
        reason = reason.max(join(&frame, seg, &opt, checks));
    }
    if let Some(opt) = opts.fastclose {
        reason = reason.max(fastclose(&frame, seg, &opt, checks));
    }
    for i in 0..MAX_ADD_ADDRS {
        if let Some(opt) = opts.add_addrs[i] {
            reason = reason.max(prepare_add_addr(&frame, seg, &opt, checks, i));
        }
    }
    finish::<C, false>(ctx, seg, checks);
    reason
}

/// An E=0 ADD_ADDR: check the address policy, find its connection and the announcer's role,
/// and prepare HMAC job `slot`. Returns the reason if it can be decided without an HMAC, else
/// `MptcpOther` (job set).
#[inline(never)]
pub(crate) fn prepare_add_addr<C: PacketCtx>(
    frame: &Frame<C>,
    seg: &TcpSegment,
    opt: &OptRef,
    checks: &mut FrameChecks,
    slot: usize,
) -> Counter {
    let Some(add_addr) = read_add_addr(frame, *opt) else {
        return Counter::Truncated;
    };
    if checks.note.family == 0 {
        checks.note.family = add_addr.family;
        checks.note.addr = add_addr.addr;
        checks.note.port = add_addr.port;
        checks.note.id = add_addr.id;
    }
    let mode = checks.mode;
    if !add_addr_allowed(add_addr.family, &add_addr.addr, &add_addr.port) {
        return add_addr_policy_reason(mode);
    }
    let Some((flow, announcer_role)) = lookup_flow(seg) else {
        return unknown(Counter::AddAddrUnknownConn, mode);
    };
    refresh_last_seen(flow);
    // SAFETY: map value pointer from a successful lookup. An ADD_ADDR comes after the
    // handshake: the subflow is established.
    let conn_id = unsafe {
        if (*flow).flags & FLOW_ESTABLISHED == 0 {
            (*flow).flags |= FLOW_ESTABLISHED;
        }
        (*flow).conn_id
    };
    let conn = match trusted_conn(conn_id) {
        Ok(conn) => conn,
        Err(Counter::UntrustedConn) => return Counter::UntrustedConn,
        Err(_) => return unknown(Counter::AddAddrUnknownConn, mode),
    };
    let Some(job) = checks.jobs.get_mut(slot) else {
        return Counter::MptcpOther;
    };
    load_sender_keys(conn, announcer_role, job);
    job.tag_key = AddAddrTagKey {
        key_sender: job.key_sender,
        key_receiver: job.key_receiver,
        addr: add_addr.addr,
        port: add_addr.port,
        id: add_addr.id,
        family: add_addr.family,
        pad: [0; 4],
    };
    // Seen before (a retransmission, or the same forgery again): judged from the cache, before
    // anything a computation needs is prepared.
    if let Some(tag) = MPTCP_ADDTAGS.get_ptr(&job.tag_key) {
        count(Counter::AddAddrTagCached);
        // SAFETY: map value pointer from a successful lookup.
        return add_addr_reason(unsafe { *tag } == add_addr.hmac, mode);
    }
    load_midstates(conn, job);
    job.block = add_addr_block(&add_addr);
    job.expected[..8].copy_from_slice(&add_addr.hmac);
    job.conn_id = conn_id;
    job.kind = JOB_ADD_ADDR;
    Counter::MptcpOther
}

/// Whether the policy lets an ADD_ADDR announce this address and port (wire bytes; port
/// `[0, 0]` when the option has none).
#[inline(always)]
pub(crate) fn add_addr_allowed(family: u8, addr: &[u8; 16], port: &[u8; 2]) -> bool {
    let policy = config().addr_policy;
    if policy & ADDR_POLICY_PREFIXES != 0 {
        let matched = if family == FAMILY_V4 {
            let key = LpmKey::new(32, [addr[0], addr[1], addr[2], addr[3]]);
            MPTCP_ALLOW_V4.get(&key).is_some()
        } else {
            MPTCP_ALLOW_V6.get(&LpmKey::new(128, *addr)).is_some()
        };
        if !matched {
            return false;
        }
    }
    policy & ADDR_POLICY_PORTS == 0 || MPTCP_ALLOWPORT.get_ptr(port).is_some()
}

/// Whether this source may send another MP_JOIN SYN now (GCRA per source address).
#[inline(always)]
pub(crate) fn join_syn_conforms(seg: &TcpSegment) -> bool {
    let config = config();
    if config.join_syn_rate == 0 {
        return true;
    }
    let key = JoinRateKey {
        addr: seg.flow.saddr,
        family: seg.flow.family,
        pad: [0; 3],
    };
    let interval = NS_PER_S / u64::from(config.join_syn_rate);
    // GCRA keeps its long-run rate on the tick's time; only the instant of a refill is coarser.
    let now = now_coarse_ns();
    let Some(tat) = MPTCP_JOINRATE.get_ptr_mut(&key) else {
        let _ = MPTCP_JOINRATE.insert(&key, &(now + interval), BPF_ANY);
        return true;
    };
    // SAFETY: map value pointer; a racing CPU only makes the limit slightly looser.
    unsafe {
        let (ok, next) = gcra(*tat, now, interval, u64::from(config.join_syn_burst));
        if ok {
            *tat = next;
        }
        ok
    }
}

/// MP_JOIN on a received SYN, SYN/ACK or third ACK (protocol doc §4): the SYN's token must be
/// known; the SYN/ACK and third-ACK HMACs are prepared as jobs.
#[inline(never)]
fn join<C: PacketCtx>(
    frame: &Frame<C>,
    seg: &TcpSegment,
    opt: &OptRef,
    checks: &mut FrameChecks,
) -> Counter {
    let Some(option) = read_join(frame, *opt) else {
        return Counter::Truncated;
    };
    match option {
        Join::Syn {
            addr_id,
            token,
            nonce,
            ..
        } => {
            checks.note.token = token;
            let token_ref = match join_token(&token) {
                JoinToken::Known(token_ref) => token_ref,
                JoinToken::Unknown => return join_syn_reason(false, checks.mode),
                JoinToken::Stale => return unknown(Counter::JoinStateMissing, checks.mode),
            };
            // After the token: a blind join is dropped anyway, and must not spend the budget
            // of the source address it spoofs.
            if !join_syn_conforms(seg) {
                return join_syn_rate_reason(checks.mode);
            }
            if !keeps_pending_join(&seg.flow, &nonce) {
                open_pending_join(&seg.flow, &token_ref, addr_id, nonce);
            }
            Counter::JoinSynKnownToken
        }
        Join::SynAck { hmac, nonce, .. } => {
            let initiator_to_responder = seg.flow.reversed();
            let Some(state) = fresh_join(&initiator_to_responder) else {
                return unknown(Counter::JoinStateMissing, checks.mode);
            };
            // SAFETY: map value pointer from a successful lookup.
            let state = unsafe { *state };
            let conn = match trusted_conn(state.conn_id) {
                Ok(conn) => conn,
                Err(Counter::UntrustedConn) => return Counter::UntrustedConn,
                Err(_) => return unknown(Counter::JoinStateMissing, checks.mode),
            };
            // HMAC(Key-B || Key-A, R-B || R-A): the responder is the sender.
            let job = &mut checks.jobs[JOIN_JOB_SLOT];
            load_keys(conn, state.initiator_role ^ 1, job);
            job.block = join_block(&nonce, &state.nonce_initiator);
            job.expected[..8].copy_from_slice(&hmac);
            job.conn_id = state.conn_id;
            job.flow = initiator_to_responder;
            job.nonce_responder = nonce;
            job.initiator_role = state.initiator_role;
            job.kind = JOB_JOIN_SYNACK;
            Counter::MptcpOther
        }
        Join::Ack { hmac } => {
            let Some(state) = fresh_join(&seg.flow) else {
                return unknown(Counter::JoinStateMissing, checks.mode);
            };
            // SAFETY: map value pointer from a successful lookup.
            let state = unsafe { *state };
            if state.flags & JOIN_HAVE_RESPONDER_NONCE == 0 {
                return unknown(Counter::JoinStateMissing, checks.mode);
            }
            let conn = match trusted_conn(state.conn_id) {
                Ok(conn) => conn,
                Err(Counter::UntrustedConn) => return Counter::UntrustedConn,
                Err(_) => return unknown(Counter::JoinStateMissing, checks.mode),
            };

            // HMAC(Key-A || Key-B, R-A || R-B): the initiator is the sender.
            let job = &mut checks.jobs[JOIN_JOB_SLOT];
            load_keys(conn, state.initiator_role, job);
            job.block = join_block(&state.nonce_initiator, &state.nonce_responder);
            job.expected = hmac;
            job.conn_id = state.conn_id;
            job.flow = seg.flow;
            job.initiator_role = state.initiator_role;
            job.kind = JOB_JOIN_ACK;
            Counter::MptcpOther
        }
    }
}

/// Whether an MP_JOIN SYN must leave the pending join of its 4-tuple as it is: one that is
/// fresh and not yet validated keeps its first nonce, as Linux keeps its request socket (a
/// retransmission carries the same nonce; a SYN with another one is a forgery or a stale copy).
#[inline(always)]
fn keeps_pending_join(key: &FlowKey, nonce: &[u8; 4]) -> bool {
    let Some(state) = MPTCP_JOINS.get_ptr(key) else {
        return false;
    };
    // SAFETY: map value pointer from a successful lookup.
    let (created_ns, flags, first_nonce) = unsafe {
        (
            (*state).created_ns,
            (*state).flags,
            (*state).nonce_initiator,
        )
    };
    if !join_state_fresh(created_ns, now_ns()) || flags & (JOIN_SYNACK_VALID | JOIN_ACK_VALID) != 0
    {
        return false;
    }
    if first_nonce != *nonce {
        count(Counter::JoinSynPendingKept);
    }
    true
}

/// A received MP_FASTCLOSE: it must carry the receiver's key; then the connection is over.
#[inline(never)]
fn fastclose<C: PacketCtx>(
    frame: &Frame<C>,
    seg: &TcpSegment,
    opt: &OptRef,
    checks: &mut FrameChecks,
) -> Counter {
    match fastclose_ends_conn(frame, seg, opt, checks) {
        Ok(key_ok) => fastclose_reason(key_ok, checks.mode),
        Err(Counter::MptcpOther) => unknown(Counter::FastcloseUnknownConn, checks.mode),
        Err(reason) => reason,
    }
}

/// Queues a record of a dropped or would-drop frame for the loader (the frame's first bytes
/// included), within the per-CPU event rate, and counts what happened to it.
#[inline(never)]
pub(crate) fn drop_event<const FRAGS: bool>(ctx: &XdpContext, reason: Counter) {
    let Some(config) = MPTCP_CONFIG.get(0) else {
        return;
    };
    let (rate, burst) = (u64::from(config.event_rate), u64::from(config.event_burst));
    let Some(tat) = MPTCP_EVBUDGET.get_ptr_mut(0) else {
        return;
    };
    let now = now_coarse_ns();
    // SAFETY: per-CPU slot.
    let (conforms, next) = gcra(unsafe { *tat }, now, NS_PER_S / rate.max(1), burst);
    if rate == 0 || !conforms {
        count(Counter::DropEventRateLimited);
        return;
    }
    // SAFETY: per-CPU slot.
    unsafe { *tat = next };
    let Some(scratch) = MPTCP_FRAME.get_ptr(0) else {
        return;
    };
    let Some(mut entry) = MPTCP_DROPS.reserve::<DropEvent>(0) else {
        count(Counter::DropEventLost);
        return;
    };
    // The whole frame: in a multi-buffer frame data..data_end is only the first buffer.
    let frame_len = if FRAGS {
        // SAFETY: helper on this program's own context.
        (unsafe { bpf_xdp_get_buff_len(ctx.ctx) }) as usize
    } else {
        ctx.data_end() - ctx.data()
    };
    let snap_len = frame_len.min(DROP_SNAP_LEN);
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved record; every field is written before submit. `scratch` is
    // this invocation's per-CPU value (the frame's note and segment).
    unsafe {
        let note = &(*scratch).checks.note;
        (*e).seen_ns = now;
        (*e).flow = (*scratch).walk.seg.flow;
        (*e).ifindex = ctx.ifindex();
        (*e).reason = reason as u32;
        (*e).dropped = u8::from(drops(reason));
        (*e).announced_family = note.family;
        (*e).announced_id = note.id;
        (*e).pad = 0;
        (*e).token = note.token;
        (*e).announced_addr = note.addr;
        (*e).announced_port = note.port;
        (*e).frame_len = frame_len.min(usize::from(u16::MAX)) as u16;
        (*e).pad2 = [0; 2];
        // The snapshot: 1..=DROP_SNAP_LEN bytes (bpf_xdp_load_bytes reads across buffers).
        // Written as mask-and-add (equal to snap_len for 1..=DROP_SNAP_LEN) because the
        // verifier tracks the bounds of that arithmetic, not of comparisons LLVM may move to
        // another register.
        let len = ((snap_len as u32).wrapping_sub(1) & (DROP_SNAP_LEN as u32 - 1)) + 1;
        let copied = snap_len > 0
            && if FRAGS {
                bpf_xdp_load_bytes(ctx.ctx, 0, (&raw mut (*e).snap).cast(), len) == 0
            } else {
                copy_single_buffer(ctx, &mut (*e).snap, len as usize)
            };
        (*e).snap_len = if copied { len as u16 } else { 0 };
    }
    entry.submit(0);
    count(Counter::DropEventSent);
}

/// The first `len` bytes of a single-buffer frame into `snap`: `bpf_xdp_load_bytes` for
/// kernels without it. Returns false if the frame is shorter.
#[inline(always)]
fn copy_single_buffer(ctx: &XdpContext, snap: &mut [u8; DROP_SNAP_LEN], len: usize) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    for (i, byte) in snap.iter_mut().enumerate() {
        if i >= len {
            break;
        }
        // As in `Frame::load`: keeps the `p + 1 > end` form the verifier learns a range from.
        let p = core::hint::black_box(data + i);
        if p + 1 > end {
            return false;
        }
        // SAFETY: p is inside the frame, checked just above.
        *byte = unsafe { *(p as *const u8) };
    }
    true
}
