//! Egress: what the tc program learns from the segments the host sends (or forwards). It never
//! drops: the host's own MP_CAPABLE keys, the nonces of its joins (needed to check the peer's
//! join HMACs), its MP_FASTCLOSEs and subflow ends.

use mptcp_common::{
    counters::Counter,
    maps::{FrameChecks, JOIN_HAVE_RESPONDER_NONCE},
    packet::{read_join, Join, OptRef, TcpSegment, WalkState},
};

use crate::{
    conn::{
        begin, fastclose_ends_conn, finish, fresh_join, join_token, open_pending_join, JoinToken,
    },
    context::{Frame, PacketCtx},
    maps::count,
};

/// Learns from the MPTCP options of a segment the host sends; the reason is for counting only.
#[inline(always)]
pub(crate) fn decide<C: PacketCtx>(ctx: &C, walk: &WalkState, checks: &mut FrameChecks) -> Counter {
    let frame = Frame(ctx);
    let seg = &walk.seg;
    let opts = &walk.found;
    let mut reason = match begin::<C, true>(ctx, seg, opts, checks) {
        core::ops::ControlFlow::Break(reason) => return reason,
        core::ops::ControlFlow::Continue(reason) => reason,
    };
    if let Some(opt) = opts.join {
        reason = reason.max(join(&frame, seg, &opt));
    }
    if let Some(opt) = opts.fastclose {
        reason = reason.max(fastclose(&frame, seg, &opt, checks));
    }
    finish::<C, true>(ctx, seg, checks);
    reason
}

/// MP_JOIN sent by the host: remember its nonces. As initiator (SYN), open the pending join the
/// peer's SYN/ACK and the host's third ACK refer to; as responder (SYN/ACK), remember R-B for
/// the check of the peer's third ACK.
#[inline(never)]
fn join<C: PacketCtx>(frame: &Frame<C>, seg: &TcpSegment, opt: &OptRef) -> Counter {
    let Some(option) = read_join(frame, *opt) else {
        return Counter::Truncated;
    };
    match option {
        Join::Syn {
            addr_id,
            token,
            nonce,
            ..
        } => match join_token(&token) {
            JoinToken::Known(token_ref) => {
                open_pending_join(&seg.flow, &token_ref, addr_id, nonce);
                count(Counter::EgressJoinNonce);
            }
            JoinToken::Unknown => count(Counter::EgressJoinUnknownToken),
            JoinToken::Stale => {}
        },
        Join::SynAck { nonce, .. } => {
            if let Some(state) = fresh_join(&seg.flow.reversed()) {
                // SAFETY: map value pointer from a successful lookup.
                unsafe {
                    (*state).nonce_responder = nonce;
                    (*state).flags |= JOIN_HAVE_RESPONDER_NONCE;
                }
                count(Counter::EgressJoinNonce);
            }
        }
        Join::Ack { .. } => {}
    }
    Counter::MptcpOther
}

/// The host's own MP_FASTCLOSE ends the connection when its key is right. (A function of its
/// own, as on ingress: inlined, its frame would add to `prepare`'s and exceed the stack.)
#[inline(never)]
fn fastclose<C: PacketCtx>(
    frame: &Frame<C>,
    seg: &TcpSegment,
    opt: &OptRef,
    checks: &mut FrameChecks,
) -> Counter {
    match fastclose_ends_conn(frame, seg, opt, checks) {
        Ok(_) => Counter::MptcpOther,
        Err(not_judged) => not_judged,
    }
}
