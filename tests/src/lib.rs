//! The root-only tests of the MPTCP firewall and their scenarios, on the lab of `mptcp-lab`
//! (whose modules are re-exported here at their old paths).
//!
//! - [`lab::Lab`]: two namespaces (`client`, `server`) joined by two veth pairs, MPTCP on, the
//!   client announcing its second address (a genuine ADD_ADDR) and joining a second subflow.
//! - [`peers`]: the MPTCP server/client (`mptcp-peer` binary) run inside the namespaces.
//! - [`forger::Forger`]: `mptcp-peer forge-add-addr`, injecting forged ADD_ADDRs into the live
//!   connection, and state-changing segments ([`forger::Attack`]: a blind RST, an MP_CAPABLE
//!   with other keys).
//! - [`capture::Capture`]: tcpdump in a namespace plus a pcap reader that finds ADD_ADDRs, RSTs
//!   and MP_CAPABLE keys.
//! - [`counters::Counters`]: a namespace's `nstat` counters.
//! - [`validator::Validator`]: `mptcp-loader run` / `stats --json` / SIGINT in a namespace.
//! - [`flood`]: the flood benchmark's lab (`mptcp-flood` binary): trafgen floods of forged
//!   ADD_ADDRs and MP_JOIN SYNs, receiver CPU time per packet, genuine throughput.
//! - [`scenario::run`]: the genuine-traffic-then-forgery sequence used by the tests and the
//!   `mptcp-demo` binary.
//! - [`storm`]: a storm of real MPTCP connections held open, one connection that stays active,
//!   and a trafgen flood of MP_JOIN SYNs with random tokens (the loader-level exhaustion test).
//! - [`join_scenario::run`]: genuine MP_JOINs in both directions, then forged ones
//!   ([`join_forger::JoinForger`]), with or without a validator on each host.
//!
//! Every namespace and child process is torn down on drop, on panic, and (for the demo) on
//! SIGINT/SIGTERM ([`teardown`]).

pub mod bpf;
pub mod capture;
pub mod flood;
pub mod forger;
pub mod gateways;
pub mod join_forger;
pub mod join_scenario;
pub mod peers;
pub mod scenario;
pub mod storm;
pub mod svg;
pub mod tools;
pub mod validator;

// The lab itself lives in `mptcp-lab` (shared with the loader's root-only tests); these keep
// its modules at the paths the tests have always used.
pub use mptcp_lab::{counters, error, lab, mptcp_frames, netns, proc, teardown};

pub use error::{LabError, Result};
pub use lab::Lab;
pub use netns::Netns;
pub use proc::Proc;
