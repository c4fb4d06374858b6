//! Userspace side of the MPTCP signalling firewall: loads the XDP ingress and tc egress programs
//! (with configurable map sizes), pins their maps, installs each new connection's HMAC midstates
//! (so the fast path checks an HMAC with two SHA-256 compressions) and re-asserts its tokens,
//! and forgets connections that stay idle longer than a timeout.
//!
//! The binary (`src/main.rs`) only parses the command line and prints errors; everything else is
//! here so integration tests can drive it: [`kernel::firewall::Firewall`] loads [`EBPF_OBJ`] and
//! attaches/detaches both programs, [`observe::stats::read_report`] reads a run's pinned counters
//! and map fill levels, [`conn::sweep`] and [`conn::install`] hold the map logic as functions
//! over [`kernel::store::FirewallMaps`].

// The layers, from the bottom (README "Architecture"; `tests/layers.rs` checks that no module
// imports from a layer above its own). The base: errors, the filter mode, the clocks.
pub mod clock;
pub mod errors;
pub mod mode;

pub mod kernel;

pub mod conn;

pub mod policy;

pub mod observe;

// Sharing learned connections with other gateways: above observe (its counters and state),
// below the commands that run it.
pub mod shared_store;

pub mod cli;

/// This loader's version, recorded in the pinned run state and shown by `status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use cli::error::LoaderError;
pub use kernel::firewall::{AttachedMode, Firewall, InterfaceAttachment, XdpAttach};
pub use mode::FilterMode;

/// The eBPF object built by `build.rs` from `mptcp-ebpf`. Empty when the build was skipped
/// (`AYA_BUILD_SKIP=1` or no bpf-linker); [`Firewall::load`] then fails with
/// [`KernelError::ObjectNotBuilt`](kernel::KernelError::ObjectNotBuilt).
pub static EBPF_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mptcp-ebpf"));
