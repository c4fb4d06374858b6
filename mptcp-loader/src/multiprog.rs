//! Living beside other XDP programs: libxdp's multi-program dispatcher protocol (xdp-tools,
//! `lib/libxdp/protocol.org`, dispatcher version 2).
//!
//! An interface has one XDP hook. libxdp shares it by attaching a *dispatcher*, an XDP program
//! that calls ten stub functions `prog0()`..`prog9()` in turn; each component program is loaded
//! as an `freplace` (`BPF_PROG_TYPE_EXT`) program over one stub, and the dispatcher continues to
//! the next slot only for the return codes in that slot's *chain-call actions*. The slots are
//! ordered by *run priority* (lower first), and the dispatcher's frozen `.rodata` configuration
//! records both, so every libxdp user (`xdp-loader`, `xdp-filter`, ...) can rebuild the
//! dispatcher with its components when one is added or removed.
//!
//! This module holds what the loader needs of that protocol: the dispatcher object shipped by
//! Debian's `libxdp1` package ([`DISPATCHER_OBJECT`]), loaded through aya with its configuration
//! written in; the firewall's slot ([`FIREWALL_SLOT`]); loading the firewall's ingress program as
//! a component of a dispatcher; a probe of whether the running kernel accepts `freplace`
//! programs at all; and the words for what holds an interface's XDP hook when it is not ours.

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{links::FdLink, Extension, ProgramError, ProgramFd, Xdp},
    Ebpf, EbpfLoader, Pod,
};
use mptcp_common::maps::{PROG_XDP_INGRESS, PROG_XDP_PASS_BASELINE};

use crate::{errors::LoaderError, netlink::XdpAttached};

/// The dispatcher object of Debian's `libxdp1` package (`cargo xtask setup` installs it).
pub const DISPATCHER_OBJECT: &str = "/usr/lib/x86_64-linux-gnu/bpf/xdp-dispatcher.o";
/// The dispatcher's XDP entry point (also how libxdp recognises one on an interface).
pub const DISPATCHER_PROGRAM: &str = "xdp_dispatcher";
/// The configuration struct in the dispatcher's `.rodata`.
const DISPATCHER_CONFIG: &str = "conf";
/// `XDP_DISPATCHER_MAGIC`.
pub const DISPATCHER_MAGIC: u8 = 236;
/// `XDP_DISPATCHER_VERSION` the configuration below is laid out for.
pub const DISPATCHER_VERSION: u8 = 2;
/// `MAX_DISPATCHER_ACTIONS`: the number of slots.
pub const DISPATCHER_SLOTS: usize = 10;
/// `XDP_DISPATCHER_RETVAL`: what an empty stub returns; always a chain-call action, so a slot
/// whose program went away passes the packet on.
pub const DISPATCHER_RETVAL: u32 = 31;
/// `BPF_F_XDP_HAS_FRAGS`, recorded per slot in `program_flags`.
pub const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
/// Where libxdp pins dispatchers: `dispatch-IFINDEX-PROGID/progN-{prog,link}` below it.
pub const LIBXDP_PIN_ROOT: &str = "/sys/fs/bpf/xdp";

/// `XDP_PASS` (`XDP_DROP` is 1).
const XDP_PASS: u32 = 2;

/// The firewall's run priority among the dispatcher's programs (lower runs first; libxdp's
/// default is 50, xdp-filter's 10). 20: after coarse packet filters, which drop junk for less
/// than an HMAC costs, and before programs of default priority, so that a program which ends
/// the chain (`XDP_TX`, `XDP_REDIRECT` to an AF_XDP socket) does not take a forged ADD_ADDR or
/// MP_JOIN past the firewall.
pub const RUN_PRIORITY: u32 = 20;
/// The firewall's chain-call actions: the next program runs for what it passes; what it drops
/// stays dropped.
pub const CHAIN_CALL_ACTIONS: u32 = (1 << XDP_PASS) | (1 << DISPATCHER_RETVAL);

/// `struct xdp_dispatcher_config` (version 2), the dispatcher's frozen `.rodata`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// [`DISPATCHER_MAGIC`].
    pub magic: u8,
    /// [`DISPATCHER_VERSION`].
    pub dispatcher_version: u8,
    /// How many slots, from `prog0`, run.
    pub num_progs_enabled: u8,
    /// Whether the dispatcher is loaded with `BPF_F_XDP_HAS_FRAGS`.
    pub is_xdp_frags: u8,
    /// Per slot: the bitmap of return codes after which the next slot runs.
    pub chain_call_actions: [u32; DISPATCHER_SLOTS],
    /// Per slot: its run priority.
    pub run_prios: [u32; DISPATCHER_SLOTS],
    /// Per slot: [`BPF_F_XDP_HAS_FRAGS`] if its program is frags-aware.
    pub program_flags: [u32; DISPATCHER_SLOTS],
}

// SAFETY: `repr(C)`, integers only, no padding (4 bytes then 32-bit arrays).
unsafe impl Pod for DispatcherConfig {}

/// One component program's place in a dispatcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Run priority (lower first).
    pub run_priority: u32,
    /// Bitmap of the return codes after which the next slot runs.
    pub chain_call_actions: u32,
    /// Whether the program handles multi-buffer frames.
    pub frags: bool,
}

/// The firewall's ingress program as a dispatcher component. It is frags-aware (it parses the
/// first buffer only, see `mptcp-ebpf`).
pub const FIREWALL_SLOT: Slot = Slot {
    run_priority: RUN_PRIORITY,
    chain_call_actions: CHAIN_CALL_ACTIONS,
    frags: true,
};

impl DispatcherConfig {
    /// The configuration of a dispatcher running `slots` in this order (sort them by priority
    /// first). The dispatcher is frags-aware only if every component is (the protocol's rule).
    ///
    /// # Panics
    /// With more than [`DISPATCHER_SLOTS`] slots.
    #[must_use]
    pub fn new(slots: &[Slot]) -> Self {
        assert!(slots.len() <= DISPATCHER_SLOTS, "a dispatcher has 10 slots");
        let mut config = Self {
            magic: DISPATCHER_MAGIC,
            dispatcher_version: DISPATCHER_VERSION,
            num_progs_enabled: slots.len() as u8,
            is_xdp_frags: u8::from(!slots.is_empty() && slots.iter().all(|s| s.frags)),
            ..Self::default()
        };
        for (i, slot) in slots.iter().enumerate() {
            config.chain_call_actions[i] = slot.chain_call_actions | (1 << DISPATCHER_RETVAL);
            config.run_prios[i] = slot.run_priority;
            config.program_flags[i] = if slot.frags { BPF_F_XDP_HAS_FRAGS } else { 0 };
        }
        config
    }
}

/// The stub function of slot `index` (`prog0`..`prog9`), the target of its component.
#[must_use]
pub fn slot_function(index: usize) -> String {
    format!("prog{index}")
}

/// A loaded (not attached) dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    ebpf: Ebpf,
    config: DispatcherConfig,
}

impl Dispatcher {
    /// Loads the dispatcher object at `path` configured for `slots`.
    ///
    /// # Errors
    /// [`LoaderError::DispatcherObject`] when the file is missing or aya cannot load it.
    pub fn load_file(path: &Path, slots: &[Slot]) -> Result<Self, LoaderError> {
        let object = fs::read(path).map_err(|source| LoaderError::DispatcherObject {
            path: path.to_owned(),
            detail: source.to_string(),
        })?;
        Self::load(&object, path, slots)
    }

    /// Loads dispatcher `object` (read from `path`, named in errors) configured for `slots`.
    ///
    /// # Errors
    /// As [`Dispatcher::load_file`].
    pub fn load(object: &[u8], path: &Path, slots: &[Slot]) -> Result<Self, LoaderError> {
        let failed = |detail: String| LoaderError::DispatcherObject {
            path: path.to_owned(),
            detail,
        };
        let config = DispatcherConfig::new(slots);
        let mut ebpf = EbpfLoader::new()
            .override_global(DISPATCHER_CONFIG, &config, true)
            .load(object)
            .map_err(|e| failed(e.to_string()))?;
        let program: &mut Xdp = ebpf
            .program_mut(DISPATCHER_PROGRAM)
            .ok_or_else(|| failed(format!("no program `{DISPATCHER_PROGRAM}`")))?
            .try_into()
            .map_err(|e: ProgramError| failed(e.to_string()))?;
        program.load().map_err(|e| failed(e.to_string()))?;
        Ok(Self { ebpf, config })
    }

    /// The configuration it was loaded with.
    #[must_use]
    pub const fn config(&self) -> &DispatcherConfig {
        &self.config
    }

    /// The configuration as the kernel holds it (the frozen `.rodata` map other libxdp users
    /// read to rebuild the dispatcher).
    ///
    /// # Errors
    /// When the map is missing or cannot be read.
    pub fn kernel_config(&self) -> Result<DispatcherConfig, LoaderError> {
        let failed = |detail: String| LoaderError::DispatcherObject {
            path: PathBuf::from(DISPATCHER_OBJECT),
            detail,
        };
        let map = self
            .ebpf
            .map(".rodata")
            .ok_or_else(|| failed("no .rodata map".to_owned()))?;
        let rodata: aya::maps::Array<_, DispatcherConfig> =
            aya::maps::Array::try_from(map).map_err(|e| failed(e.to_string()))?;
        rodata.get(&0, 0).map_err(|e| failed(e.to_string()))
    }

    /// The dispatcher program (for attaching it, or for `BPF_PROG_TEST_RUN`).
    ///
    /// # Panics
    /// Never after [`Dispatcher::load`] succeeded.
    #[must_use]
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(DISPATCHER_PROGRAM)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("loaded in Dispatcher::load")
    }

    /// A new fd of the dispatcher program.
    ///
    /// # Errors
    /// When the fd cannot be duplicated.
    pub fn fd(&self) -> Result<ProgramFd, LoaderError> {
        let fd = self
            .program()
            .fd()
            .map_err(|e| LoaderError::MultiprogUnsupported {
                detail: e.to_string(),
            })?;
        fd.try_clone()
            .map_err(|e| LoaderError::MultiprogUnsupported {
                detail: format!("duplicating the dispatcher fd: {e}"),
            })
    }
}

/// Loads program `name` of `ebpf` (loaded with `EbpfLoader::extension(name)`) as the component
/// of `dispatcher`'s slot `slot` and links it there. The link keeps it in place while open or
/// pinned (libxdp pins it as `progN-link`).
///
/// # Errors
/// [`LoaderError::MultiprogUnsupported`] when the kernel refuses the `freplace` program
/// ([`unsupported_reason`] says why), [`LoaderError::VerifierRejected`]-like failures as
/// [`LoaderError::ComponentLoad`].
pub fn load_component(
    ebpf: &mut Ebpf,
    name: &'static str,
    dispatcher: &Dispatcher,
    slot: usize,
) -> Result<FdLink, LoaderError> {
    let failed = |source: ProgramError| match load_errno(&source) {
        Some(errno) if errno == libc::EPERM => LoaderError::MultiprogUnsupported {
            detail: unsupported_reason(errno),
        },
        _ => LoaderError::ComponentLoad {
            program: name,
            slot,
            source,
        },
    };
    let extension: &mut Extension = ebpf
        .program_mut(name)
        .ok_or(LoaderError::MissingInObject {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(failed)?;
    extension
        .load(dispatcher.fd()?, &slot_function(slot))
        .map_err(failed)?;
    let id = extension.attach().map_err(failed)?;
    let link = extension.take_link(id).map_err(failed)?;
    Ok(link.into())
}

/// Whether the running kernel lets this process load the firewall's ingress program as a
/// dispatcher component: loads the dispatcher (one slot) and `xdp_pass_baseline` of `object`
/// as its `freplace` component, then unloads both. Multi-program mode needs this.
///
/// # Errors
/// [`LoaderError::MultiprogUnsupported`] with the kernel's reason, or the dispatcher's and the
/// object's load errors.
pub fn probe(object: &[u8], dispatcher_object: &Path) -> Result<(), LoaderError> {
    let dispatcher = Dispatcher::load_file(dispatcher_object, &[FIREWALL_SLOT])?;
    let mut ebpf = EbpfLoader::new()
        .extension(PROG_XDP_PASS_BASELINE)
        .load(object)
        .map_err(|source| LoaderError::Object { source })?;
    load_component(&mut ebpf, PROG_XDP_PASS_BASELINE, &dispatcher, 0).map(drop)
}

/// Loads the firewall object with its ingress program marked as an `freplace` component
/// (for [`load_component`] with [`PROG_XDP_INGRESS`]).
///
/// # Errors
/// aya's, as [`LoaderError::Object`].
pub fn load_object_as_component(object: &[u8]) -> Result<Ebpf, LoaderError> {
    EbpfLoader::new()
        .extension(PROG_XDP_INGRESS)
        .load(object)
        .map_err(|source| LoaderError::Object { source })
}

/// Why a kernel refuses `freplace` programs, for [`LoaderError::MultiprogUnsupported`].
#[must_use]
pub fn unsupported_reason(errno: i32) -> String {
    format!(
        "the kernel refuses BPF_PROG_TYPE_EXT (freplace) programs ({}) before verifying them, \
         as some hardened or sandboxed kernels do; libxdp hits the same wall and falls back to \
         attaching a single program without its dispatcher",
        io::Error::from_raw_os_error(errno)
    )
}

fn load_errno(error: &ProgramError) -> Option<i32> {
    match error {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
        _ => None,
    }
}

/// What holds an interface's XDP hook, in words for an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpOccupant {
    /// The attached program's id.
    pub prog_id: u32,
    /// Its name as the kernel keeps it (15 bytes), empty if unknown.
    pub name: String,
    /// `native`, `skb`, ...
    pub mode: &'static str,
    /// For a libxdp dispatcher: the names of its component programs, from its pins.
    pub components: Option<Vec<String>>,
}

impl XdpOccupant {
    /// Describes the program `attached` on interface `ifindex`.
    #[must_use]
    pub fn of(ifindex: u32, attached: XdpAttached) -> Self {
        let name = program_name(attached.prog_id).unwrap_or_default();
        let components = (name == DISPATCHER_PROGRAM).then(|| {
            dispatcher_components(
                &Path::new(LIBXDP_PIN_ROOT)
                    .join(format!("dispatch-{ifindex}-{}", attached.prog_id)),
            )
        });
        Self {
            prog_id: attached.prog_id,
            name,
            mode: attached.mode.short(),
            components,
        }
    }

    /// What to do about it, as one clause.
    #[must_use]
    pub fn remedy(&self, iface: &str) -> String {
        if self.components.is_some() {
            format!(
                "the firewall's multi-program mode is not available yet, so it needs the XDP \
                 hook to itself: unload them with `xdp-loader unload {iface} --all`"
            )
        } else {
            format!(
                "it does not speak libxdp's multi-program protocol, so nothing can run beside \
                 it: remove it first (`xdp-loader unload {iface} --all` if libxdp loaded it, \
                 else `ip link set {iface} xdp off`; a bpf_link goes with its owner or its pin)"
            )
        }
    }
}

impl fmt::Display for XdpOccupant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() {
            "(unnamed)"
        } else {
            &self.name
        };
        match &self.components {
            Some(components) if components.is_empty() => write!(
                f,
                "libxdp's multi-program dispatcher (id {}, {} mode) with no pinned programs",
                self.prog_id, self.mode
            ),
            Some(components) => write!(
                f,
                "libxdp's multi-program dispatcher (id {}, {} mode) running {}",
                self.prog_id,
                self.mode,
                components.join(", ")
            ),
            None => write!(
                f,
                "XDP program `{name}` (id {}, {} mode)",
                self.prog_id, self.mode
            ),
        }
    }
}

/// The name of program `prog_id`, if it exists.
fn program_name(prog_id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == prog_id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
}

/// The names of the component programs pinned in a libxdp dispatcher directory (`progN-prog`),
/// in slot order.
fn dispatcher_components(dir: &Path) -> Vec<String> {
    (0..DISPATCHER_SLOTS)
        .map_while(|slot| {
            let pin: PathBuf = dir.join(format!("{}-prog", slot_function(slot)));
            let info = aya::programs::ProgramInfo::from_pin(pin).ok()?;
            Some(info.name_as_str().unwrap_or("(unnamed)").to_owned())
        })
        .collect()
}
