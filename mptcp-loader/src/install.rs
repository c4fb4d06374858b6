//! Turning one [`KeyEvent`] from the fast path into installed midstates in [`MAP_CONNS`].
//!
//! Map access sits behind [`ConnStore`], so the logic is unit-tested against
//! [`MemoryConnStore`] and runs against the kernel map through aya's `HashMap`.

use std::{
    borrow::{Borrow, BorrowMut},
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use aya::maps::{MapData, MapError};
use mptcp_common::maps::{ConnState, FlowKey, KeyEvent, FAMILY_V4, MAP_CONNS, READY_A, READY_B};

use crate::{
    errors::LoaderError,
    keys::{derive, with_midstates, KeyMaterial},
};

/// `BPF_EXIST`: update only an entry that exists (the LRU may have evicted it meanwhile, and a
/// connection we would re-create here would have no owner).
const BPF_EXIST: u64 = 2;

/// Where connection state lives: the kernel map, or memory in tests.
pub trait ConnStore {
    /// The state of connection `id`, or `None` if there is no entry.
    ///
    /// # Errors
    /// When the map cannot be read.
    fn get(&self, id: u64) -> Result<Option<ConnState>, LoaderError>;

    /// Overwrites the entry of connection `id`; returns `false` if there was no entry (nothing is
    /// written then).
    ///
    /// # Errors
    /// When the map cannot be written.
    fn update_existing(&mut self, id: u64, state: &ConnState) -> Result<bool, LoaderError>;
}

impl<T: Borrow<MapData> + BorrowMut<MapData>> ConnStore for aya::maps::HashMap<T, u64, ConnState> {
    fn get(&self, id: u64) -> Result<Option<ConnState>, LoaderError> {
        match aya::maps::HashMap::get(self, &id, 0) {
            Ok(state) => Ok(Some(state)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(LoaderError::map(MAP_CONNS)(e)),
        }
    }

    fn update_existing(&mut self, id: u64, state: &ConnState) -> Result<bool, LoaderError> {
        match self.insert(id, state, BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(false)
            }
            Err(e) => Err(LoaderError::map(MAP_CONNS)(e)),
        }
    }
}

/// An in-memory [`ConnStore`] for tests.
#[derive(Debug, Default)]
pub struct MemoryConnStore(pub HashMap<u64, ConnState>);

impl ConnStore for MemoryConnStore {
    fn get(&self, id: u64) -> Result<Option<ConnState>, LoaderError> {
        Ok(self.0.get(&id).copied())
    }

    fn update_existing(&mut self, id: u64, state: &ConnState) -> Result<bool, LoaderError> {
        Ok(self.0.get_mut(&id).map(|s| *s = *state).is_some())
    }
}

/// What happened to one key event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallOutcome {
    /// Midstates written; the fast path checks this connection with 2 compressions from now on.
    Installed(KeyMaterial),
    /// The fast path had already computed the same midstates itself (nothing written).
    AlreadyInstalled(KeyMaterial),
    /// No entry for the connection (evicted by the LRU before we got to it).
    NoConnection,
    /// The entry holds other keys than the event (a key conflict or a reused id): not touched.
    KeysDiffer,
}

/// Computes the event's key material and installs it into the connection's entry.
///
/// # Errors
/// When the map cannot be read or written.
pub fn install_event(
    store: &mut impl ConnStore,
    event: &KeyEvent,
) -> Result<InstallOutcome, LoaderError> {
    let id = ConnState::id_of(&event.key_a);
    let Some(state) = store.get(id)? else {
        return Ok(InstallOutcome::NoConnection);
    };
    if state.key_a != event.key_a || state.key_b != event.key_b {
        return Ok(InstallOutcome::KeysDiffer);
    }
    let material = derive(&event.key_a, &event.key_b);
    let updated = with_midstates(&state, &material);
    let both_ready = READY_A | READY_B;
    if state.ready & both_ready == both_ready && state.mid == updated.mid {
        return Ok(InstallOutcome::AlreadyInstalled(material));
    }
    if store.update_existing(id, &updated)? {
        Ok(InstallOutcome::Installed(material))
    } else {
        Ok(InstallOutcome::NoConnection)
    }
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
    use mptcp_common::maps::{FAMILY_V6, ROLE_A, ROLE_B};

    fn event(key_a: [u8; 8], key_b: [u8; 8]) -> KeyEvent {
        KeyEvent {
            key_a,
            key_b,
            seen_ns: 1,
            ..KeyEvent::default()
        }
    }

    fn store_with(key_a: [u8; 8], key_b: [u8; 8]) -> MemoryConnStore {
        let mut store = MemoryConnStore::default();
        let state = ConnState {
            key_a,
            key_b,
            flags: 0,
            learned_s: 5,
            ..ConnState::default()
        };
        store.0.insert(ConnState::id_of(&key_a), state);
        store
    }

    #[test]
    fn installs_both_directions() {
        let (ka, kb) = ([1; 8], [2; 8]);
        let mut store = store_with(ka, kb);
        let outcome = install_event(&mut store, &event(ka, kb)).unwrap();
        let InstallOutcome::Installed(m) = outcome else {
            panic!("{outcome:?}")
        };
        let s = store.0[&ConnState::id_of(&ka)];
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
            install_event(&mut store, &event(ka, kb)).unwrap(),
            InstallOutcome::AlreadyInstalled(_)
        ));
    }

    #[test]
    fn skips_unknown_and_conflicting_connections() {
        let mut store = store_with([1; 8], [2; 8]);
        assert_eq!(
            install_event(&mut store, &event([9; 8], [2; 8])).unwrap(),
            InstallOutcome::NoConnection
        );
        assert_eq!(
            install_event(&mut store, &event([1; 8], [3; 8])).unwrap(),
            InstallOutcome::KeysDiffer
        );
        assert_eq!(store.0[&ConnState::id_of(&[1; 8])].ready, 0);
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
