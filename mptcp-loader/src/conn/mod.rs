//! Connection state: what the loader derives and keeps for each MPTCP connection the fast path
//! learns. Key material ([`keys`]), installing midstates and tokens ([`install`]), forgetting
//! idle connections ([`sweep`]) and closed subflows ([`closed`]). Functions over
//! `kernel::store::FirewallMaps`, tested against in-memory maps.

pub mod closed;
pub mod install;
pub mod keys;
pub mod sweep;
