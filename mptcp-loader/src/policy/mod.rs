//! The operator's policy as one value ([`Policy`]), and how it gets into the fast path's maps.
//!
//! - [`model`]: the policy itself (mode, prefixes, ports, rate limits) and the `Config` value it
//!   makes;
//! - [`plan`]: [`desired_state`] turns a policy into what the maps should hold
//!   ([`PolicyState`]); [`plan_policy`] (pure) compares that with what they hold and returns the
//!   ordered [`MapOp`]s that get from one to the other, removing what the policy no longer names;
//!   [`apply_policy`] is the thin layer that reads the maps, plans and executes, through a
//!   [`PolicyStore`];
//! - [`maps`]: [`PolicyMaps`], the kernel's [`PolicyStore`] (an in-memory one serves the tests);
//! - [`config`]: the policy read from `--config FILE` and the policy flags.
//!
//! The order of the operations never makes the policy stricter than both the old and the new
//! one while it changes: entries are added before the configuration that uses them is written,
//! and removed after it.

pub mod config;
pub mod maps;
pub mod model;
pub mod plan;

pub use maps::PolicyMaps;
pub use model::{Policy, PortRule, Prefix, RateLimit, UnknownConn, DEFAULT_DROP_EVENTS};
pub use plan::{
    apply_policy, desired_state, plan_policy, ApplyOutcome, Capacities, MapOp, PolicyState,
    PolicyStore,
};

#[cfg(test)]
mod tests;
