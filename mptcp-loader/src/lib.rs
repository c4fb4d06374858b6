//! Userspace side of the MPTCP ADD_ADDR firewall: loads the XDP program, pins its maps, and
//! installs each new connection's HMAC midstates so the fast path checks an ADD_ADDR with two
//! SHA-256 compressions.
//!
//! The binary (`src/main.rs`) only parses the command line and prints errors; everything else is
//! here so integration tests can drive it: [`firewall::Firewall`] loads [`EBPF_OBJ`] and
//! attaches/detaches XDP, [`stats::read_counters`] reads a run's pinned counters.

pub mod cli;
pub mod errors;
pub mod firewall;
pub mod install;
pub mod keys;
pub mod latency;
pub mod pins;
pub mod preflight;
pub mod run;
pub mod stats;

pub use errors::LoaderError;
pub use firewall::{AttachedMode, FilterMode, Firewall, XdpAttach};

/// The eBPF object built by `build.rs` from `mptcp-ebpf`. Empty when the build was skipped
/// (`AYA_BUILD_SKIP=1` or no bpf-linker); [`Firewall::load`] then fails with
/// [`LoaderError::ObjectNotBuilt`].
pub static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mptcp-ebpf"));
