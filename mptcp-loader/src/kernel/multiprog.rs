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
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use aya::{
    programs::{links::FdLink, Extension, ProgramError, ProgramFd, Xdp},
    Ebpf, EbpfLoader, Pod,
};
use mptcp_common::maps::{PROG_XDP_INGRESS, PROG_XDP_PASS_BASELINE};

use crate::{kernel::error::KernelError, kernel::netlink::XdpAttached};

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
    /// first).
    ///
    /// # Panics
    /// With more than [`DISPATCHER_SLOTS`] slots.
    #[must_use]
    pub fn new(slots: &[Slot]) -> Self {
        assert!(slots.len() <= DISPATCHER_SLOTS, "a dispatcher has 10 slots");
        let mut config = Self {
            magic: DISPATCHER_MAGIC,
            dispatcher_version: DISPATCHER_VERSION,
            num_progs_enabled: u8::try_from(slots.len()).expect("at most 10 slots"),
            // aya loads the dispatcher's `xdp` section without BPF_F_XDP_HAS_FRAGS, so the
            // dispatcher is not frags-aware whatever its components are (libxdp, rebuilding
            // it, loads it with the flag when every slot's `program_flags` has it).
            is_xdp_frags: 0,
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
    /// [`KernelError::DispatcherObject`] when the file is missing or aya cannot load it.
    pub fn load_file(path: &Path, slots: &[Slot]) -> Result<Self, KernelError> {
        let object = fs::read(path).map_err(|source| KernelError::DispatcherObject {
            path: path.to_owned(),
            detail: source.to_string(),
        })?;
        Self::load(&object, path, slots)
    }

    /// Loads dispatcher `object` (read from `path`, named in errors) configured for `slots`.
    ///
    /// # Errors
    /// As [`Dispatcher::load_file`].
    pub fn load(object: &[u8], path: &Path, slots: &[Slot]) -> Result<Self, KernelError> {
        let failed = |detail: String| KernelError::DispatcherObject {
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
    pub fn kernel_config(&self) -> Result<DispatcherConfig, KernelError> {
        let failed = |detail: String| KernelError::DispatcherObject {
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
    pub fn fd(&self) -> Result<ProgramFd, KernelError> {
        let fd = self
            .program()
            .fd()
            .map_err(|e| KernelError::MultiprogUnsupported {
                detail: e.to_string(),
            })?;
        fd.try_clone()
            .map_err(|e| KernelError::MultiprogUnsupported {
                detail: format!("duplicating the dispatcher fd: {e}"),
            })
    }
}

/// Loads program `name` of `ebpf` (loaded with `EbpfLoader::extension(name)`) as the component
/// of `dispatcher`'s slot `slot` and links it there. The link keeps it in place while open or
/// pinned (libxdp pins it as `progN-link`).
///
/// # Errors
/// [`KernelError::MultiprogUnsupported`] when the kernel refuses the `freplace` program
/// ([`unsupported_reason`] says why), [`KernelError::VerifierRejected`]-like failures as
/// [`KernelError::ComponentLoad`].
pub fn load_component(
    ebpf: &mut Ebpf,
    name: &'static str,
    dispatcher: &Dispatcher,
    slot: usize,
) -> Result<FdLink, KernelError> {
    let failed = |source: ProgramError| match load_errno(&source) {
        Some(errno) if errno == libc::EPERM => KernelError::MultiprogUnsupported {
            detail: unsupported_reason(errno),
        },
        _ => KernelError::ComponentLoad {
            program: name,
            slot,
            source,
        },
    };
    let extension: &mut Extension = ebpf
        .program_mut(name)
        .ok_or(KernelError::MissingInObject {
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
/// [`KernelError::MultiprogUnsupported`] with the kernel's reason, or the dispatcher's and the
/// object's load errors.
pub fn probe(object: &[u8], dispatcher_object: &Path) -> Result<(), KernelError> {
    let dispatcher = Dispatcher::load_file(dispatcher_object, &[FIREWALL_SLOT])?;
    let mut ebpf = crate::kernel::firewall::object_loader()
        .extension(PROG_XDP_PASS_BASELINE)
        .load(object)
        .map_err(|source| KernelError::Object { source })?;
    load_component(&mut ebpf, PROG_XDP_PASS_BASELINE, &dispatcher, 0).map(drop)
}

/// Loads the firewall object with its ingress program marked as an `freplace` component
/// (for [`load_component`] with [`PROG_XDP_INGRESS`]).
///
/// # Errors
/// aya's, as [`KernelError::Object`].
pub fn load_object_as_component(object: &[u8]) -> Result<Ebpf, KernelError> {
    crate::kernel::firewall::object_loader()
        .extension(crate::kernel::firewall::xdp_ingress_program())
        .load(object)
        .map_err(|source| KernelError::Object { source })
}

/// Why a kernel refuses `freplace` programs, for [`KernelError::MultiprogUnsupported`].
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
                "run with `--xdp-chain multiprog` to join them, or unload them first with \
                 `xdp-loader unload {iface} --all`"
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

/// How `run` takes an interface's XDP hook.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpChain {
    /// The firewall's program alone, through a pinned XDP link.
    #[default]
    Exclusive,
    /// A component of libxdp's dispatcher, beside other libxdp programs (see this module).
    Multiprog,
}

/// The kernel's name of a program (15 bytes of it), how components are recognised in a
/// dispatcher.
#[must_use]
pub fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

/// The dispatcher an interface runs, read as libxdp reads it: its configuration from its
/// `.rodata` map, its components from their pins.
#[derive(Debug)]
pub struct Installed {
    /// The dispatcher's program id.
    pub prog_id: u32,
    /// How it is attached.
    pub mode: crate::kernel::netlink::XdpAttachMode,
    /// Its configuration.
    pub config: DispatcherConfig,
    /// Its pin directory.
    pub dir: PathBuf,
    /// Its components in slot order: kernel name and slot.
    pub components: Vec<(String, Slot)>,
    fd: ProgramFd,
}

impl Installed {
    /// What interface `ifindex` (named `iface` in errors) runs: `None` without XDP, an error
    /// naming the program when it is not a libxdp dispatcher.
    ///
    /// # Errors
    /// [`KernelError::XdpAlreadyAttached`] for a program that is not a dispatcher,
    /// [`KernelError::MultiprogUnsupported`] for a dispatcher that cannot be read.
    pub fn read(iface: &str, ifindex: u32) -> Result<Option<Self>, KernelError> {
        let unreadable = |detail: String| KernelError::MultiprogUnsupported {
            detail: format!("reading the dispatcher on {iface}: {detail}"),
        };
        let Some(attached) =
            crate::kernel::netlink::xdp_attached(ifindex).map_err(|e| unreadable(e.to_string()))?
        else {
            return Ok(None);
        };
        let occupant = XdpOccupant::of(ifindex, attached);
        if occupant.components.is_none() {
            return Err(KernelError::XdpAlreadyAttached {
                iface: iface.to_owned(),
                occupant: occupant.to_string(),
                remedy: occupant.remedy(iface),
            });
        }
        let info = aya::programs::loaded_programs()
            .flatten()
            .find(|p| p.id() == attached.prog_id)
            .ok_or_else(|| unreadable(format!("program {} is gone", attached.prog_id)))?;
        let fd = info.fd().map_err(|e| unreadable(e.to_string()))?;
        let config = info
            .map_ids()
            .map_err(|e| unreadable(e.to_string()))?
            .unwrap_or_default()
            .into_iter()
            .find_map(|id| {
                let map = aya::maps::MapData::from_id(id).ok()?;
                let map = aya::maps::Map::Array(map);
                let array: aya::maps::Array<_, DispatcherConfig> =
                    aya::maps::Array::try_from(map).ok()?;
                array.get(&0, 0).ok()
            })
            .filter(|c| c.magic == DISPATCHER_MAGIC && c.dispatcher_version == DISPATCHER_VERSION)
            .ok_or_else(|| {
                unreadable(format!(
                    "no version {DISPATCHER_VERSION} configuration (another libxdp version?)"
                ))
            })?;
        let dir = dispatcher_dir(ifindex, attached.prog_id);
        let names = occupant.components.unwrap_or_default();
        if names.len() != usize::from(config.num_progs_enabled) {
            return Err(unreadable(format!(
                "{} programs configured, {} pinned under {}",
                config.num_progs_enabled,
                names.len(),
                dir.display()
            )));
        }
        let components = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let slot = Slot {
                    run_priority: config.run_prios[i],
                    chain_call_actions: config.chain_call_actions[i],
                    frags: config.program_flags[i] & BPF_F_XDP_HAS_FRAGS != 0,
                };
                (name, slot)
            })
            .collect();
        Ok(Some(Self {
            prog_id: attached.prog_id,
            mode: attached.mode,
            config,
            dir,
            components,
            fd,
        }))
    }
}

/// `/sys/fs/bpf/xdp/dispatch-IFINDEX-PROGID`.
#[must_use]
pub fn dispatcher_dir(ifindex: u32, prog_id: u32) -> PathBuf {
    Path::new(LIBXDP_PIN_ROOT).join(format!("dispatch-{ifindex}-{prog_id}"))
}

/// The protocol's lock: `flock(LOCK_EX)` on [`LIBXDP_PIN_ROOT`], held while dispatchers are
/// read, built, pinned and swapped.
struct PinLock(#[allow(dead_code, reason = "held for its flock")] fs::File);

impl PinLock {
    fn take() -> Result<Self, KernelError> {
        let failed = |e: io::Error| KernelError::MultiprogUnsupported {
            detail: format!("locking {LIBXDP_PIN_ROOT}: {e}"),
        };
        fs::create_dir_all(LIBXDP_PIN_ROOT).map_err(failed)?;
        let dir = fs::File::open(LIBXDP_PIN_ROOT).map_err(failed)?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&dir), libc::LOCK_EX) } != 0 {
            return Err(failed(io::Error::last_os_error()));
        }
        Ok(Self(dir))
    }
}

/// A program to put into a dispatcher, and its slot.
pub struct Member<'a> {
    /// Its name (matched against the kernel names of the components already there).
    pub name: &'a str,
    /// Its slot.
    pub slot: Slot,
    /// The program: loaded already, or loaded by [`install`] against the new dispatcher.
    pub program: &'a mut Extension,
}

/// What [`install`] and [`uninstall`] left on the interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swap {
    /// The dispatcher the interface runs now (`None`: no XDP program left).
    pub dispatcher: Option<u32>,
    /// The dispatcher it replaced.
    pub replaced: Option<u32>,
    /// The components of the dispatcher now attached, by kernel name, in run order.
    pub components: Vec<String>,
}

/// Puts `member` into the dispatcher of interface `ifindex`, the protocol's way: a new
/// dispatcher with the components already there (the same programs, re-attached) and
/// `member` in its run-priority place, replacing a component of the same name (a restart), is
/// pinned and then swapped in for the old one in one netlink operation (`XDP_FLAGS_REPLACE`), so
/// the interface never runs without either; the old dispatcher's pins go. On an interface
/// without XDP the dispatcher is attached in `how`'s mode.
///
/// # Errors
/// [`KernelError::XdpAlreadyAttached`] when the interface runs a program that is not a
/// dispatcher, [`KernelError::MultiprogUnsupported`] when the kernel refuses a step.
pub fn install(
    iface: &str,
    ifindex: u32,
    how: crate::kernel::firewall::XdpAttach,
    member: Member<'_>,
    dispatcher_object: &Path,
) -> Result<Swap, KernelError> {
    install_linked(iface, ifindex, how, member, dispatcher_object).map(|(swap, _)| swap)
}

/// [`install`], also returning the member's link into the new dispatcher (pinned there too).
///
/// # Errors
/// As [`install`].
pub fn install_linked(
    iface: &str,
    ifindex: u32,
    how: crate::kernel::firewall::XdpAttach,
    member: Member<'_>,
    dispatcher_object: &Path,
) -> Result<(Swap, FdLink), KernelError> {
    let (swap, link) = swap(iface, ifindex, how, Some(member), "", dispatcher_object)?;
    let link = link.ok_or_else(|| KernelError::MultiprogUnsupported {
        detail: format!("no link of the new component on {iface}"),
    })?;
    Ok((swap, link))
}

/// Takes the component named `name` out of the dispatcher of interface `ifindex` (the same
/// swap as [`install`]); the last one out takes the dispatcher with it.
///
/// # Errors
/// As [`install`].
pub fn uninstall(
    iface: &str,
    ifindex: u32,
    name: &str,
    dispatcher_object: &Path,
) -> Result<Swap, KernelError> {
    swap(
        iface,
        ifindex,
        crate::kernel::firewall::XdpAttach::Auto,
        None,
        kernel_name(name),
        dispatcher_object,
    )
    .map(|(swap, _)| swap)
}

/// Takes the firewall's component out of interface `ifindex`'s dispatcher if it is there
/// (`mptcp-loader detach`); whether it was.
///
/// # Errors
/// As [`uninstall`].
pub fn leave(iface: &str, ifindex: u32) -> Result<bool, KernelError> {
    let ours = kernel_name(PROG_XDP_INGRESS);
    // A gone interface (or none of this namespace) has nothing to leave.
    if !matches!(crate::kernel::netlink::xdp_attached(ifindex), Ok(Some(_))) {
        return Ok(false);
    }
    let member = match Installed::read(iface, ifindex) {
        Ok(Some(installed)) => installed.components.iter().any(|(name, _)| name == ours),
        // Nothing there, or not a dispatcher: not ours to take out.
        Ok(None) | Err(KernelError::XdpAlreadyAttached { .. }) => false,
        Err(e) => return Err(e),
    };
    if member {
        uninstall(iface, ifindex, ours, Path::new(DISPATCHER_OBJECT))?;
    }
    Ok(member)
}

fn swap(
    iface: &str,
    ifindex: u32,
    how: crate::kernel::firewall::XdpAttach,
    member: Option<Member<'_>>,
    removed: &str,
    dispatcher_object: &Path,
) -> Result<(Swap, Option<FdLink>), KernelError> {
    let failed = |what: &str, e: &dyn fmt::Display| KernelError::MultiprogUnsupported {
        detail: format!("{what} on {iface}: {e}"),
    };
    let _lock = PinLock::take()?;
    let current = Installed::read(iface, ifindex)?;
    let replaced_name = member
        .as_ref()
        .map_or(removed, |m| kernel_name(m.name))
        .to_owned();
    // The components that stay, as programs reopened from their pins.
    let mut others = Vec::new();
    if let Some(current) = &current {
        for (i, (name, slot)) in current.components.iter().enumerate() {
            if *name == replaced_name {
                continue;
            }
            let pin = current.dir.join(format!("{}-prog", slot_function(i)));
            let program = Extension::from_pin(&pin)
                .map_err(|e| failed(&format!("reopening {}", pin.display()), &e))?;
            others.push((name.clone(), *slot, program));
        }
    }
    // Run order: priority, then name (libxdp's first two keys).
    let mut order: Vec<(String, Slot, Option<usize>)> = others
        .iter()
        .enumerate()
        .map(|(i, (name, slot, _))| (name.clone(), *slot, Some(i)))
        .collect();
    if let Some(m) = &member {
        order.push((kernel_name(m.name).to_owned(), m.slot, None));
    }
    order.sort_by(|a, b| (a.1.run_priority, &a.0).cmp(&(b.1.run_priority, &b.0)));
    if order.len() > DISPATCHER_SLOTS {
        return Err(failed(
            "adding a program",
            &"all 10 dispatcher slots are taken",
        ));
    }

    if order.is_empty() {
        // The last component goes: so does the dispatcher.
        if let Some(current) = &current {
            crate::kernel::netlink::set_xdp(
                ifindex,
                -1,
                mode_flags(current.mode),
                Some(current.fd.as_fd().as_raw_fd()),
            )
            .map_err(|e| failed("detaching the dispatcher", &e))?;
            remove_pins(&current.dir);
        }
        let swap = Swap {
            dispatcher: None,
            replaced: current.as_ref().map(|c| c.prog_id),
            components: Vec::new(),
        };
        return Ok((swap, None));
    }

    let slots: Vec<Slot> = order.iter().map(|(_, slot, _)| *slot).collect();
    let dispatcher = Dispatcher::load_file(dispatcher_object, &slots)?;
    let dispatcher_fd = dispatcher.fd()?;
    let dispatcher_id = dispatcher
        .program()
        .info()
        .map_err(|e| failed("reading the new dispatcher", &e))?
        .id();
    let dir = dispatcher_dir(ifindex, dispatcher_id);
    fs::create_dir_all(&dir).map_err(|e| failed(&format!("creating {}", dir.display()), &e))?;
    let mut member = member;
    let mut member_link = None;
    let result = (|| {
        for (i, (name, _, other)) in order.iter().enumerate() {
            let function = slot_function(i);
            let program: &mut Extension = match other {
                Some(j) => &mut others[*j].2,
                None => member.as_mut().expect("the member is in the order").program,
            };
            let link_id = if program.fd().is_ok() {
                program.attach_to_program(&dispatcher_fd, &function)
            } else {
                program
                    .load(dispatcher.fd()?, &function)
                    .and_then(|()| program.attach())
            }
            .map_err(|e| match load_errno(&e) {
                Some(libc::EPERM) => KernelError::MultiprogUnsupported {
                    detail: unsupported_reason(libc::EPERM),
                },
                _ => failed(&format!("linking {name} into {function}"), &e),
            })?;
            let link: FdLink = program
                .take_link(link_id)
                .map_err(|e| failed("taking the link", &e))?
                .into();
            program
                .pin(dir.join(format!("{function}-prog")))
                .map_err(|e| failed("pinning a component", &e))?;
            let link = link
                .pin(dir.join(format!("{function}-link")))
                .map_err(|e| failed("pinning a component's link", &e))?;
            if other.is_none() {
                member_link = Some(FdLink::from(link));
            }
        }
        let fd = dispatcher_fd.as_fd().as_raw_fd();
        match &current {
            Some(current) => crate::kernel::netlink::set_xdp(
                ifindex,
                fd,
                mode_flags(current.mode),
                Some(current.fd.as_fd().as_raw_fd()),
            )
            .map_err(|e| failed("swapping in the new dispatcher", &e)),
            None => {
                attach_new(ifindex, fd, how).map_err(|e| failed("attaching the dispatcher", &e))
            }
        }
    })();
    if let Err(e) = result {
        remove_pins(&dir);
        return Err(e);
    }
    if let Some(current) = &current {
        remove_pins(&current.dir);
    }
    let swap = Swap {
        dispatcher: Some(dispatcher_id),
        replaced: current.as_ref().map(|c| c.prog_id),
        components: order.into_iter().map(|(name, _, _)| name).collect(),
    };
    Ok((swap, member_link))
}

/// Attaches a first dispatcher (`XDP_FLAGS_UPDATE_IF_NOEXIST`): native, generic, or native
/// then generic.
fn attach_new(ifindex: u32, fd: i32, how: crate::kernel::firewall::XdpAttach) -> io::Result<()> {
    use crate::kernel::{firewall::XdpAttach, netlink};
    let modes: &[u32] = match how {
        XdpAttach::Native => &[netlink::XDP_FLAGS_DRV_MODE],
        XdpAttach::Skb => &[netlink::XDP_FLAGS_SKB_MODE],
        XdpAttach::Auto => &[netlink::XDP_FLAGS_DRV_MODE, netlink::XDP_FLAGS_SKB_MODE],
    };
    let mut last = io::Error::from(io::ErrorKind::InvalidInput);
    for mode in modes {
        match netlink::set_xdp(
            ifindex,
            fd,
            netlink::XDP_FLAGS_UPDATE_IF_NOEXIST | mode,
            None,
        ) {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) => {
                return Err(e)
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The netlink flags that name an attachment's mode (a replacement must give the same).
fn mode_flags(mode: crate::kernel::netlink::XdpAttachMode) -> u32 {
    use crate::kernel::netlink::{XdpAttachMode, XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE};
    match mode {
        XdpAttachMode::Skb => XDP_FLAGS_SKB_MODE,
        XdpAttachMode::Native => XDP_FLAGS_DRV_MODE,
        XdpAttachMode::Hardware | XdpAttachMode::Multi => 0,
    }
}

/// Removes a dispatcher's pin directory (its links and programs stay while anyone holds them).
fn remove_pins(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("could not remove {}: {e}", dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_libxdps_layout() {
        // libxdp checks the value size of the dispatcher's .rodata map before reading it.
        assert_eq!(std::mem::size_of::<DispatcherConfig>(), 124);
        let other = Slot {
            run_priority: 50,
            chain_call_actions: 1 << XDP_PASS,
            frags: false,
        };
        let config = DispatcherConfig::new(&[FIREWALL_SLOT, other]);
        assert_eq!(config.num_progs_enabled, 2);
        assert_eq!(config.chain_call_actions[1], (1 << 2) | (1 << 31));
        assert_eq!(config.program_flags[..3], [BPF_F_XDP_HAS_FRAGS, 0, 0]);
        assert_eq!(config.run_prios[2], 0, "unused slots stay zero");
    }

    #[test]
    fn occupants_are_described_with_their_fix() {
        let plain = XdpOccupant {
            prog_id: 7,
            name: "xdpfilt_alw_all".into(),
            mode: "skb",
            components: None,
        };
        assert_eq!(
            plain.to_string(),
            "XDP program `xdpfilt_alw_all` (id 7, skb mode)"
        );
        assert!(plain.remedy("eth0").contains("`ip link set eth0 xdp off`"));
        let dispatcher = XdpOccupant {
            components: Some(vec!["xdpfilt_alw_all".into(), "xsk_def_prog".into()]),
            name: DISPATCHER_PROGRAM.into(),
            ..plain
        };
        assert_eq!(
            dispatcher.to_string(),
            "libxdp's multi-program dispatcher (id 7, skb mode) running xdpfilt_alw_all, \
             xsk_def_prog"
        );
        assert!(dispatcher
            .remedy("eth0")
            .contains("`xdp-loader unload eth0 --all`"));
    }
}
