//! Counter codes. Every packet the XDP program sees increments exactly one *packet reason*
//! (so their sum is the number of packets); a few *auxiliary* counters count events inside a
//! packet's processing. Names are what `mptcp-loader stats` prints.

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal, )*) => {
        /// Index into the per-CPU counter array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter { $( $(#[doc = $doc])* $variant, )* }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[$(Counter::$variant,)*];
            /// The name printed by `stats` and used as the JSON key.
            #[must_use]
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$variant => $name,)* }
            }
        }
    };
}

counters! {
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
    /// MP_CAPABLE with keys different from those learned on this subflow: connection marked untrusted.
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
    /// ADD_ADDR on a connection marked untrusted by a key conflict: passed.
    AddAddrUntrustedConn = "add_addr_untrusted_conn",
    /// Malformed options (bad TCP option length, bad MPTCP length/E combination): passed.
    Malformed = "malformed",
    /// Auxiliary: a key event could not be queued (ring buffer full). The fast path still works.
    KeyEventLost = "aux_key_event_lost",
    /// Auxiliary: the fast path computed a direction's midstates itself because the loader had
    /// not written them yet (the key-learning window).
    MidstateComputedInline = "aux_midstate_computed_inline",
    /// Auxiliary: the connection or flow map refused an insert.
    MapInsertFailed = "aux_map_insert_failed",
}

/// Number of counters (size of the per-CPU array).
pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;

impl Counter {
    /// Whether this code is a per-packet reason (exactly one per packet) rather than auxiliary.
    #[must_use]
    pub const fn is_packet_reason(self) -> bool {
        !matches!(
            self,
            Counter::KeyEventLost | Counter::MidstateComputedInline | Counter::MapInsertFailed
        )
    }

    /// How much a reason says about a packet that has several MPTCP options: the packet is
    /// counted under its most significant reason (a drop outranks everything).
    #[must_use]
    pub const fn significance(self) -> u8 {
        match self {
            Counter::AddAddrBadHmacDropped => 10,
            Counter::AddAddrBadHmacWouldDrop => 9,
            Counter::AddAddrUnknownConn => 8,
            Counter::AddAddrUntrustedConn => 7,
            Counter::KeysConflict => 6,
            Counter::AddAddrValid => 5,
            Counter::KeysLearned => 4,
            Counter::Malformed => 3,
            Counter::AddAddrEcho => 2,
            Counter::KeysKnown => 1,
            _ => 0,
        }
    }

    /// The more significant of two reasons.
    #[must_use]
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
            assert_eq!(Counter::ALL.iter().filter(|o| o.name() == c.name()).count(), 1);
        }
    }

    #[test]
    fn drop_outranks_everything() {
        for c in Counter::ALL {
            assert_eq!(c.max(Counter::AddAddrBadHmacDropped), Counter::AddAddrBadHmacDropped);
        }
    }
}
