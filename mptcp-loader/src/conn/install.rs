//! Turning one [`KeyEvent`] from the fast path into installed midstates in [`MAP_CONNS`], and
//! re-asserting the connection's two [`MAP_TOKENS`] entries.
//!
//! Map access goes through [`FirewallMaps`], so the logic is unit-tested against
//! `MemoryMaps` (tests only) and runs against the kernel maps through
//! [`crate::kernel::store::KernelMaps`].
//!
//! [`MAP_CONNS`]: mptcp_common::maps::MAP_CONNS
//! [`MAP_TOKENS`]: mptcp_common::maps::MAP_TOKENS

use std::net::{Ipv4Addr, Ipv6Addr};

use mptcp_common::maps::{
    ConnState, FlowKey, KeyEvent, Token, TokenRef, FAMILY_V4, READY_A, READY_B, ROLE_A, ROLE_B,
};

use crate::{
    conn::keys::{derive, token_and_idsn, with_midstates, KeyMaterial},
    kernel::error::KernelError,
    kernel::store::FirewallMaps,
};

/// What happened to one key event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallOutcome {
    /// Midstates written; the fast path checks this connection with 2 compressions from now on.
    Installed {
        /// Tokens, IDSNs and midstates.
        material: KeyMaterial,
        /// Token entries that were missing or named something else, and were written.
        tokens_restored: u32,
    },
    /// The fast path had already computed the same midstates itself (nothing written to the
    /// connection; its tokens were still re-asserted).
    AlreadyInstalled {
        /// Tokens, IDSNs and midstates.
        material: KeyMaterial,
        /// As for `Installed`.
        tokens_restored: u32,
    },
    /// No entry for the connection (evicted by the LRU before we got to it).
    NoConnection,
    /// The entry holds other keys than the event (a key conflict or a reused id): not touched.
    KeysDiffer,
}

/// Computes the event's key material, installs it into the connection's entry and re-asserts
/// both token entries (the fast path writes them when it learns the keys; an LRU eviction since
/// then would otherwise make every MP_JOIN of the connection look unknown).
///
/// # Errors
/// When a map cannot be read or written.
pub fn install_event(
    maps: &mut impl FirewallMaps,
    event: &KeyEvent,
) -> Result<InstallOutcome, KernelError> {
    let id = ConnState::id_of(&event.key_a);
    let Some(state) = maps.conn(id)? else {
        return Ok(InstallOutcome::NoConnection);
    };
    if state.key_a != event.key_a || state.key_b != event.key_b {
        return Ok(InstallOutcome::KeysDiffer);
    }
    let material = derive(&event.key_a, &event.key_b);
    let updated = with_midstates(&state, &material);
    let both_ready = READY_A | READY_B;
    let already = state.ready & both_ready == both_ready && state.mid == updated.mid;
    if !already && !maps.update_existing_conn(id, &updated)? {
        return Ok(InstallOutcome::NoConnection);
    }
    let tokens_restored = reassert_tokens(maps, &event.key_a, &event.key_b)?;
    Ok(if already {
        InstallOutcome::AlreadyInstalled {
            material,
            tokens_restored,
        }
    } else {
        InstallOutcome::Installed {
            material,
            tokens_restored,
        }
    })
}

/// The two [`MAP_TOKENS`](mptcp_common::maps::MAP_TOKENS) entries of the connection with these
/// keys, as the fast path writes them: each key's token names the connection
/// (`ConnState::id_of` bytes, native endianness) and the role that owns the key.
#[must_use]
pub fn token_entries(key_a: &[u8; 8], key_b: &[u8; 8]) -> [(Token, TokenRef); 2] {
    let conn_id = ConnState::id_of(key_a).to_ne_bytes();
    [(key_a, ROLE_A), (key_b, ROLE_B)]
        .map(|(key, role)| (token_and_idsn(key).0, TokenRef { conn_id, role }))
}

/// Writes the token entries of a connection that are missing or name something else; returns how
/// many it wrote. Entries already right are left alone: an update of a full LRU map evicts
/// another entry.
///
/// # Errors
/// When the token map cannot be read or written.
pub fn reassert_tokens(
    maps: &mut impl FirewallMaps,
    key_a: &[u8; 8],
    key_b: &[u8; 8],
) -> Result<u32, KernelError> {
    let mut restored = 0;
    for (token, entry) in token_entries(key_a, key_b) {
        if maps.token(&token)? != Some(entry) {
            maps.put_token(&token, &entry)?;
            restored += 1;
        }
    }
    Ok(restored)
}

/// Reads a [`KeyEvent`] from a ring-buffer record, or `None` if the record is too short.
#[must_use]
pub fn parse_key_event(record: &[u8]) -> Option<KeyEvent> {
    if record.len() < size_of::<KeyEvent>() {
        return None;
    }
    // SAFETY: the length was checked, KeyEvent is plain old data (every bit pattern is valid),
    // and read_unaligned has no alignment requirement.
    Some(unsafe { record.as_ptr().cast::<KeyEvent>().read_unaligned() })
}

/// `1.2.3.4:5 -> 6.7.8.9:10` or `[2001:db8::1]:5 -> [2001:db8::2]:10`.
#[must_use]
pub fn format_flow(flow: &FlowKey) -> String {
    let sport = u16::from_be_bytes(flow.sport);
    let dport = u16::from_be_bytes(flow.dport);
    if flow.family == FAMILY_V4 {
        let ip = |a: &[u8; 16]| Ipv4Addr::new(a[0], a[1], a[2], a[3]);
        format!("{}:{sport} -> {}:{dport}", ip(&flow.saddr), ip(&flow.daddr))
    } else {
        let (s, d) = (Ipv6Addr::from(flow.saddr), Ipv6Addr::from(flow.daddr));
        format!("[{s}]:{sport} -> [{d}]:{dport}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::store::MemoryMaps;
    use mptcp_common::maps::FAMILY_V6;

    fn event(key_a: [u8; 8], key_b: [u8; 8]) -> KeyEvent {
        KeyEvent {
            key_a,
            key_b,
            seen_ns: 1,
            ..KeyEvent::default()
        }
    }

    fn maps_with(key_a: [u8; 8], key_b: [u8; 8]) -> MemoryMaps {
        let mut maps = MemoryMaps::default();
        let state = ConnState {
            key_a,
            key_b,
            flags: 0,
            learned_s: 5,
            ..ConnState::default()
        };
        maps.conns.insert(ConnState::id_of(&key_a), state);
        maps
    }

    #[test]
    fn installs_both_directions() {
        let (ka, kb) = ([1; 8], [2; 8]);
        let mut maps = maps_with(ka, kb);
        let outcome = install_event(&mut maps, &event(ka, kb)).unwrap();
        let InstallOutcome::Installed { material: m, .. } = outcome else {
            panic!("{outcome:?}")
        };
        let s = maps.conns[&ConnState::id_of(&ka)];
        assert_eq!(s.ready, READY_A | READY_B);
        assert_eq!(
            s.mid[usize::from(ROLE_A)],
            mptcp_common::hmac::midstate(&ka, &kb)
        );
        assert_eq!(
            s.mid[usize::from(ROLE_B)],
            mptcp_common::hmac::midstate(&kb, &ka)
        );
        assert_eq!(s.learned_s, 5);
        assert_eq!(m.token_a, mptcp_common::hmac::token_and_idsn(&ka).0);
        // A retransmitted MP_CAPABLE produces the same event again: nothing to write.
        assert!(matches!(
            install_event(&mut maps, &event(ka, kb)).unwrap(),
            InstallOutcome::AlreadyInstalled {
                tokens_restored: 0,
                ..
            }
        ));
    }

    #[test]
    fn token_entries_match_the_fast_path_layout() {
        let (ka, kb) = ([0xfd, 0xcf, 0x3c, 0x40, 0xbd, 0x10, 0x4a, 0x60], [6; 8]);
        let [(token_a, ref_a), (token_b, ref_b)] = token_entries(&ka, &kb);
        // Protocol doc §7.4: token of Key-A fdcf3c40bd104a60 is 322a76f3 (wire order).
        assert_eq!(token_a, [0x32, 0x2a, 0x76, 0xf3]);
        assert_eq!(token_b, mptcp_common::hmac::token_and_idsn(&kb).0);
        // TokenRef::conn_id is ConnState::id_of as native-endian bytes, i.e. Key-A's bytes.
        assert_eq!(u64::from_ne_bytes(ref_a.conn_id), ConnState::id_of(&ka));
        assert_eq!(ref_a.conn_id, ka);
        assert_eq!((ref_a.role, ref_b.role), (ROLE_A, ROLE_B));
        assert_eq!(ref_a.conn_id, ref_b.conn_id);
    }

    #[test]
    fn installation_restores_evicted_or_stolen_tokens() {
        let (ka, kb) = ([1; 8], [2; 8]);
        let mut maps = maps_with(ka, kb);
        let [(token_a, ref_a), (token_b, ref_b)] = token_entries(&ka, &kb);
        // Token B points at another connection; token A was evicted.
        let other = TokenRef {
            conn_id: [9; 8],
            role: ROLE_A,
        };
        maps.tokens.insert(token_b, other);
        let outcome = install_event(&mut maps, &event(ka, kb)).unwrap();
        assert!(
            matches!(
                outcome,
                InstallOutcome::Installed {
                    tokens_restored: 2,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(maps.tokens[&token_a], ref_a);
        assert_eq!(maps.tokens[&token_b], ref_b);
        // Evicted again after installation: the next event for it (a retransmitted MP_CAPABLE)
        // puts it back although the midstates are already there.
        maps.tokens.remove(&token_a);
        assert!(matches!(
            install_event(&mut maps, &event(ka, kb)).unwrap(),
            InstallOutcome::AlreadyInstalled {
                tokens_restored: 1,
                ..
            }
        ));
        assert_eq!(maps.tokens.len(), 2);
    }

    #[test]
    fn skips_unknown_and_conflicting_connections() {
        let mut maps = maps_with([1; 8], [2; 8]);
        assert_eq!(
            install_event(&mut maps, &event([9; 8], [2; 8])).unwrap(),
            InstallOutcome::NoConnection
        );
        assert_eq!(
            install_event(&mut maps, &event([1; 8], [3; 8])).unwrap(),
            InstallOutcome::KeysDiffer
        );
        assert_eq!(maps.conns[&ConnState::id_of(&[1; 8])].ready, 0);
        assert!(
            maps.tokens.is_empty(),
            "no tokens for connections we do not install"
        );
    }

    #[test]
    fn parses_records() {
        let ev = KeyEvent {
            key_a: [7; 8],
            seen_ns: 42,
            ifindex: 3,
            ..KeyEvent::default()
        };
        // SAFETY: KeyEvent is repr(C) plain data; viewing it as bytes is fine.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<KeyEvent>())
        };
        let mut unaligned = vec![0u8];
        unaligned.extend_from_slice(bytes);
        assert_eq!(parse_key_event(&unaligned[1..]), Some(ev));
        assert_eq!(parse_key_event(&bytes[..10]), None);
    }

    #[test]
    fn formats_flows() {
        let mut f = FlowKey {
            family: FAMILY_V4,
            sport: 1234u16.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
            ..FlowKey::default()
        };
        f.saddr[..4].copy_from_slice(&[198, 18, 0, 1]);
        f.daddr[..4].copy_from_slice(&[198, 18, 0, 2]);
        assert_eq!(format_flow(&f), "198.18.0.1:1234 -> 198.18.0.2:80");
        f.family = FAMILY_V6;
        f.saddr = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        f.daddr = "2001:db8::2".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(format_flow(&f), "[2001:db8::1]:1234 -> [2001:db8::2]:80");
    }
}
