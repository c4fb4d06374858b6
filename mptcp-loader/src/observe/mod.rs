//! What operators see: `stats` ([`stats`]) and `status` ([`status`]), the connection list
//! ([`conns`]), Prometheus metrics ([`metrics`]), drop events and their pcap ([`events`],
//! [`pcap`]), the install latency ([`latency`]), the loader's own counters
//! ([`loader_counters`]) and the shared store's state ([`store_state`]).

pub mod conns;
pub mod error;
pub mod events;
pub mod latency;
pub mod loader_counters;
pub mod metrics;
pub mod pcap;
pub mod stats;
pub mod status;
pub mod store_state;

pub use error::ObserveError;
