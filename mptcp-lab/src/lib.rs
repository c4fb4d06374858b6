//! The network-namespace lab of the MPTCP firewall's root-only tests, in one crate: the tests
//! crate (`mptcp-tests`) and the loader's root-only tests (`mptcp-loader/tests`) both build on it.
//!
//! The lab:
//! - [`netns::Netns`]: a named network namespace, deleted (with everything running in it) on
//!   drop; commands inside it, and [`netns::Netns::enter`] to open sockets in it from this
//!   process. [`netns::veth`] joins two of them.
//! - [`proc::Proc`]: a child process whose output is read line by line, killed on drop.
//! - [`lab::Lab`]: two namespaces (`client`, `server`) joined by two veth pairs, MPTCP on, the
//!   client announcing its second address (a genuine ADD_ADDR) and joining a second subflow.
//! - [`teardown`]: namespaces and processes removed on drop, on panic, on SIGINT/SIGTERM, and
//!   stale ones of killed runs.
//! - [`counters::Counters`]: a namespace's `nstat` counters.
//!
//! What runs in it (as the `mptcp-peer` binary of the tests crate, or in this process):
//! - [`endpoints`]: MPTCP sockets (`IPPROTO_MPTCP`): connect, accept, send, read, close.
//! - [`stream`], [`storm`]: the MPTCP peers the tests drive line by line.
//! - [`wire`]: raw sockets (`AF_PACKET`, `SOCK_RAW`) and the sniffed view of a TCP segment.
//! - [`forge_add_addr`], [`forge_join`]: the forgers that learn a live connection by sniffing
//!   and inject ADD_ADDRs, blind RSTs, foreign MP_CAPABLEs and MP_JOIN handshakes into it.
//! - [`mptcp_frames`]: MPTCP option bytes with genuine HMACs (independent of the fast path).
//!
//! Addresses are in 198.18.0.0/15 and 2001:db8::/32 only.

pub mod counters;
pub mod endpoints;
pub mod error;
pub mod forge_add_addr;
pub mod forge_join;
pub mod lab;
pub mod mptcp_frames;
pub mod netns;
pub mod proc;
pub mod storm;
pub mod stream;
pub mod teardown;
pub mod wire;

pub use error::{LabError, Result};
pub use lab::Lab;
pub use netns::Netns;
pub use proc::Proc;
