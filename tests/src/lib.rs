//! The network-namespace lab for the MPTCP ADD_ADDR validator (root only).
//!
//! - [`lab::Lab`]: two namespaces (`client`, `server`) joined by two veth pairs, MPTCP on, the
//!   client announcing its second address (a genuine ADD_ADDR) and joining a second subflow.
//! - [`peers`]: the MPTCP server/client (`mptcp-peer` binary) run inside the namespaces.
//! - [`forger::Forger`]: a Python (stdlib) script injecting forged ADD_ADDRs into the live
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
pub mod counters;
pub mod error;
pub mod flood;
pub mod forger;
pub mod join_forger;
pub mod join_scenario;
pub mod lab;
pub mod mptcp_frames;
pub mod netns;
pub mod peers;
pub mod proc;
pub mod scenario;
pub mod storm;
pub mod svg;
pub mod teardown;
pub mod tools;
pub mod validator;

pub use error::{LabError, Result};
pub use lab::Lab;
pub use netns::Netns;
pub use proc::Proc;
