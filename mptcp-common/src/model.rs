//! A host-side reference of the fast path (feature `testing`): the same decisions as the XDP and
//! tc programs, written plainly over `HashMap`s with the shared parser, HMAC and verdict code.
//! The differential tests feed the same frames to both and require the same verdict and reason
//! for every frame.
//!
//! Written from the rules (README, protocol document), not by translating the eBPF code: its
//! structure (staging in per-CPU maps, jobs run last) exists for the verifier, this one for
//! reading. What it leaves out does not change verdicts: activity times, midstate caching, key
//! and drop events. The join-SYN rate limit is time based and only modelled when disabled.

use core::ops::ControlFlow;
use std::boxed::Box;
use std::collections::HashMap;
use std::vec::Vec;

use crate::counters::Counter;
use crate::hmac::{
    add_addr_truncated, finish, join_block, join_synack_truncated, midstate, token_and_idsn,
};
use crate::maps::{
    Config, ConnState, FlowKey, Token, ADDR_POLICY_PORTS, ADDR_POLICY_PREFIXES, FAMILY_V4, ROLE_A,
    ROLE_B,
};
use crate::packet::{
    parse_tcp, read_add_addr, read_capable_keys, read_fastclose_key, read_join, walk_options, Join,
    TcpSegment,
};
use crate::validate::{
    add_addr_block, add_addr_policy_reason, add_addr_reason, capable_keys_reason,
    capable_other_keys_reason, drops, end_flags, fastclose_reason, join_ack_reason,
    join_syn_reason, join_synack_reason, options_reason, subflow_end_action, unknown_conn_reason,
    SubflowEnd,
};

/// A tracked connection.
#[derive(Clone, Copy, Debug)]
struct Conn {
    key_a: [u8; 8],
    key_b: [u8; 8],
    subflows: u64,
    conflict: bool,
    /// Its tokens were installed (at the end of the frame that learned it). The fast path keeps
    /// them in the connection's state from then on and removes them with it at once.
    tokens_installed: bool,
}

impl Conn {
    fn key(&self, role: u8) -> [u8; 8] {
        if role == ROLE_A {
            self.key_a
        } else {
            self.key_b
        }
    }
}

/// A tracked subflow (canonical key).
#[derive(Clone, Copy, Debug)]
struct Subflow {
    conn_id: u64,
    /// Role of the canonical key's source host.
    src_role: u8,
    /// Closing marks (`FIN_FROM_*`, `RST_SEEN`).
    closing: u8,
    /// Past its MP_CAPABLE handshake (`FLOW_ESTABLISHED`).
    established: bool,
}

/// A pending join, keyed initiator -> responder.
#[derive(Clone, Copy, Debug)]
struct PendingJoin {
    conn_id: u64,
    nonce_initiator: [u8; 4],
    nonce_responder: Option<[u8; 4]>,
    initiator_role: u8,
    /// Its SYN/ACK or third ACK validated.
    complete: bool,
}

/// What the frame asks of the tokens once it has been examined.
enum TokenOp {
    Install(u64, [u8; 8], [u8; 8]),
    Remove(u64, [u8; 8], [u8; 8]),
}

/// An HMAC check decided after the frame's tokens are handled.
type DeferredCheck = Box<dyn FnOnce(&mut Model) -> Counter>;

/// The reference validator's state and configuration.
#[derive(Default)]
pub struct Model {
    /// Global configuration (the join-SYN rate limit must be 0: it is time based).
    pub config: Config,
    /// Interface index -> mode.
    pub iface_modes: HashMap<u32, u32>,
    /// Allowed IPv4 prefixes (address, prefix length).
    pub allow_v4: Vec<([u8; 4], u32)>,
    /// Allowed IPv6 prefixes.
    pub allow_v6: Vec<([u8; 16], u32)>,
    /// Allowed ports (wire bytes; `[0, 0]` is "no port").
    pub allow_ports: Vec<[u8; 2]>,
    conns: HashMap<u64, Conn>,
    flows: HashMap<FlowKey, Subflow>,
    tokens: HashMap<Token, (u64, u8)>,
    joins: HashMap<FlowKey, PendingJoin>,
    token_op: Option<TokenOp>,
}

fn prefix_matches(addr: &[u8], prefix: &[u8], len: u32) -> bool {
    let full = (len / 8) as usize;
    if addr[..full] != prefix[..full] {
        return false;
    }
    let rest = len % 8;
    rest == 0 || (addr[full] ^ prefix[full]) >> (8 - rest) == 0
}

impl Model {
    /// A model with this configuration.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Model {
            config,
            ..Model::default()
        }
    }

    /// What the model knows of a token (for failure messages).
    #[must_use]
    pub fn describe_token(&self, token: &Token) -> std::string::String {
        match self.tokens.get(token) {
            None => std::string::String::from("token unknown"),
            Some((conn_id, role)) => std::format!(
                "token -> conn {conn_id:#x} role {role}, conn {}",
                match self.conns.get(conn_id) {
                    None => "missing".into(),
                    Some(c) => std::format!(
                        "present, subflows {}, tokens installed {}",
                        c.subflows,
                        c.tokens_installed
                    ),
                }
            ),
        }
    }

    /// Number of tracked connections.
    #[must_use]
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }

    fn mode(&self, ifindex: u32) -> u32 {
        self.iface_modes
            .get(&ifindex)
            .copied()
            .unwrap_or(self.config.mode)
    }

    fn unknown(&self, pass: Counter, ifindex: u32) -> Counter {
        unknown_conn_reason(pass, self.config.unknown_conn, self.mode(ifindex))
    }

    /// The reason the fast path gives this frame arriving on `ifindex` (or leaving, with
    /// `egress`: the egress program then counts it as [`Counter::Egress`] and never drops),
    /// updating the state the same way. The ingress verdict is [`drops`] of it.
    pub fn classify(&mut self, frame: &[u8], ifindex: u32, egress: bool) -> Counter {
        assert_eq!(
            self.config.crypto_rate, 0,
            "the model has no clock for crypto budgets"
        );
        self.token_op = None;
        let reason = self.examine(frame, ifindex, egress);
        match self.token_op.take() {
            Some(TokenOp::Install(conn_id, key_a, key_b)) => {
                for (key, role) in [(key_a, ROLE_A), (key_b, ROLE_B)] {
                    let token = token_and_idsn(&key).0;
                    // A token another tracked connection holds stays with it.
                    let taken = self.tokens.get(&token).is_some_and(|(owner, _)| {
                        *owner != conn_id && self.conns.contains_key(owner)
                    });
                    if !taken {
                        self.tokens.insert(token, (conn_id, role));
                    }
                }
                if let Some(conn) = self.conns.get_mut(&conn_id) {
                    conn.tokens_installed = true;
                }
            }
            Some(TokenOp::Remove(conn_id, key_a, key_b)) => {
                self.remove_tokens(conn_id, &key_a, &key_b);
            }
            None => {}
        }
        reason
    }

    /// Whether the fast path drops a frame classified as `reason`.
    #[must_use]
    pub fn drops(reason: Counter) -> bool {
        drops(reason)
    }

    fn examine(&mut self, frame: &[u8], ifindex: u32, egress: bool) -> Counter {
        let seg = match parse_tcp(frame) {
            Ok(seg) => seg,
            Err(reason) => return reason,
        };
        // The egress frames of the differential tests are the host's own (BPF_PROG_TEST_RUN
        // gives them no ingress interface): its RST, SYN and SYN/ACK end a subflow.
        let from_host = egress;
        let ends = seg.flags & end_flags(egress) != 0;
        if seg.opts_start >= seg.opts_end && !ends {
            return Counter::TcpNoMptcp;
        }
        let opts = walk_options(frame, &seg);
        // Each option's outcome; a join's and ADD_ADDRs' HMAC outcomes come after the tokens
        // (the fast path runs its crypto last), which only matters for their side effects.
        let mut reason = match options_reason(&opts) {
            ControlFlow::Break(reason) => {
                if ends {
                    self.subflow_end(&seg, from_host);
                }
                return reason;
            }
            ControlFlow::Continue(reason) => reason,
        };
        if let Some(opt) = opts.capable_keys {
            reason = match read_capable_keys(frame, opt) {
                None => reason.max(Counter::Truncated),
                Some((key_a, key_b)) => {
                    reason.max(self.learn(&seg, key_a, key_b, ifindex, from_host))
                }
            };
        }
        let mut deferred: Vec<DeferredCheck> = Vec::new();
        if let Some(opt) = opts.join {
            match read_join(frame, opt) {
                None => reason = reason.max(Counter::Truncated),
                Some(join) => match self.join(&seg, join, ifindex, egress) {
                    Ok(r) => reason = reason.max(r),
                    Err(check) => deferred.push(check),
                },
            }
        }
        if let Some(opt) = opts.fastclose {
            reason = match read_fastclose_key(frame, opt) {
                None => reason.max(Counter::Truncated),
                Some(key) => reason.max(self.fastclose(&seg, key, ifindex, egress)),
            };
        }
        let mut add_addr_checks = Vec::new();
        if !egress {
            for opt in opts.add_addrs.into_iter().flatten() {
                match self.add_addr(frame, &seg, opt, ifindex) {
                    Ok(r) => reason = reason.max(r),
                    Err(check) => add_addr_checks.push(check),
                }
            }
        }
        // A valid MP_FASTCLOSE on an RST is judged above, before the RST is looked at.
        if ends {
            self.subflow_end(&seg, from_host);
        }
        // The HMAC checks last, as in the fast path (their side effects come after the rest).
        for r in add_addr_checks {
            reason = reason.max(r);
        }
        for check in deferred {
            reason = reason.max(check(self));
        }
        reason
    }

    fn flow_of(&self, seg: &TcpSegment) -> Option<(FlowKey, Subflow, u8)> {
        let (key, swapped) = seg.flow.canonical();
        let sub = *self.flows.get(&key)?;
        let sender_role = if swapped {
            sub.src_role ^ 1
        } else {
            sub.src_role
        };
        Some((key, sub, sender_role))
    }

    fn learn(
        &mut self,
        seg: &TcpSegment,
        key_a: [u8; 8],
        key_b: [u8; 8],
        ifindex: u32,
        from_host: bool,
    ) -> Counter {
        let mode = self.mode(ifindex);
        let conn_id = ConnState::id_of(&key_a);
        let (flow_key, swapped) = seg.flow.canonical();
        if let Some(sub) = self.flows.get_mut(&flow_key) {
            if let Some(conn) = self.conns.get_mut(&sub.conn_id) {
                let same = conn.key_a == key_a && conn.key_b == key_b;
                let reason = capable_keys_reason(same, sub.established, mode);
                if same {
                    sub.established = true;
                }
                if reason == Counter::KeysConflict {
                    conn.conflict = true;
                }
                return reason;
            }
        }
        let new_conn = match self.conns.get(&conn_id) {
            Some(conn) if conn.key_b != key_b => return capable_other_keys_reason(mode),
            Some(_) => false,
            None => {
                self.conns.insert(
                    conn_id,
                    Conn {
                        key_a,
                        key_b,
                        subflows: 1,
                        conflict: false,
                        tokens_installed: false,
                    },
                );
                true
            }
        };
        let src_role = if swapped { ROLE_B } else { ROLE_A };
        self.flows.insert(
            flow_key,
            Subflow {
                conn_id,
                src_role,
                closing: 0,
                established: from_host,
            },
        );
        if !new_conn {
            // Another subflow carrying the same keys: it joins the connection.
            if let Some(conn) = self.conns.get_mut(&conn_id) {
                conn.subflows += 1;
            }
            return Counter::KeysKnown;
        }
        self.token_op = Some(TokenOp::Install(conn_id, key_a, key_b));
        Counter::KeysLearned
    }

    /// Removes the tokens of these keys that name `conn_id` (a token another connection holds
    /// after a collision stays).
    fn remove_tokens(&mut self, conn_id: u64, key_a: &[u8; 8], key_b: &[u8; 8]) {
        for key in [key_a, key_b] {
            let token = token_and_idsn(key).0;
            if self
                .tokens
                .get(&token)
                .is_some_and(|(owner, _)| *owner == conn_id)
            {
                self.tokens.remove(&token);
            }
        }
    }

    /// A connection ends: its tokens go at once; if they were only to be installed at the end of
    /// this frame, that is replaced by their removal (the fast path has one token job a frame).
    fn forget(&mut self, conn_id: u64) {
        if let Some(conn) = self.conns.remove(&conn_id) {
            if conn.tokens_installed {
                self.remove_tokens(conn_id, &conn.key_a, &conn.key_b);
            } else {
                self.token_op = Some(TokenOp::Remove(conn_id, conn.key_a, conn.key_b));
            }
        }
    }

    /// A FIN, RST (or the host's own SYN) on a tracked subflow: see `subflow_end_action`.
    fn subflow_end(&mut self, seg: &TcpSegment, from_host: bool) {
        let (key, swapped) = seg.flow.canonical();
        let Some(sub) = self.flows.get(&key).copied() else {
            return;
        };
        let tracked = self.conns.contains_key(&sub.conn_id);
        match subflow_end_action(sub.closing, seg.flags, swapped, from_host, tracked) {
            SubflowEnd::Mark(closing) => {
                if let Some(sub) = self.flows.get_mut(&key) {
                    sub.closing = closing;
                }
            }
            SubflowEnd::End => {
                self.flows.remove(&key);
                if let Some(conn) = self.conns.get_mut(&sub.conn_id) {
                    conn.subflows = conn.subflows.wrapping_sub(1);
                    if conn.subflows == 0 {
                        self.forget(sub.conn_id);
                    }
                }
            }
        }
    }

    /// The connection of `conn_id` if it is there and trusted; else the reason to give.
    fn trusted(&self, conn_id: u64, pass: Counter, ifindex: u32) -> Result<Conn, Counter> {
        match self.conns.get(&conn_id) {
            None => Err(self.unknown(pass, ifindex)),
            Some(conn) if conn.conflict => Err(Counter::UntrustedConn),
            Some(conn) => Ok(*conn),
        }
    }

    fn allowed(&self, family: u8, addr: &[u8; 16], port: [u8; 2]) -> bool {
        let policy = self.config.addr_policy;
        if policy & ADDR_POLICY_PREFIXES != 0 {
            let matched = if family == FAMILY_V4 {
                self.allow_v4
                    .iter()
                    .any(|(p, len)| prefix_matches(&addr[..4], p, *len))
            } else {
                self.allow_v6
                    .iter()
                    .any(|(p, len)| prefix_matches(addr, p, *len))
            };
            if !matched {
                return false;
            }
        }
        policy & ADDR_POLICY_PORTS == 0 || self.allow_ports.contains(&port)
    }

    /// Ok(reason) when decided without an HMAC, Err(reason of the HMAC check) otherwise (the
    /// check has no side effect, so it is done at once).
    fn add_addr(
        &mut self,
        frame: &[u8],
        seg: &TcpSegment,
        opt: crate::packet::OptRef,
        ifindex: u32,
    ) -> Result<Counter, Counter> {
        let Some(a) = read_add_addr(frame, opt) else {
            return Ok(Counter::Truncated);
        };
        if !self.allowed(a.family, &a.addr, a.port) {
            return Ok(add_addr_policy_reason(self.mode(ifindex)));
        }
        let Some((key, sub, announcer)) = self.flow_of(seg) else {
            return Ok(self.unknown(Counter::AddAddrUnknownConn, ifindex));
        };
        // An ADD_ADDR comes after the handshake: the subflow is established.
        if let Some(sub) = self.flows.get_mut(&key) {
            sub.established = true;
        }
        let conn = match self.trusted(sub.conn_id, Counter::AddAddrUnknownConn, ifindex) {
            Ok(conn) => conn,
            Err(reason) => return Ok(reason),
        };
        let mid = midstate(&conn.key(announcer), &conn.key(announcer ^ 1));
        let ok = add_addr_truncated(&finish(&mid, &add_addr_block(&a))) == a.hmac;
        Err(add_addr_reason(ok, self.mode(ifindex)))
    }

    /// Ok(reason) when decided now; Err(check) for an HMAC check that runs after the tokens.
    fn join(
        &mut self,
        seg: &TcpSegment,
        join: Join,
        ifindex: u32,
        egress: bool,
    ) -> Result<Counter, DeferredCheck> {
        match join {
            Join::Syn { token, nonce, .. } => {
                assert_eq!(self.config.join_syn_rate, 0, "the model has no clock");
                let Some(&(conn_id, token_role)) = self.tokens.get(&token) else {
                    return Ok(if egress {
                        Counter::MptcpOther
                    } else {
                        join_syn_reason(false, self.mode(ifindex))
                    });
                };
                if !self.conns.contains_key(&conn_id) {
                    return Ok(if egress {
                        Counter::MptcpOther
                    } else {
                        self.unknown(Counter::JoinStateMissing, ifindex)
                    });
                }
                // A pending join keeps its first SYN's nonce, as Linux keeps its request socket
                // (the model has no clock: every pending join is fresh).
                if !egress && self.joins.get(&seg.flow).is_some_and(|p| !p.complete) {
                    return Ok(Counter::JoinSynKnownToken);
                }
                self.joins.insert(
                    seg.flow,
                    PendingJoin {
                        conn_id,
                        nonce_initiator: nonce,
                        nonce_responder: None,
                        initiator_role: token_role ^ 1,
                        complete: false,
                    },
                );
                Ok(if egress {
                    Counter::MptcpOther
                } else {
                    Counter::JoinSynKnownToken
                })
            }
            Join::SynAck { hmac, nonce, .. } => {
                let key = seg.flow.reversed();
                let Some(state) = self.joins.get_mut(&key) else {
                    return Ok(if egress {
                        Counter::MptcpOther
                    } else {
                        self.unknown(Counter::JoinStateMissing, ifindex)
                    });
                };
                if egress {
                    state.nonce_responder = Some(nonce);
                    return Ok(Counter::MptcpOther);
                }
                let state = *state;
                let conn = match self.trusted(state.conn_id, Counter::JoinStateMissing, ifindex) {
                    Ok(conn) => conn,
                    Err(reason) => return Ok(reason),
                };
                let responder = state.initiator_role ^ 1;
                let mode = self.mode(ifindex);
                Err(Box::new(move |m: &mut Model| {
                    let mid = midstate(&conn.key(responder), &conn.key(state.initiator_role));
                    let digest = finish(&mid, &join_block(&nonce, &state.nonce_initiator));
                    let ok = join_synack_truncated(&digest) == hmac;
                    if ok {
                        if let Some(s) = m.joins.get_mut(&key) {
                            s.nonce_responder = Some(nonce);
                            s.complete = true;
                        }
                        m.track_join(&key, state.conn_id, state.initiator_role);
                    }
                    join_synack_reason(ok, mode)
                }))
            }
            Join::Ack { hmac } => {
                if egress {
                    return Ok(Counter::MptcpOther);
                }
                let key = seg.flow;
                let state = match self.joins.get(&key) {
                    Some(s) if s.nonce_responder.is_some() => *s,
                    _ => return Ok(self.unknown(Counter::JoinStateMissing, ifindex)),
                };
                let conn = match self.trusted(state.conn_id, Counter::JoinStateMissing, ifindex) {
                    Ok(conn) => conn,
                    Err(reason) => return Ok(reason),
                };
                let mode = self.mode(ifindex);
                Err(Box::new(move |m: &mut Model| {
                    let init = state.initiator_role;
                    let mid = midstate(&conn.key(init), &conn.key(init ^ 1));
                    let nonce_responder = state.nonce_responder.unwrap_or_default();
                    let digest =
                        finish(&mid, &join_block(&state.nonce_initiator, &nonce_responder));
                    let bytes: Vec<u8> = digest.iter().flat_map(|w| w.to_be_bytes()).collect();
                    let ok = bytes[..20] == hmac;
                    if ok {
                        if let Some(s) = m.joins.get_mut(&key) {
                            s.complete = true;
                        }
                        m.track_join(&key, state.conn_id, init);
                    }
                    join_ack_reason(ok, mode)
                }))
            }
        }
    }

    /// A join's HMAC was right: its subflow joins the connection (once).
    fn track_join(&mut self, initiator_to_responder: &FlowKey, conn_id: u64, initiator_role: u8) {
        let (key, swapped) = initiator_to_responder.canonical();
        if self.flows.contains_key(&key) {
            return;
        }
        let src_role = if swapped {
            initiator_role ^ 1
        } else {
            initiator_role
        };
        self.flows.insert(
            key,
            Subflow {
                conn_id,
                src_role,
                closing: 0,
                // Its HMAC proved the keys.
                established: true,
            },
        );
        if let Some(conn) = self.conns.get_mut(&conn_id) {
            conn.subflows += 1;
        }
    }

    fn fastclose(&mut self, seg: &TcpSegment, key: [u8; 8], ifindex: u32, egress: bool) -> Counter {
        let unknown = |m: &Model| {
            if egress {
                Counter::MptcpOther
            } else {
                m.unknown(Counter::FastcloseUnknownConn, ifindex)
            }
        };
        let Some((_, sub, sender)) = self.flow_of(seg) else {
            return unknown(self);
        };
        let conn = match self.conns.get(&sub.conn_id) {
            None => return unknown(self),
            Some(conn) if conn.conflict => return Counter::UntrustedConn,
            Some(conn) => *conn,
        };
        let ok = key == conn.key(sender ^ 1);
        if ok {
            self.forget(sub.conn_id);
        }
        if egress {
            Counter::MptcpOther
        } else {
            fastclose_reason(ok, self.mode(ifindex))
        }
    }
}
