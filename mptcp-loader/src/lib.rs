//! Userspace side of the MPTCP signalling firewall: loads the XDP ingress and tc egress programs
//! (with configurable map sizes), pins their maps, installs each new connection's HMAC midstates
//! (so the fast path checks an HMAC with two SHA-256 compressions) and re-asserts its tokens,
//! and forgets connections that stay idle longer than a timeout.
//!
//! The binary (`src/main.rs`) only parses the command line and prints errors; everything else is
//! here so integration tests can drive it: [`firewall::Firewall`] loads [`EBPF_OBJ`] and
//! attaches/detaches both programs, [`stats::read_report`] reads a run's pinned counters and map
//! fill levels, [`sweep`] and [`install`] hold the map logic as functions over
//! [`store::FirewallMaps`].

pub mod adopt;
pub mod bpf_sys;
pub mod cli;
pub mod closed;
pub mod config;
pub mod conns;
pub mod detach;
pub mod errors;
pub mod events;
pub mod firewall;
pub mod install;
pub mod keys;
pub mod latency;
pub mod layout;
pub mod loader_counters;
pub mod map_sizes;
pub mod metrics;
pub mod multiprog;
pub mod netlink;
pub mod pcap;
pub mod pins;
pub mod policy;
pub mod preflight;
pub mod run;
pub mod state;
pub mod stats;
pub mod status;
pub mod store;
pub mod sweep;

pub use errors::LoaderError;
pub use firewall::{AttachedMode, FilterMode, Firewall, InterfaceAttachment, XdpAttach};

/// The eBPF object built by `build.rs` from `mptcp-ebpf`. Empty when the build was skipped
/// (`AYA_BUILD_SKIP=1` or no bpf-linker); [`Firewall::load`] then fails with
/// [`LoaderError::ObjectNotBuilt`].
pub static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mptcp-ebpf"));
