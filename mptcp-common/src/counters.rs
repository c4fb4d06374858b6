//! Counter codes. Every packet the XDP program sees increments exactly one *packet reason*
//! (so their sum is the number of packets); a few *auxiliary* counters count events inside a
//! packet's processing. Names are what `mptcp-loader stats` prints.

/// Declares a counter enum (variants in index order) with `ALL` and `name()`: the fast path's
/// [`Counter`] here, the loader's own counters in `mptcp-loader`.
#[macro_export]
macro_rules! named_counters {
    (
        $(#[$attr:meta])*
        pub enum $enum:ident {
            $( $(#[doc = $doc:literal])* $variant:ident = $name:literal, )*
        }
    ) => {
        $(#[$attr])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $enum { $( $(#[doc = $doc])* $variant, )* }

        impl $enum {
            /// Every counter, in index order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant,)*];
            /// The name printed by `stats` and used as the JSON key.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self { $($enum::$variant => $name,)* }
            }
        }
    };
}

crate::named_counters! {
    /// Index into the per-CPU counter array.
    #[repr(u32)]
    pub enum Counter {
        /// Not IPv4/IPv6 TCP (ARP, UDP, ICMP, ...): passed.
        NotTcp = "not_tcp",
        /// An IP fragment: passed untouched (the TCP header may not be in it).
        Fragment = "ip_fragment",
        /// Headers end before they should (frame shorter than IP/TCP headers claim): passed.
        Truncated = "truncated",
        /// More VLAN tags or IPv6 extension headers than the parser walks: passed.
        HeaderChainTooLong = "header_chain_too_long",
        /// TCP segment without any MPTCP option: passed.
        TcpNoMptcp = "tcp_no_mptcp",
        /// MPTCP options that need no check (DSS, MP_PRIO, SYN MP_CAPABLE, ...): passed.
        MptcpOther = "mptcp_other",
        /// MP_CAPABLE carrying both keys of a connection not seen before: keys learned, passed.
        KeysLearned = "keys_learned",
        /// MP_CAPABLE carrying both keys of a known connection (retransmission, MPC+data): passed.
        KeysKnown = "keys_known",
        /// MP_CAPABLE with keys different from those learned on a subflow still in its handshake
        /// (see `FLOW_ESTABLISHED`): which keys the hosts use cannot be told, so the connection is
        /// marked untrusted. Later, other keys are foreign (`capable_other_keys_*`).
        KeysConflict = "keys_conflict",
        /// ADD_ADDR whose truncated HMAC is right: passed.
        AddAddrValid = "add_addr_valid",
        /// ADD_ADDR with a wrong HMAC, enforce mode: dropped.
        AddAddrBadHmacDropped = "add_addr_bad_hmac_dropped",
        /// ADD_ADDR with a wrong HMAC, monitor mode: passed and counted.
        AddAddrBadHmacWouldDrop = "add_addr_bad_hmac_would_drop",
        /// ADD_ADDR echo (E=1, carries no HMAC): passed.
        AddAddrEcho = "add_addr_echo",
        /// ADD_ADDR on a subflow whose connection keys are unknown: passed (fail-open).
        AddAddrUnknownConn = "add_addr_unknown_conn",
        /// ADD_ADDR, MP_JOIN or MP_FASTCLOSE of a connection marked untrusted by a key conflict:
        /// passed.
        UntrustedConn = "untrusted_conn",
        /// Malformed options (bad TCP option length, bad MPTCP length/E combination): passed.
        Malformed = "malformed",
        /// MP_JOIN SYN whose token names a tracked connection: passed, nonce remembered.
        JoinSynKnownToken = "join_syn_known_token",
        /// MP_JOIN SYN with a token of no tracked connection, enforce mode: dropped.
        JoinSynUnknownTokenDropped = "join_syn_unknown_token_dropped",
        /// MP_JOIN SYN with a token of no tracked connection, monitor mode: passed and counted.
        JoinSynUnknownTokenWouldDrop = "join_syn_unknown_token_would_drop",
        /// MP_JOIN SYN/ACK whose 64-bit truncated HMAC is right: passed, subflow tracked.
        JoinSynAckValid = "join_synack_valid",
        /// MP_JOIN SYN/ACK with a wrong HMAC, enforce mode: dropped.
        JoinSynAckBadHmacDropped = "join_synack_bad_hmac_dropped",
        /// MP_JOIN SYN/ACK with a wrong HMAC, monitor mode: passed and counted.
        JoinSynAckBadHmacWouldDrop = "join_synack_bad_hmac_would_drop",
        /// MP_JOIN third ACK whose 160-bit HMAC is right: passed, subflow tracked.
        JoinAckValid = "join_ack_valid",
        /// MP_JOIN third ACK with a wrong HMAC, enforce mode: dropped.
        JoinAckBadHmacDropped = "join_ack_bad_hmac_dropped",
        /// MP_JOIN third ACK with a wrong HMAC, monitor mode: passed and counted.
        JoinAckBadHmacWouldDrop = "join_ack_bad_hmac_would_drop",
        /// MP_JOIN SYN/ACK or third ACK without the handshake state needed to check it (the SYN or
        /// SYN/ACK was not seen, or expired): passed (fail-open).
        JoinStateMissing = "join_state_missing",
        /// MP_FASTCLOSE carrying the receiver's key: passed, the connection's state removed.
        FastcloseValid = "fastclose_valid",
        /// MP_FASTCLOSE with another key, enforce mode: dropped (Linux would ignore it).
        FastcloseBadKeyDropped = "fastclose_bad_key_dropped",
        /// MP_FASTCLOSE with another key, monitor mode: passed and counted.
        FastcloseBadKeyWouldDrop = "fastclose_bad_key_would_drop",
        /// MP_FASTCLOSE of a connection that is not tracked: passed.
        FastcloseUnknownConn = "fastclose_unknown_conn",
        /// ADD_ADDR announcing an address or port outside the policy's allow lists, enforce mode:
        /// dropped whatever its HMAC.
        AddAddrPolicyDropped = "add_addr_policy_dropped",
        /// ADD_ADDR outside the policy, monitor mode: passed and counted.
        AddAddrPolicyWouldDrop = "add_addr_policy_would_drop",
        /// MP_JOIN SYN over its source's rate limit, enforce mode: dropped.
        JoinSynRateLimitedDropped = "join_syn_rate_limited_dropped",
        /// MP_JOIN SYN over its source's rate limit, monitor mode: passed and counted.
        JoinSynRateLimitedWouldDrop = "join_syn_rate_limited_would_drop",
        /// Signalling of a connection the program does not know, fail-closed policy, enforce mode:
        /// dropped.
        UnknownConnDropped = "unknown_conn_dropped",
        /// The same in monitor mode: passed and counted.
        UnknownConnWouldDrop = "unknown_conn_would_drop",
        /// Segment seen by the tc egress program (the host's own traffic; never dropped). Egress
        /// segments count here and not under any other packet reason.
        Egress = "egress",
        /// Auxiliary: a key event could not be queued (ring buffer full). The fast path still works.
        KeyEventLost = "aux_key_event_lost",
        /// Auxiliary: the fast path computed a direction's midstates itself because the loader had
        /// not written them yet (the key-learning window).
        MidstateComputedInline = "aux_midstate_computed_inline",
        /// Auxiliary: the connection or flow map refused an insert.
        MapInsertFailed = "aux_map_insert_failed",
        /// Auxiliary: a subflow's connection was no longer in the map (evicted when the map was full,
        /// or expired): what the program no longer knows passes.
        FlowWithoutConn = "aux_flow_without_conn",
        /// Auxiliary: a pending MP_JOIN state was older than its lifetime and ignored.
        JoinStateExpired = "aux_join_state_expired",
        /// Auxiliary: a tracked subflow ended (RST, or FIN from both ends).
        SubflowClosed = "aux_subflow_closed",
        /// Auxiliary: a connection's state was removed because its last subflow ended or it was
        /// fast-closed.
        ConnClosed = "aux_conn_closed",
        /// Auxiliary: the egress program learned keys from an outgoing MP_CAPABLE.
        EgressKeysLearned = "aux_egress_keys_learned",
        /// Auxiliary: the egress program recorded the nonce of an outgoing MP_JOIN SYN or SYN/ACK.
        EgressJoinNonce = "aux_egress_join_nonce",
        /// Auxiliary: the egress program saw an MP_JOIN SYN whose token is not tracked.
        EgressJoinUnknownToken = "aux_egress_join_unknown_token",
        /// Auxiliary: a drop event was queued for the loader.
        DropEventSent = "aux_drop_event_sent",
        /// Auxiliary: a drop event was not queued because of the event rate limit.
        DropEventRateLimited = "aux_drop_event_rate_limited",
        /// Auxiliary: a drop event was not queued because the ring buffer was full.
        DropEventLost = "aux_drop_event_lost",
        /// Auxiliary: a connection's state was inserted into the connection map (keys learned from
        /// an MP_CAPABLE, ingress or egress). With `aux_conn_closed`, the loader's
        /// `loader_conns_expired` and the map's entry count it gives the LRU evictions. Last, so
        /// the older counters keep their indices.
        ConnInserted = "aux_conn_inserted",
        /// MP_CAPABLE carrying keys other than those of the connection it names: on a subflow past
        /// its handshake, or Key-A of a tracked connection with another Key-B. Enforce mode:
        /// dropped; the connection keeps its keys and stays judged.
        CapableOtherKeysDropped = "capable_other_keys_dropped",
        /// The same in monitor mode: passed and counted.
        CapableOtherKeysWouldDrop = "capable_other_keys_would_drop",
        /// Auxiliary: a FIN or RST not sent by this host marked a tracked subflow closing. Nothing
        /// is removed: only the host's own RST, a valid MP_FASTCLOSE, the loader or the LRU end it.
        SubflowCloseMarked = "aux_subflow_close_marked",
        /// Auxiliary: a new connection's token was already taken by another tracked connection
        /// (a collision, or a key chosen to hit it): the first keeps it.
        TokenCollision = "aux_token_collision",
        /// Auxiliary: an MP_JOIN SYN with another nonce on the 4-tuple of a pending join: the first
        /// nonce is kept, as Linux keeps its request socket.
        JoinSynPendingKept = "aux_join_syn_pending_kept",
        /// Auxiliary: an ADD_ADDR was judged against its cached tag (`MPTCP_ADDTAGS`), without
        /// computing the HMAC: a retransmission, or one more forgery naming the same address.
        AddAddrTagCached = "aux_add_addr_tag_cached",
        /// An HMAC check over the crypto budget (per CPU, per connection or per pending join; see
        /// `Config::crypto_rate`), enforce mode: dropped without computing it.
        CryptoBudgetDropped = "crypto_budget_dropped",
        /// The same in monitor mode: passed and counted, not computed.
        CryptoBudgetWouldDrop = "crypto_budget_would_drop",
    }
}

/// Number of counters: the slots of the per-CPU counter array in use.
#[allow(clippy::cast_possible_truncation, reason = "a few dozen counters")]
pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;

/// Slots of the per-CPU counter array (`max_entries`), more than [`COUNTER_COUNT`]: a release
/// that only appends counters keeps the array's layout, so it adopts the counters an earlier
/// run left pinned instead of forcing a detach. Raising it changes that layout: the first
/// restart onto such a release then needs `mptcp-loader detach`.
pub const COUNTER_CAPACITY: u32 = 128;

const _: () = assert!(COUNTER_COUNT <= COUNTER_CAPACITY, "raise COUNTER_CAPACITY");

impl Counter {
    /// Whether a packet counted under this reason is reported as a drop event: dropped, or
    /// would have been dropped in enforce mode.
    #[must_use]
    pub const fn is_event(self) -> bool {
        self.significance() >= 19
    }

    /// Whether this code is a per-packet reason (exactly one per packet) rather than auxiliary.
    #[must_use]
    pub const fn is_packet_reason(self) -> bool {
        !matches!(
            self,
            Counter::KeyEventLost
                | Counter::MidstateComputedInline
                | Counter::MapInsertFailed
                | Counter::FlowWithoutConn
                | Counter::JoinStateExpired
                | Counter::SubflowClosed
                | Counter::ConnClosed
                | Counter::EgressKeysLearned
                | Counter::EgressJoinNonce
                | Counter::EgressJoinUnknownToken
                | Counter::DropEventSent
                | Counter::DropEventRateLimited
                | Counter::DropEventLost
                | Counter::ConnInserted
                | Counter::SubflowCloseMarked
                | Counter::TokenCollision
                | Counter::JoinSynPendingKept
                | Counter::AddAddrTagCached
        )
    }

    /// How much a reason says about a packet that has several MPTCP options: the packet is
    /// counted under its most significant reason (a drop outranks everything).
    #[must_use]
    pub const fn significance(self) -> u8 {
        // A table built from `ranked_significance` at compile time: the fast path reads one
        // byte instead of running the match's chain of compares.
        const SIGNIFICANCE: [u8; Counter::ALL.len()] = {
            let mut table = [0; Counter::ALL.len()];
            let mut i = 0;
            while i < Counter::ALL.len() {
                table[i] = Counter::ALL[i].ranked_significance();
                i += 1;
            }
            table
        };
        // Opaque, so the bounds check stays: the BPF verifier does not know the enum's range
        // (the fast path reads counters back from map memory), though LLVM does.
        let index = core::hint::black_box(self as usize);
        if index < SIGNIFICANCE.len() {
            SIGNIFICANCE[index]
        } else {
            0
        }
    }

    /// [`Counter::significance`], as a match.
    const fn ranked_significance(self) -> u8 {
        match self {
            Counter::AddAddrBadHmacDropped
            | Counter::JoinSynUnknownTokenDropped
            | Counter::JoinSynAckBadHmacDropped
            | Counter::JoinAckBadHmacDropped
            | Counter::FastcloseBadKeyDropped
            | Counter::AddAddrPolicyDropped
            | Counter::JoinSynRateLimitedDropped
            | Counter::UnknownConnDropped
            | Counter::CapableOtherKeysDropped
            | Counter::CryptoBudgetDropped => 20,
            Counter::AddAddrBadHmacWouldDrop
            | Counter::JoinSynUnknownTokenWouldDrop
            | Counter::JoinSynAckBadHmacWouldDrop
            | Counter::JoinAckBadHmacWouldDrop
            | Counter::FastcloseBadKeyWouldDrop
            | Counter::AddAddrPolicyWouldDrop
            | Counter::JoinSynRateLimitedWouldDrop
            | Counter::UnknownConnWouldDrop
            | Counter::CapableOtherKeysWouldDrop
            | Counter::CryptoBudgetWouldDrop => 19,
            Counter::AddAddrUnknownConn
            | Counter::JoinStateMissing
            | Counter::FastcloseUnknownConn => 18,
            Counter::UntrustedConn => 17,
            Counter::KeysConflict => 16,
            Counter::AddAddrValid
            | Counter::JoinSynKnownToken
            | Counter::JoinSynAckValid
            | Counter::JoinAckValid
            | Counter::FastcloseValid => 15,
            Counter::KeysLearned => 14,
            Counter::Malformed => 13,
            Counter::AddAddrEcho => 12,
            Counter::KeysKnown => 11,
            _ => 0,
        }
    }

    /// The more significant of two reasons.
    #[must_use]
    #[inline(always)]
    pub const fn max(self, other: Counter) -> Counter {
        if other.significance() > self.significance() {
            other
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_indices_dense() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert_eq!(
                Counter::ALL.iter().filter(|o| o.name() == c.name()).count(),
                1
            );
        }
    }

    #[test]
    fn drop_outranks_everything() {
        for c in Counter::ALL {
            if !crate::validate::drops(*c) {
                assert_eq!(
                    c.max(Counter::AddAddrBadHmacDropped),
                    Counter::AddAddrBadHmacDropped
                );
                assert_eq!(
                    Counter::JoinAckBadHmacDropped.max(*c),
                    Counter::JoinAckBadHmacDropped
                );
            }
        }
    }
}
