//! The kernel side: the eBPF object, its maps, links and pins. Loading and attaching
//! ([`firewall`]: XDP, TCX or a clsact filter), the maps the loader reads and writes
//! ([`store`], [`map_sizes`]), the pinned layout and run state a restart adopts ([`layout`],
//! [`state`], [`adopt`], [`pins`]), detaching ([`detach`]), and the raw interfaces under them
//! ([`bpf_sys`], [`netlink`], [`preflight`]).

pub mod adopt;
pub mod bpf_sys;
pub mod detach;
pub mod error;
pub mod firewall;
pub mod layout;
pub mod map_sizes;
pub mod multiprog;
pub mod netlink;
pub mod pins;
pub mod preflight;
pub mod state;
pub mod store;

pub use error::KernelError;
