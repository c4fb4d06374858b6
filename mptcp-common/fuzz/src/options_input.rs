//! The input of the `options` target: a few shape bytes, then TCP option bytes, then payload.
//! The target builds a well-formed frame around them, so nearly every input reaches the option
//! walk, and it knows what [`parse_tcp`](mptcp_common::packet::parse_tcp) must answer.
//!
//! Layout (`cargo xtask fuzz` writes seeds in it; keep `xtask/src/fuzz.rs` in step):
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0 | bit 0: IPv6; bits 1-2: VLAN tags (0-3; 3 is one more than the parser walks); bit 3: outer tag is 802.1ad |
//! | 1 | TCP flags |
//! | 2 | IPv4: words of IPv4 options (low 4 bits, at most 10). IPv6: bits 0-2: extension headers (0-7); bits 3-4: length of each, in 8-byte units, minus 1 |
//! | 3 | IPv6: kinds of the first four extension headers, 2 bits each from bit 0: hop-by-hop, routing, destination options, fragment (later ones are destination options) |
//! | 4 | bytes cut from the end of the built frame |
//! | 5 | number of TCP option bytes (taken modulo 41) |
//! | 6.. | the TCP option bytes (NOP-padded to a multiple of 4), then the payload |
//!
//! Missing bytes read as zero.

use mptcp_common::counters::Counter;
use mptcp_common::maps::{FAMILY_V4, FAMILY_V6};
use mptcp_common::packet::{
    TcpSegment, ETH_HLEN, ETH_P_8021AD, IPV6_DSTOPTS, IPV6_FRAGMENT, IPV6_HOPOPTS, IPV6_ROUTING,
    MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, TCPOPT_NOP,
};
use mptcp_common::testing::Frame;

/// Bytes before the option bytes.
pub const HEADER_LEN: usize = 6;
/// Most TCP option bytes.
pub const MAX_OPTS: usize = 40;

/// A decoded `options` input.
#[derive(Debug)]
pub struct OptionsInput {
    /// The frame description (VLANs, IP version, options, extension headers, flags, payload).
    pub frame: Frame,
    /// The outer VLAN tag is 802.1ad.
    pub qinq: bool,
    /// Bytes cut from the end of the built frame.
    pub cut: usize,
}

impl OptionsInput {
    /// Decodes `data` (never fails: missing bytes are zero).
    #[must_use]
    pub fn decode(data: &[u8]) -> Self {
        let byte = |i: usize| data.get(i).copied().unwrap_or(0);
        let (shape, flags, l3, ext_kinds) = (byte(0), byte(1), byte(2), byte(3));
        let rest = data.get(HEADER_LEN..).unwrap_or_default();
        let n_opts = (usize::from(byte(5)) % (MAX_OPTS + 1)).min(rest.len());
        let (opts, payload) = rest.split_at(n_opts);
        let mut frame = if shape & 1 == 0 {
            let mut f = Frame::v4(opts);
            f.ip_opts = vec![TCPOPT_NOP; usize::from((l3 & 0x0f).min(10)) * 4];
            f
        } else {
            let mut f = Frame::v6(opts);
            let body_len = (usize::from((l3 >> 3) & 3) + 1) * 8 - 2;
            f.v6_ext = (0..usize::from(l3 & 7))
                .map(|i| {
                    let kind = if i < 4 {
                        [IPV6_HOPOPTS, IPV6_ROUTING, IPV6_DSTOPTS, IPV6_FRAGMENT]
                            [usize::from((ext_kinds >> (2 * i)) & 3)]
                    } else {
                        IPV6_DSTOPTS
                    };
                    // The body's bytes are never read: fill them with the header's index.
                    (kind, vec![u8::try_from(i).unwrap_or(0); body_len])
                })
                .collect();
            f
        };
        frame.vlans = (0..(shape >> 1) & 3).map(|i| 100 + u16::from(i)).collect();
        frame.flags = flags;
        frame.payload = payload.to_vec();
        Self {
            frame,
            qinq: shape & 8 != 0,
            cut: usize::from(byte(4)),
        }
    }

    /// The frame's bytes, cut as asked.
    #[must_use]
    pub fn bytes(&self) -> Vec<u8> {
        let mut bytes = self.frame.bytes();
        if self.qinq && !self.frame.vlans.is_empty() {
            bytes[12..14].copy_from_slice(&ETH_P_8021AD.to_be_bytes());
        }
        bytes.truncate(bytes.len().saturating_sub(self.cut));
        bytes
    }

    /// The option bytes as the frame carries them (NOP-padded).
    #[must_use]
    pub fn padded_options(&self) -> Vec<u8> {
        let mut opts = self.frame.tcp_opts.clone();
        opts.resize(opts.len().div_ceil(4) * 4, TCPOPT_NOP);
        opts
    }

    /// What `parse_tcp` must return for [`bytes`](Self::bytes), worked out from the layout.
    /// `None` when the cut reaches into the headers: then any error will do (but not `Ok`).
    #[must_use]
    pub fn expected(&self) -> Option<Result<TcpSegment, Counter>> {
        if self.cut > self.frame.payload.len() {
            return None;
        }
        let f = &self.frame;
        if f.vlans.len() > MAX_VLAN_TAGS {
            return Some(Err(Counter::HeaderChainTooLong));
        }
        let l3 = ETH_HLEN + 4 * f.vlans.len();
        let l4 = if f.v6 {
            let walked = f.v6_ext.len().min(MAX_IPV6_EXT_HEADERS);
            if f.v6_ext[..walked].iter().any(|e| e.0 == IPV6_FRAGMENT)
                || f.v6_ext.get(walked).is_some_and(|e| e.0 == IPV6_FRAGMENT)
            {
                return Some(Err(Counter::Fragment));
            }
            if f.v6_ext.len() > MAX_IPV6_EXT_HEADERS {
                return Some(Err(Counter::HeaderChainTooLong));
            }
            l3 + 40 + f.v6_ext.iter().map(|e| e.1.len() + 2).sum::<usize>()
        } else {
            l3 + 20 + f.ip_opts.len()
        };
        let mut seg = TcpSegment {
            flags: f.flags,
            opts_start: l4 + 20,
            opts_end: l4 + 20 + self.padded_options().len(),
            ..TcpSegment::default()
        };
        seg.flow.family = if f.v6 { FAMILY_V6 } else { FAMILY_V4 };
        let addr_len = if f.v6 { 16 } else { 4 };
        seg.flow.saddr[..addr_len].copy_from_slice(&f.src[..addr_len]);
        seg.flow.daddr[..addr_len].copy_from_slice(&f.dst[..addr_len]);
        seg.flow.sport = f.ports.0.to_be_bytes();
        seg.flow.dport = f.ports.1.to_be_bytes();
        Some(Ok(seg))
    }
}
