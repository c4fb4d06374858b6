//! The aya side: load the object (with the chosen map sizes, optionally reusing the maps pinned
//! by an earlier run), configure it, attach/adopt/detach the XDP ingress and tc egress programs,
//! read counters. `run` drives this; integration tests use it directly (and
//! [`Firewall::ebpf_mut`] for `TestRun` and map access).
//!
//! Both programs are attached through bpf_links: an XDP link and a TCX egress link (kernel >=
//! 6.6) per interface. When the firewall was loaded with a pin directory, both links are pinned
//! there, so the programs stay attached when the loader exits or dies, and a later run reopens
//! the links and swaps its own programs in atomically (`BPF_LINK_UPDATE`) instead of detaching
//! and attaching again: no packet ever meets an interface without the firewall.
//!
//! Without TCX (Linux < 6.6), or with [`EgressAttach::Clsact`], the egress program is a clsact
//! direct-action `cls_bpf` filter instead, at a fixed priority and handle
//! ([`EGRESS_FILTER_PRIORITY`], [`EGRESS_FILTER_HANDLE`]). A filter has no link to pin, but it
//! outlives the process that added it just the same; a later run finds it by netlink and
//! replaces its program in place (`RTM_NEWTFILTER` on the same priority and handle, without
//! `NLM_F_CREATE`: `cls_bpf` swaps the program under RCU).

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::{
            qdisc_add_clsact, NlOptions, SchedClassifierLink, SchedClassifierLinkId,
            TcAttachOptions, TcError, TcHandle,
        },
        xdp::{XdpLink, XdpLinkId},
        Extension, ProgramError, ProgramInfo, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    util::KernelVersion,
    Ebpf, EbpfError, EbpfLoader,
};
use mptcp_common::maps::{
    GLOBAL_COARSE_CLOCK, MAP_CONNS, MAP_COUNTERS, MAP_DROP_EVENTS, MAP_FLOWS, MAP_KEY_EVENTS,
    MAP_TOKENS, PROG_TC_EGRESS, PROG_XDP_INGRESS, PROG_XDP_INGRESS_SINGLE_BUFFER,
};

use crate::{
    kernel::bpf_sys::{self, LinkDetails, BPF_LINK_TYPE_TCX, BPF_LINK_TYPE_XDP},
    kernel::error::{verifier_log_tail, KernelError},
    kernel::layout::ObjectLayout,
    kernel::map_sizes::MapSizes,
    kernel::multiprog::{self, XdpChain},
    kernel::netlink,
    kernel::preflight::interface_index,
    kernel::state::{tcx_link_pin, xdp_link_pin, PinnedLinks},
    kernel::store::{sum_counters, KernelMaps},
};

/// Verifier log lines shown at debug level when the kernel rejects the program.
const VERIFIER_TAIL_LINES: usize = 40;

/// How to attach XDP to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttach {
    /// In the driver (fast; fails on drivers without XDP support).
    Native,
    /// Generic XDP in the network stack (works everywhere, slower).
    Skb,
    /// Native if the driver supports it, otherwise generic.
    #[default]
    Auto,
}

/// How to attach the egress program to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EgressAttach {
    /// A TCX link (Linux >= 6.6, pinned like the XDP link).
    Tcx,
    /// A clsact direct-action `cls_bpf` filter over netlink, for kernels without TCX.
    Clsact,
    /// TCX if the kernel has it (>= 6.6), else clsact.
    #[default]
    Auto,
}

impl EgressAttach {
    /// TCX or clsact: `Auto` chooses by the running kernel's version, as aya does.
    #[must_use]
    pub fn resolve(self) -> Self {
        match self {
            // TCX: torvalds/linux@e420bed02507 ("bpf: Add fd-based tcx multi-prog infra with
            // link support"), first in 6.6. A kernel whose version cannot be read is taken as new.
            Self::Auto
                if KernelVersion::current().map_or(true, |v| v >= KernelVersion::new(6, 6, 0)) =>
            {
                Self::Tcx
            }
            Self::Auto => Self::Clsact,
            chosen => chosen,
        }
    }
}

/// Priority of the clsact egress filter ([`EgressAttach::Clsact`]): first among the classic
/// filters, so it sees what the host sends before a filter with a verdict; it gives none
/// itself (`TC_ACT_UNSPEC`), so the filters after it still run.
pub const EGRESS_FILTER_PRIORITY: u16 = 1;
/// Handle of the clsact egress filter ("MF"); with the priority, how a later run finds it.
pub const EGRESS_FILTER_HANDLE: u32 = 0x4d46;

/// The mode an attachment ended up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    /// Driver mode.
    Native,
    /// Generic (skb) mode.
    Skb,
}

impl AttachedMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }

    /// `native` or `generic (skb)`.
    #[must_use]
    pub const fn short(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "generic (skb)",
        }
    }

    /// The mode of an XDP program as netlink reports it (hardware offload and multi-mode
    /// attachments are not ours).
    #[must_use]
    pub const fn from_netlink(mode: netlink::XdpAttachMode) -> Option<Self> {
        match mode {
            netlink::XdpAttachMode::Native => Some(Self::Native),
            netlink::XdpAttachMode::Skb => Some(Self::Skb),
            netlink::XdpAttachMode::Hardware | netlink::XdpAttachMode::Multi => None,
        }
    }

    /// Whether an attachment in this mode satisfies `--xdp-mode how`.
    #[must_use]
    pub const fn satisfies(self, how: XdpAttach) -> bool {
        matches!(
            (how, self),
            (XdpAttach::Auto, _) | (XdpAttach::Native, Self::Native) | (XdpAttach::Skb, Self::Skb)
        )
    }
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} XDP", self.short())
    }
}

/// Kernel ids of a link and of the program it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkIds {
    /// The link's id (stays the same when its program is replaced).
    pub link: u32,
    /// The program's id.
    pub prog: u32,
}

impl From<LinkDetails> for LinkIds {
    fn from(d: LinkDetails) -> Self {
        Self {
            link: d.id,
            prog: d.prog_id,
        }
    }
}

impl fmt::Display for LinkIds {
    /// `link 12, prog 45`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link {}, prog {}", self.link, self.prog)
    }
}

/// The egress side of an attachment.
#[derive(Debug)]
enum Egress {
    /// A TCX link and where it is pinned (none when the firewall has no pin directory).
    Tcx { link: FdLink, pin: Option<PathBuf> },
    /// Our clsact filter ([`EGRESS_FILTER_PRIORITY`], [`EGRESS_FILTER_HANDLE`]).
    Clsact,
}

/// What is attached to one interface: an XDP link and the egress link or filter.
#[derive(Debug)]
struct Attachment {
    iface: String,
    ifindex: u32,
    xdp_mode: AttachedMode,
    xdp: FdLink,
    /// Where the XDP link is pinned (none when the firewall has no pin directory).
    xdp_pin: Option<PathBuf>,
    tc: Egress,
    /// Taken over from an earlier run's pins: on an error path it is left attached as found.
    adopted: bool,
    /// `xdp` is the link of a libxdp dispatcher's component ([`XdpChain::Multiprog`]): the
    /// dispatcher's pins hold it, and leaving takes it out of the dispatcher.
    chained: bool,
}

/// How the egress program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressIds {
    /// A TCX link.
    Tcx(LinkIds),
    /// The clsact filter ([`EGRESS_FILTER_PRIORITY`], [`EGRESS_FILTER_HANDLE`]), running
    /// program `prog`.
    Clsact {
        /// The program's id.
        prog: u32,
    },
}

impl EgressIds {
    /// The id of the program attached.
    #[must_use]
    pub const fn prog(self) -> u32 {
        match self {
            Self::Tcx(ids) => ids.prog,
            Self::Clsact { prog } => prog,
        }
    }

    /// `TCX egress (link 13, prog 46` or `clsact egress filter (prio 1, handle 0x4d46, prog
    /// 46`, without the closing parenthesis.
    fn open(self) -> String {
        match self {
            Self::Tcx(ids) => format!("TCX egress ({ids}"),
            Self::Clsact { prog } => format!(
                "clsact egress filter (prio {EGRESS_FILTER_PRIORITY}, handle \
                 {EGRESS_FILTER_HANDLE:#x}, prog {prog}"
            ),
        }
    }
}

impl fmt::Display for EgressIds {
    /// `TCX egress (link 13, prog 46)`, `clsact egress filter (prio 1, handle 0x4d46, prog 46)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{})", self.open())
    }
}

/// How one interface was attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAttachment {
    /// The XDP mode in use.
    pub xdp: AttachedMode,
    /// The XDP link.
    pub xdp_link: LinkIds,
    /// The egress link or filter.
    pub egress: EgressIds,
    /// Whether `mptcp_tc_egress` netlink filters left by an older loader version were removed.
    pub stale_filters_removed: bool,
}

impl fmt::Display for InterfaceAttachment {
    /// `native XDP ingress (link 12, prog 45), TCX egress (link 13, prog 46)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ingress ({}), {}",
            self.xdp, self.xdp_link, self.egress
        )
    }
}

/// Whether an adopting run puts its own programs into the links it reopens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProgramSwap {
    /// Only when they differ from the running ones (another object: an upgrade); the same
    /// object keeps running untouched.
    #[default]
    IfDifferent,
    /// Always (tests use it to exercise the atomic replacement with one object).
    Always,
}

/// What became of an interface's programs when its links were adopted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramsOutcome {
    /// The running programs are those of this object: left as they were.
    Kept,
    /// Replaced atomically by this run's programs through `BPF_LINK_UPDATE`.
    Replaced,
    /// The link was missing from the pins (a run died while attaching): attached anew.
    Attached,
}

impl ProgramsOutcome {
    /// `program kept`, `program replaced`, `attached anew`.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Kept => "program kept",
            Self::Replaced => "program replaced",
            Self::Attached => "attached anew",
        }
    }
}

/// How one interface was taken over from the links an earlier run pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdoptedInterface {
    /// The XDP mode in use.
    pub xdp: AttachedMode,
    /// The XDP link (same link id as before; the program id changes if replaced).
    pub xdp_link: LinkIds,
    /// The egress link (same link id as before) or filter.
    pub egress: EgressIds,
    /// The XDP program's fate.
    pub xdp_programs: ProgramsOutcome,
    /// The tc program's fate.
    pub tc_programs: ProgramsOutcome,
}

impl fmt::Display for AdoptedInterface {
    /// `native XDP ingress (link 12, prog 45, program kept), TCX egress (link 13, prog 46,
    /// program kept)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ingress ({}, {}), {}, {})",
            self.xdp,
            self.xdp_link,
            self.xdp_programs.describe(),
            self.egress.open(),
            self.tc_programs.describe()
        )
    }
}

/// One interface [`Firewall::detach_all`] detached from, or [`Firewall::release_all`] left
/// attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetachedInterface {
    /// Interface name.
    pub iface: String,
    /// Interface index.
    pub ifindex: u32,
}

/// The loaded eBPF object with its XDP and tc programs verified and loaded into the kernel.
/// Dropping it detaches what it attached itself and leaves adopted links as it found them.
#[derive(Debug)]
pub struct Firewall {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    /// Where links are pinned (the pin directory it was loaded with).
    link_dir: Option<PathBuf>,
    /// How the egress program is attached to an interface attached anew.
    egress: EgressAttach,
    /// How the XDP program takes an interface's hook.
    chain: XdpChain,
}

impl Firewall {
    /// Loads `object` (normally [`crate::EBPF_OBJ`]) with the compiled-in map sizes.
    ///
    /// # Errors
    /// See [`Firewall::load_with`].
    pub fn load(object: &[u8]) -> Result<Self, KernelError> {
        Self::load_with(object, &MapSizes::default())
    }

    /// Loads `object`: creates its maps with `sizes` and loads the XDP and tc programs through
    /// the verifier. Nothing is attached yet.
    ///
    /// # Errors
    /// [`KernelError::ObjectNotBuilt`] for the empty stub object, [`KernelError::MapCreate`]
    /// when the kernel refuses a map of that size, [`KernelError::VerifierRejected`] when it
    /// refuses a program, other variants for aya failures.
    pub fn load_with(object: &[u8], sizes: &MapSizes) -> Result<Self, KernelError> {
        Self::load_inner(object, sizes, None, XdpChain::Exclusive)
    }

    /// Like [`Firewall::load_with`], but every map the programs of successive runs share
    /// (the object's [`ObjectLayout`]) is reopened from its pin in `dir` if it is there, and
    /// created and pinned there otherwise; links attached later are pinned in `dir` too.
    /// Check the pinned layout first ([`ObjectLayout::check_pinned`]): aya reuses a pinned map
    /// as it finds it.
    ///
    /// # Errors
    /// As for [`Firewall::load_with`].
    pub fn load_pinned(object: &[u8], sizes: &MapSizes, dir: &Path) -> Result<Self, KernelError> {
        Self::load_inner(object, sizes, Some(dir), XdpChain::Exclusive)
    }

    /// [`Firewall::load_pinned`] with the XDP program taking interfaces as `chain` says: with
    /// [`XdpChain::Multiprog`] it is loaded as an `freplace` component when it is first
    /// attached, against that interface's new dispatcher ([`crate::kernel::multiprog`]).
    ///
    /// # Errors
    /// As for [`Firewall::load_with`].
    pub fn load_pinned_chained(
        object: &[u8],
        sizes: &MapSizes,
        dir: &Path,
        chain: XdpChain,
    ) -> Result<Self, KernelError> {
        Self::load_inner(object, sizes, Some(dir), chain)
    }

    fn load_inner(
        object: &[u8],
        sizes: &MapSizes,
        dir: Option<&Path>,
        chain: XdpChain,
    ) -> Result<Self, KernelError> {
        if object.is_empty() {
            return Err(KernelError::ObjectNotBuilt);
        }
        let layout = match dir {
            Some(_) => Some(ObjectLayout::parse(object)?),
            None => None,
        };
        lift_memlock_limit();
        let mut loader = object_loader();
        if chain == XdpChain::Multiprog {
            loader.extension(xdp_ingress_program());
        }
        for (name, entries) in sizes.entries() {
            loader.map_max_entries(name, entries);
        }
        if let (Some(dir), Some(layout)) = (dir, &layout) {
            for name in layout.names() {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let ebpf = loader.load(object).map_err(|source| match source {
            EbpfError::ProgramError(source) => program_load_error(xdp_ingress_program(), source),
            EbpfError::MapError(MapError::CreateError { name, io_error }) => {
                let entries = sizes
                    .entries()
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, e)| *e);
                KernelError::MapCreate {
                    map: name,
                    entries,
                    io_error,
                }
            }
            source => KernelError::Object { source },
        })?;
        let mut firewall = Self {
            ebpf,
            attachments: Vec::new(),
            link_dir: dir.map(Path::to_path_buf),
            egress: EgressAttach::Auto,
            chain,
        };
        if chain == XdpChain::Exclusive {
            firewall
                .xdp_mut()?
                .load()
                .map_err(|e| program_load_error(xdp_ingress_program(), e))?;
        }
        firewall
            .tc_egress_mut()?
            .load()
            .map_err(|e| program_load_error(PROG_TC_EGRESS, e))?;
        Ok(firewall)
    }

    /// The aya handle, e.g. for `TestRun` or to read maps in tests.
    #[must_use]
    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The aya handle, mutable.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The XDP program: [`xdp_ingress_program`] of the object.
    ///
    /// # Errors
    /// When the object has no XDP program of that name.
    pub fn xdp_mut(&mut self) -> Result<&mut Xdp, KernelError> {
        typed_program(&mut self.ebpf, xdp_ingress_program())
    }

    /// The tc egress program.
    ///
    /// # Errors
    /// When the object has no classifier named [`PROG_TC_EGRESS`].
    pub fn tc_egress_mut(&mut self) -> Result<&mut SchedClassifier, KernelError> {
        typed_program(&mut self.ebpf, PROG_TC_EGRESS)
    }

    /// How [`Firewall::attach`] (and [`Firewall::adopt`] when nothing egress is left) attach
    /// the egress program; [`EgressAttach::Auto`] unless set.
    pub fn set_egress_attach(&mut self, how: EgressAttach) {
        self.egress = how;
    }

    /// Attaches the XDP program (ingress) and the tc program (egress, as a TCX link or a clsact
    /// filter, see [`Firewall::set_egress_attach`]) to `iface`, pinning the links in the pin
    /// directory if the firewall was loaded with one. With [`XdpAttach::Auto`] XDP tries native
    /// mode first. If the tc part fails, the XDP part is undone: an interface has both or
    /// neither.
    ///
    /// # Errors
    /// [`KernelError::InterfaceProtected`] when another firewall holds the interface,
    /// [`KernelError::XdpAlreadyAttached`] when another XDP program does,
    /// [`KernelError::Attach`] and friends for XDP, [`KernelError::TcAttach`] for tc,
    /// [`KernelError::PinLink`] when a link cannot be pinned.
    pub fn attach(
        &mut self,
        iface: &str,
        how: XdpAttach,
    ) -> Result<InterfaceAttachment, KernelError> {
        let ifindex = interface_index(iface)?;
        // XDP first: it refuses a second firewall on the same interface, so an
        // `mptcp_tc_egress` netlink filter found afterwards is an older loader's leftover.
        let (xdp_mode, xdp) = self.attach_or_chain_xdp(iface, ifindex, how)?;
        let chained = self.chain == XdpChain::Multiprog;
        let result = self.attach_egress_after(iface, ifindex, xdp_mode, xdp, chained);
        if result.is_err() && chained {
            leave_dispatcher(iface, ifindex);
        }
        result
    }

    /// The rest of [`Firewall::attach`] once XDP is attached: egress, then the pins.
    fn attach_egress_after(
        &mut self,
        iface: &str,
        ifindex: u32,
        xdp_mode: AttachedMode,
        xdp: FdLink,
        chained: bool,
    ) -> Result<InterfaceAttachment, KernelError> {
        let stale_filters_removed = netlink::remove_stale_filters(iface).unwrap_or_else(|e| {
            log::warn!("could not look for stale tc filters on {iface}: {e}");
            false
        });
        // On an error below, dropping the unpinned links detaches them again.
        let xdp_link = link_ids(&xdp, iface)?;
        let (tc, egress) = if self.egress.resolve() == EgressAttach::Clsact {
            let prog = self.attach_clsact(iface)?;
            (Egress::Clsact, EgressIds::Clsact { prog })
        } else {
            let link = self.attach_tcx(iface)?;
            let ids = EgressIds::Tcx(link_ids(&link, iface)?);
            (Egress::Tcx { link, pin: None }, ids)
        };
        let pinned = if chained {
            // The dispatcher's pins hold it.
            Ok((xdp, None))
        } else {
            self.pin_link(xdp, &xdp_link_pin(ifindex))
        };
        let (xdp, xdp_pin) = match pinned {
            Ok(pinned) => pinned,
            Err(e) => {
                // A filter is not undone by dropping anything.
                if matches!(tc, Egress::Clsact) {
                    remove_clsact_filter(iface);
                }
                return Err(e);
            }
        };
        let tc = match tc {
            Egress::Tcx { link, .. } => match self.pin_link(link, &tcx_link_pin(ifindex)) {
                Ok((link, pin)) => Egress::Tcx { link, pin },
                Err(e) => {
                    unpin(xdp_pin.as_deref());
                    return Err(e);
                }
            },
            Egress::Clsact => Egress::Clsact,
        };
        self.attachments.push(Attachment {
            iface: iface.to_owned(),
            ifindex,
            xdp_mode,
            xdp,
            xdp_pin,
            tc,
            adopted: false,
            chained,
        });
        Ok(InterfaceAttachment {
            xdp: xdp_mode,
            xdp_link,
            egress,
            stale_filters_removed,
        })
    }

    /// Takes over the links an earlier run pinned for `iface` (interface `links.ifindex`, whose
    /// XDP program runs in `mode`): reopens them and, unless the running programs are this
    /// object's and `swap` is [`ProgramSwap::IfDifferent`], replaces the programs atomically
    /// (the interface is never without them). A link missing from the pins is attached anew.
    ///
    /// # Errors
    /// When a pin cannot be opened, is not a link of the right kind for this interface, or the
    /// update fails; the links are then left as they were.
    pub fn adopt(
        &mut self,
        iface: &str,
        links: &PinnedLinks,
        mode: AttachedMode,
        swap: ProgramSwap,
    ) -> Result<AdoptedInterface, KernelError> {
        let ifindex = links.ifindex;
        let (xdp, xdp_pin, xdp_programs) = match &links.xdp {
            Some(_) if self.chain == XdpChain::Multiprog => {
                return Err(KernelError::ChainModeChange {
                    iface: iface.to_owned(),
                })
            }
            Some(path) => {
                let (link, outcome) = self.adopt_link::<Xdp>(iface, ifindex, path, swap)?;
                (link, Some(path.clone()), outcome)
            }
            None => {
                let how = match mode {
                    AttachedMode::Native => XdpAttach::Native,
                    AttachedMode::Skb => XdpAttach::Skb,
                };
                let (_, link) = self.attach_or_chain_xdp(iface, ifindex, how)?;
                let (link, pin) = if self.chain == XdpChain::Multiprog {
                    // A component of the dispatcher: an earlier run's went in the swap.
                    (link, None)
                } else {
                    self.pin_link(link, &xdp_link_pin(ifindex))?
                };
                (link, pin, ProgramsOutcome::Attached)
            }
        };
        let (tc, egress, tc_programs) = match self.adopt_egress(iface, links, swap) {
            Ok(tc) => tc,
            Err(e) => {
                // An XDP link this call attached anew goes again; an adopted one stays pinned.
                if xdp_programs == ProgramsOutcome::Attached {
                    unpin(xdp_pin.as_deref());
                    if self.chain == XdpChain::Multiprog {
                        leave_dispatcher(iface, ifindex);
                    }
                }
                return Err(e);
            }
        };
        let adopted = AdoptedInterface {
            xdp: mode,
            xdp_link: link_ids(&xdp, iface)?,
            egress,
            xdp_programs,
            tc_programs,
        };
        self.attachments.push(Attachment {
            iface: iface.to_owned(),
            ifindex,
            xdp_mode: mode,
            xdp,
            xdp_pin,
            tc,
            adopted: true,
            chained: self.chain == XdpChain::Multiprog,
        });
        Ok(adopted)
    }

    /// The egress half of [`Firewall::adopt`]: the pinned TCX link, else our clsact filter if
    /// the interface has it, else attached anew as [`Firewall::set_egress_attach`] says.
    fn adopt_egress(
        &mut self,
        iface: &str,
        links: &PinnedLinks,
        swap: ProgramSwap,
    ) -> Result<(Egress, EgressIds, ProgramsOutcome), KernelError> {
        let ifindex = links.ifindex;
        if let Some(path) = &links.tcx {
            let (link, outcome) = self.adopt_link::<SchedClassifier>(iface, ifindex, path, swap)?;
            let ids = EgressIds::Tcx(link_ids(&link, iface)?);
            let pin = Some(path.clone());
            return Ok((Egress::Tcx { link, pin }, ids, outcome));
        }
        let filter = clsact_filter(ifindex).map_err(|source| KernelError::ClsactAttach {
            iface: iface.to_owned(),
            source: ProgramError::IOError(source),
        })?;
        if let Some(running) = filter {
            let (prog, outcome) = self.adopt_clsact(iface, running, swap)?;
            return Ok((Egress::Clsact, EgressIds::Clsact { prog }, outcome));
        }
        if self.egress.resolve() == EgressAttach::Clsact {
            let prog = self.attach_clsact(iface)?;
            return Ok((
                Egress::Clsact,
                EgressIds::Clsact { prog },
                ProgramsOutcome::Attached,
            ));
        }
        let link = self.attach_tcx(iface)?;
        let ids = EgressIds::Tcx(link_ids(&link, iface)?);
        let (link, pin) = self.pin_link(link, &tcx_link_pin(ifindex))?;
        Ok((Egress::Tcx { link, pin }, ids, ProgramsOutcome::Attached))
    }

    /// Keeps our clsact filter on `iface`, which runs program `running`, or (unless `swap` is
    /// [`ProgramSwap::IfDifferent`] and it runs our program) replaces its program in place:
    /// `RTM_NEWTFILTER` on the same priority and handle without `NLM_F_CREATE`. Returns the
    /// program id it runs now.
    fn adopt_clsact(
        &mut self,
        iface: &str,
        running: u32,
        swap: ProgramSwap,
    ) -> Result<(u32, ProgramsOutcome), KernelError> {
        let tc_error = |source| KernelError::ClsactAttach {
            iface: iface.to_owned(),
            source,
        };
        let program = self.tc_egress_mut()?;
        if swap == ProgramSwap::IfDifferent && same_program(running, program)? {
            return Ok((running, ProgramsOutcome::Kept));
        }
        let filter = SchedClassifierLink::attached(
            iface,
            TcAttachType::Egress,
            EGRESS_FILTER_PRIORITY,
            TcHandle::from(EGRESS_FILTER_HANDLE),
            None,
        )
        .map_err(|e| tc_error(ProgramError::IOError(e)))?;
        let id = program.attach_to_link(filter).map_err(tc_error)?;
        keep_filter(program, id).map_err(tc_error)?;
        let prog = program.info().map_err(tc_error)?.id();
        Ok((prog, ProgramsOutcome::Replaced))
    }

    /// Reopens the `P` link pinned at `path` for `iface` (interface `ifindex`) and, unless
    /// `swap` is [`ProgramSwap::IfDifferent`] and it already runs our program, puts our program
    /// into it atomically.
    fn adopt_link<P: OurProgram>(
        &mut self,
        iface: &str,
        ifindex: u32,
        path: &Path,
        swap: ProgramSwap,
    ) -> Result<(FdLink, ProgramsOutcome), KernelError>
    where
        for<'a> &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
    {
        let old = open_link(path, P::LINK_TYPE, ifindex)?;
        let old_prog = link_ids(&old, iface)?.prog;
        let program: &mut P = typed_program(&mut self.ebpf, P::object_name())?;
        if swap == ProgramSwap::IfDifferent && same_program(old_prog, program)? {
            return Ok((old, ProgramsOutcome::Kept));
        }
        let old = P::Link::try_from(old).map_err(|_| not_a_link(path))?;
        let id = program
            .attach_to_link(old)
            .map_err(|source| link_update_error(path, source))?;
        let link = program
            .take_link(id)
            .map_err(|source| link_update_error(path, source))?;
        let link: FdLink = link.try_into().map_err(|_| not_a_link(path))?;
        Ok((link, ProgramsOutcome::Replaced))
    }

    /// XDP alone ([`Firewall::attach_xdp`]) or, with [`XdpChain::Multiprog`], as the
    /// firewall's component of the interface's libxdp dispatcher (replacing an earlier run's
    /// component atomically).
    fn attach_or_chain_xdp(
        &mut self,
        iface: &str,
        ifindex: u32,
        how: XdpAttach,
    ) -> Result<(AttachedMode, FdLink), KernelError> {
        if self.chain == XdpChain::Exclusive {
            return self.attach_xdp(iface, ifindex, how);
        }
        let program: &mut Extension = self
            .ebpf
            .program_mut(xdp_ingress_program())
            .ok_or(KernelError::MissingInObject {
                kind: "program",
                name: xdp_ingress_program(),
            })?
            .try_into()
            .map_err(|e| program_load_error(xdp_ingress_program(), e))?;
        let member = multiprog::Member {
            name: xdp_ingress_program(),
            slot: multiprog::FIREWALL_SLOT,
            program,
        };
        let (swap, link) = multiprog::install_linked(
            iface,
            ifindex,
            how,
            member,
            Path::new(multiprog::DISPATCHER_OBJECT),
        )?;
        log::info!(
            "{iface}: libxdp dispatcher {} runs {} (replaced {:?})",
            swap.dispatcher.unwrap_or(0),
            swap.components.join(", "),
            swap.replaced
        );
        let mode = netlink::xdp_attached(ifindex)
            .ok()
            .flatten()
            .and_then(|a| AttachedMode::from_netlink(a.mode))
            .unwrap_or(AttachedMode::Skb);
        Ok((mode, link))
    }

    fn attach_xdp(
        &mut self,
        iface: &str,
        ifindex: u32,
        how: XdpAttach,
    ) -> Result<(AttachedMode, FdLink), KernelError> {
        let attempts: &[AttachedMode] = match how {
            XdpAttach::Native => &[AttachedMode::Native],
            XdpAttach::Skb => &[AttachedMode::Skb],
            XdpAttach::Auto => &[AttachedMode::Native, AttachedMode::Skb],
        };
        let mut last_error = None;
        for &mode in attempts {
            match self.xdp_mut()?.attach_to_if_index(ifindex, mode.xdp_mode()) {
                Ok(id) => {
                    let link =
                        self.xdp_mut()?
                            .take_link(id)
                            .map_err(|source| KernelError::Attach {
                                iface: iface.to_owned(),
                                mode: mode.short(),
                                source,
                            })?;
                    // Kernels without XDP links (< 5.9) get a netlink attachment, which can
                    // neither be pinned nor updated.
                    let link = FdLink::try_from(link).map_err(|_| KernelError::NoXdpLinks {
                        iface: iface.to_owned(),
                    })?;
                    return Ok((mode, link));
                }
                Err(source) => {
                    if let Some(errno @ (libc::EEXIST | libc::EBUSY)) = attach_errno(&source) {
                        // Not a driver limitation: falling back to another mode would fail too.
                        log::debug!("attaching XDP to {iface} failed (errno {errno}): {source}");
                        return Err(busy_interface(iface, ifindex, self.link_dir.as_deref()));
                    }
                    log::debug!(
                        "attaching XDP to {iface} in {} mode failed: {source}",
                        mode.short()
                    );
                    last_error = Some((mode, source));
                }
            }
        }
        let (mode, source) = last_error.expect("at least one attempt");
        if mode == AttachedMode::Native && attach_errno(&source) == Some(libc::EOPNOTSUPP) {
            return Err(KernelError::NativeXdpUnsupported {
                iface: iface.to_owned(),
            });
        }
        Err(KernelError::Attach {
            iface: iface.to_owned(),
            mode: mode.short(),
            source,
        })
    }

    /// Attaches the egress classifier as a TCX link (kernel >= 6.6; `bpftool net` lists it,
    /// `tc filter show` does not), after whatever other TCX programs the interface has.
    fn attach_tcx(&mut self, iface: &str) -> Result<FdLink, KernelError> {
        let tc_error = |source| KernelError::TcAttach {
            iface: iface.to_owned(),
            source,
        };
        let program = self.tc_egress_mut()?;
        let id = program
            .attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(tc_error)?;
        let link = program.take_link(id).map_err(tc_error)?;
        FdLink::try_from(link).map_err(|_| tc_error(ProgramError::NotAttached))
    }

    /// Attaches the egress classifier as our clsact direct-action filter
    /// ([`EGRESS_FILTER_PRIORITY`], [`EGRESS_FILTER_HANDLE`]), adding a clsact qdisc if the
    /// interface has none. Returns the program's id.
    fn attach_clsact(&mut self, iface: &str) -> Result<u32, KernelError> {
        let tc_error = |source| KernelError::ClsactAttach {
            iface: iface.to_owned(),
            source,
        };
        match qdisc_add_clsact(iface) {
            Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
            result => result.map_err(|e| tc_error(e.into()))?,
        }
        let program = self.tc_egress_mut()?;
        let id = program
            .attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: EGRESS_FILTER_PRIORITY,
                    handle: TcHandle::from(EGRESS_FILTER_HANDLE),
                    classid: None,
                }),
            )
            .map_err(tc_error)?;
        keep_filter(program, id).map_err(tc_error)?;
        Ok(program.info().map_err(tc_error)?.id())
    }

    /// Pins `link` as `name` in the pin directory, if there is one.
    fn pin_link(&self, link: FdLink, name: &str) -> Result<(FdLink, Option<PathBuf>), KernelError> {
        let Some(dir) = &self.link_dir else {
            return Ok((link, None));
        };
        let path = dir.join(name);
        let pinned = link.pin(&path).map_err(|source| KernelError::PinLink {
            path: path.clone(),
            source,
        })?;
        Ok((pinned.into(), Some(path)))
    }

    /// Interfaces we are attached to, with their XDP mode.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachedMode)> {
        self.attachments
            .iter()
            .map(|a| (a.iface.as_str(), a.xdp_mode))
    }

    /// Detaches both programs from every interface: unpins both links and closes them (the
    /// kernel detaches a link when its last reference goes). Every interface is tried; returns
    /// the ones detached, or the first error after the loop.
    ///
    /// # Errors
    /// The first unpinning that failed (that link stays attached through its pin).
    pub fn detach_all(&mut self) -> Result<Vec<DetachedInterface>, KernelError> {
        let mut detached = Vec::new();
        let mut first_error = None;
        // Newest first, the reverse of attaching.
        for attachment in std::mem::take(&mut self.attachments).into_iter().rev() {
            match detach(attachment) {
                Ok(done) => detached.push(done),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        detached.reverse();
        first_error.map_or(Ok(detached), Err)
    }

    /// Closes every link but leaves its pin: the programs stay attached after the loader exits,
    /// for the next run to adopt (`run --keep-attached`). Returns the interfaces.
    pub fn release_all(&mut self) -> Vec<DetachedInterface> {
        std::mem::take(&mut self.attachments)
            .into_iter()
            .map(|a| {
                if a.xdp_pin.is_none() && !a.chained {
                    log::warn!(
                        "{}: its links were not pinned, so they go with this process",
                        a.iface
                    );
                }
                DetachedInterface {
                    iface: a.iface,
                    ifindex: a.ifindex,
                }
            })
            .collect()
    }

    /// Every counter summed over CPUs, in `Counter::ALL` order.
    ///
    /// # Errors
    /// When the counter map is missing or cannot be read.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, KernelError> {
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or(missing_map(MAP_COUNTERS))?;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(KernelError::map(MAP_COUNTERS))?;
        sum_counters(&counters).map_err(KernelError::map(MAP_COUNTERS))
    }

    /// Takes the key-event ring buffer out of the object (for the event loop).
    ///
    /// # Errors
    /// When it is missing or not a ring buffer.
    pub fn take_key_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        self.take_ring(MAP_KEY_EVENTS)
    }

    /// Takes the drop-event ring buffer out of the object (for the event loop).
    ///
    /// # Errors
    /// When it is missing or not a ring buffer.
    pub fn take_drop_events(&mut self) -> Result<RingBuf<MapData>, KernelError> {
        self.take_ring(MAP_DROP_EVENTS)
    }

    fn take_ring(&mut self, name: &'static str) -> Result<RingBuf<MapData>, KernelError> {
        let map = self.ebpf.take_map(name).ok_or(missing_map(name))?;
        RingBuf::try_from(map).map_err(KernelError::map(name))
    }

    /// Takes the connection, subflow and token maps out of the object (for the event loop's
    /// installation and idle sweep).
    ///
    /// # Errors
    /// When one is missing or its key/value sizes differ from ours.
    pub fn take_maps(&mut self) -> Result<KernelMaps, KernelError> {
        Ok(KernelMaps {
            conns: self.take_hash_map(MAP_CONNS)?,
            flows: self.take_hash_map(MAP_FLOWS)?,
            tokens: self.take_hash_map(MAP_TOKENS)?,
        })
    }

    fn take_hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<MapData, K, V>, KernelError> {
        let map = self.ebpf.take_map(name).ok_or(missing_map(name))?;
        HashMap::try_from(map).map_err(KernelError::map(name))
    }
}

impl Drop for Firewall {
    /// Error paths: detach what this firewall attached itself (closing an unpinned link would
    /// detach it too, but a pinned one needs its pin removed); adopted links stay as found.
    fn drop(&mut self) {
        let (adopted, own): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attachments)
            .into_iter()
            .partition(|a| a.adopted);
        drop(adopted);
        for attachment in own {
            if let Err(e) = detach(attachment) {
                log::warn!("cleaning up the attachments: {e}");
            }
        }
    }
}

/// Unpins and closes an interface's links, or removes its clsact filter (tc first, the reverse
/// of attaching).
fn detach(attachment: Attachment) -> Result<DetachedInterface, KernelError> {
    let Attachment {
        iface,
        ifindex,
        xdp,
        tc,
        xdp_pin,
        chained,
        ..
    } = attachment;
    let mut links = Vec::new();
    match tc {
        Egress::Tcx { link, pin } => links.push((link, pin)),
        Egress::Clsact => remove_clsact_filter(&iface),
    }
    let mut result = Ok(());
    if chained {
        // Out of the dispatcher (the others stay); its pins held our link.
        result = multiprog::uninstall(
            &iface,
            ifindex,
            xdp_ingress_program(),
            Path::new(multiprog::DISPATCHER_OBJECT),
        )
        .map(drop);
    }
    links.push((xdp, xdp_pin));
    for (link, pin) in links {
        if let Some(pin) = pin {
            if let Err(e) = fs::remove_file(&pin) {
                if e.kind() != io::ErrorKind::NotFound && result.is_ok() {
                    result = Err(KernelError::io("unpinning the link", pin)(e));
                }
            }
        }
        let id = link.info().map(|i| i.id()).ok();
        // The last reference: the kernel detaches the program now.
        drop(link);
        if let Some(id) = id {
            bpf_sys::wait_link_gone(id);
        }
    }
    result.map(|()| DetachedInterface { iface, ifindex })
}

/// Error paths of a chained attach: takes the firewall's component out of the dispatcher again.
fn leave_dispatcher(iface: &str, ifindex: u32) {
    let object = Path::new(multiprog::DISPATCHER_OBJECT);
    if let Err(e) = multiprog::uninstall(iface, ifindex, xdp_ingress_program(), object) {
        log::warn!("{iface}: could not leave the dispatcher: {e}");
    }
}

/// Takes the clsact filter aya just attached (`id`) out of the program's links and forgets it:
/// aya deletes a filter when its link is dropped, and ours must outlive this process (until
/// `detach`, or a run's exit without `--keep-attached`, removes it).
fn keep_filter(
    program: &mut SchedClassifier,
    id: SchedClassifierLinkId,
) -> Result<(), ProgramError> {
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

/// The program our clsact egress filter runs on interface `ifindex` (of this network
/// namespace), if the filter is there.
///
/// # Errors
/// When netlink fails.
pub fn clsact_filter(ifindex: u32) -> io::Result<Option<u32>> {
    Ok(netlink::egress_bpf_filters(ifindex)?
        .into_iter()
        .find(|f| {
            f.priority == EGRESS_FILTER_PRIORITY
                && f.handle == EGRESS_FILTER_HANDLE
                && f.name == PROG_TC_EGRESS
        })
        .map(|f| f.prog_id))
}

/// Removes our clsact filter from `iface` (every `mptcp_tc_egress` filter of its egress hook);
/// the clsact qdisc stays, other filters may use it.
fn remove_clsact_filter(iface: &str) {
    if let Err(e) = netlink::remove_stale_filters(iface) {
        log::warn!("{e}");
    }
}

/// Removes a pin, if any, ignoring errors (undoing a half-done attach).
fn unpin(pin: Option<&Path>) {
    if let Some(pin) = pin {
        let _ = fs::remove_file(pin);
    }
}

/// Link and program ids of `link`.
fn link_ids(link: &FdLink, iface: &str) -> Result<LinkIds, KernelError> {
    let info = link.info().map_err(|source| KernelError::LinkInfo {
        iface: iface.to_owned(),
        source,
    })?;
    Ok(LinkIds {
        link: info.id(),
        prog: info.program_id(),
    })
}

/// Opens a pinned link and checks that it is a live link of `link_type` on `ifindex`.
fn open_link(path: &Path, link_type: u32, ifindex: u32) -> Result<FdLink, KernelError> {
    let link: FdLink = PinnedLink::from_pin(path)
        .map_err(|source| KernelError::OpenLink {
            path: path.to_path_buf(),
            source,
        })?
        .into();
    let id = link
        .info()
        .map_err(|source| KernelError::OpenLink {
            path: path.to_path_buf(),
            source,
        })?
        .id();
    let details =
        bpf_sys::link_details_by_id(id).map_err(KernelError::io("inspecting the link", path))?;
    if details.link_type != link_type || details.ifindex != ifindex {
        return Err(not_a_link(path));
    }
    Ok(link)
}

fn not_a_link(path: &Path) -> KernelError {
    KernelError::IncompatiblePins {
        pin_dir: path.parent().unwrap_or(path).to_path_buf(),
        detail: format!(
            "{} is not the link this loader expects there",
            path.file_name().unwrap_or_default().to_string_lossy()
        ),
    }
}

fn link_update_error(path: &Path, source: ProgramError) -> KernelError {
    KernelError::LinkUpdate {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether program `running` (by id) is the same code as `ours`: same tag. The tag hashes the
/// instructions with map references zeroed, so two loads of one object compare equal.
fn same_program(running: u32, ours: &impl OurProgram) -> Result<bool, KernelError> {
    let running = bpf_sys::prog_tag(running).map_err(KernelError::io(
        "reading the tag of",
        format!("program {running}"),
    ))?;
    Ok(u64::from_be_bytes(running) == ours.tag()?)
}

/// One of our two programs, as far as adopting its pinned link goes: aya gives each program
/// type its own link type and inherent methods, which this puts behind one interface.
trait OurProgram {
    /// Its name in the object.
    const NAME: &'static str;
    /// The kernel's type of its links.
    const LINK_TYPE: u32;
    /// aya's link type for it.
    type Link: TryFrom<FdLink> + TryInto<FdLink>;
    /// aya's id of a link it owns.
    type LinkId;

    fn info(&self) -> Result<ProgramInfo, ProgramError>;
    fn attach_to_link(&mut self, link: Self::Link) -> Result<Self::LinkId, ProgramError>;
    fn take_link(&mut self, id: Self::LinkId) -> Result<Self::Link, ProgramError>;

    /// The program of the object this kernel loads for it: [`Self::NAME`] (the XDP one has a
    /// twin for older kernels, see [`xdp_ingress_program`]).
    fn object_name() -> &'static str {
        Self::NAME
    }

    /// The tag of the loaded program.
    fn tag(&self) -> Result<u64, KernelError> {
        self.info()
            .map(|i| i.tag())
            .map_err(|source| KernelError::ProgramLoad {
                program: Self::NAME,
                source,
            })
    }
}

impl OurProgram for Xdp {
    const NAME: &'static str = PROG_XDP_INGRESS;
    const LINK_TYPE: u32 = BPF_LINK_TYPE_XDP;
    type Link = XdpLink;
    type LinkId = XdpLinkId;

    fn object_name() -> &'static str {
        xdp_ingress_program()
    }
    fn info(&self) -> Result<ProgramInfo, ProgramError> {
        Xdp::info(self)
    }
    fn attach_to_link(&mut self, link: XdpLink) -> Result<XdpLinkId, ProgramError> {
        Xdp::attach_to_link(self, link)
    }
    fn take_link(&mut self, id: XdpLinkId) -> Result<XdpLink, ProgramError> {
        Xdp::take_link(self, id)
    }
}

impl OurProgram for SchedClassifier {
    const NAME: &'static str = PROG_TC_EGRESS;
    const LINK_TYPE: u32 = BPF_LINK_TYPE_TCX;
    type Link = SchedClassifierLink;
    type LinkId = SchedClassifierLinkId;

    fn info(&self) -> Result<ProgramInfo, ProgramError> {
        SchedClassifier::info(self)
    }
    fn attach_to_link(
        &mut self,
        link: SchedClassifierLink,
    ) -> Result<SchedClassifierLinkId, ProgramError> {
        SchedClassifier::attach_to_link(self, link)
    }
    fn take_link(
        &mut self,
        id: SchedClassifierLinkId,
    ) -> Result<SchedClassifierLink, ProgramError> {
        SchedClassifier::take_link(self, id)
    }
}

/// The error for an interface whose XDP hook is taken: by another firewall (its pins found
/// by the program id the interface runs) or by someone else's program.
fn busy_interface(iface: &str, ifindex: u32, own_dir: Option<&Path>) -> KernelError {
    let attached = netlink::xdp_attached(ifindex).ok().flatten();
    let owner = attached.and_then(|a| crate::kernel::pins::find_xdp_link_owner(a.prog_id, own_dir));
    match owner {
        Some((pin_dir, pid)) => KernelError::InterfaceProtected {
            iface: iface.to_owned(),
            pin_dir,
            owner: pid.map_or_else(
                || "no loader process: programs attached by pinned links".to_owned(),
                |pid| format!("mptcp-loader run pid {pid}"),
            ),
        },
        // Ours, but pinned somewhere we did not look (a run with an unusual --pin-dir).
        None if attached.is_some_and(|a| runs_our_xdp_program(a.prog_id)) => {
            KernelError::InterfaceProtectedElsewhere {
                iface: iface.to_owned(),
                prog_id: attached.map_or(0, |a| a.prog_id),
            }
        }
        None => {
            let occupant = attached.map(|a| crate::kernel::multiprog::XdpOccupant::of(ifindex, a));
            KernelError::XdpAlreadyAttached {
                iface: iface.to_owned(),
                occupant: occupant
                    .as_ref()
                    .map_or_else(|| "another XDP program".to_owned(), ToString::to_string),
                remedy: occupant.map_or_else(
                    || format!("see `ip link show {iface}` and remove it first"),
                    |o| o.remedy(iface),
                ),
            }
        }
    }
}

/// Kernels before 5.11 charge maps and programs to `RLIMIT_MEMLOCK` (64 KiB for a service by
/// default, far below the maps' size): lift it, as libbpf does. Later kernels charge the
/// memory cgroup instead.
fn lift_memlock_limit() {
    if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 11, 0)) {
        return;
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) } != 0 {
        log::warn!(
            "could not lift RLIMIT_MEMLOCK ({}): map creation may fail on this kernel",
            std::io::Error::last_os_error()
        );
    }
}

/// The XDP ingress program of the object this kernel loads: [`PROG_XDP_INGRESS`], multi-buffer
/// aware, where the kernel has multi-buffer XDP (5.18); else [`PROG_XDP_INGRESS_SINGLE_BUFFER`],
/// which older kernels load (they reject the frags flag). Probed once per process.
#[must_use]
pub fn xdp_ingress_program() -> &'static str {
    static NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        if crate::kernel::bpf_sys::kernel_has_xdp_frags() {
            PROG_XDP_INGRESS
        } else {
            log::info!(
                "this kernel has no multi-buffer XDP (5.18): loading {PROG_XDP_INGRESS_SINGLE_BUFFER}"
            );
            PROG_XDP_INGRESS_SINGLE_BUFFER
        }
    })
}

/// Whether program `prog_id` is an `mptcp_xdp_ingress` (the kernel keeps 15 bytes of a name).
fn runs_our_xdp_program(prog_id: u32) -> bool {
    let ours = &PROG_XDP_INGRESS[..PROG_XDP_INGRESS.len().min(15)];
    aya::programs::loaded_programs()
        .flatten()
        .any(|p| p.id() == prog_id && p.name_as_str() == Some(ours))
}

/// The OS error behind a failed attach (link create or netlink), if there is one.
fn attach_errno(error: &ProgramError) -> Option<i32> {
    match error {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        ProgramError::XdpError(aya::programs::xdp::XdpError::NetlinkError(e))
        | ProgramError::NetlinkError(e) => e.raw_os_error(),
        ProgramError::IOError(e) => e.raw_os_error(),
        _ => None,
    }
}

fn missing_map(name: &'static str) -> KernelError {
    KernelError::MissingInObject { kind: "map", name }
}

/// A verifier rejection becomes one line; its log goes to debug level.
fn program_load_error(program: &'static str, source: ProgramError) -> KernelError {
    match source {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let verifier_log = verifier_log.to_string();
            log::debug!(
                "verifier log (last {VERIFIER_TAIL_LINES} lines):\n{}",
                verifier_log_tail(&verifier_log, VERIFIER_TAIL_LINES)
            );
            KernelError::VerifierRejected {
                program,
                io_error,
                verifier_log,
            }
        }
        source => KernelError::ProgramLoad { program, source },
    }
}

/// The program `name` of the object as its concrete type (`Xdp`, `SchedClassifier`).
fn typed_program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let missing = KernelError::MissingInObject {
        kind: "program",
        name,
    };
    let program = ebpf.program_mut(name).ok_or(missing)?;
    program
        .try_into()
        .map_err(|source| KernelError::ProgramLoad {
            program: name,
            source,
        })
}

/// An `EbpfLoader` for the firewall's object, with its globals set for this kernel: the fast
/// path's coarse clock ([`GLOBAL_COARSE_CLOCK`]) is turned off where the kernel lacks it
/// (before 5.11). Every load of the object goes through here. Probed once per process.
#[must_use]
pub fn object_loader() -> EbpfLoader<'static> {
    static HAS_COARSE_CLOCK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static NO_COARSE_CLOCK: u8 = 0;
    let mut loader = EbpfLoader::new();
    let has_coarse = *HAS_COARSE_CLOCK.get_or_init(|| {
        let has = crate::kernel::bpf_sys::kernel_has_coarse_clock();
        if !has {
            log::info!("this kernel has no bpf_ktime_get_coarse_ns (5.11): the fast path reads the precise clock");
        }
        has
    });
    if !has_coarse {
        loader.override_global(GLOBAL_COARSE_CLOCK, &NO_COARSE_CLOCK, true);
    }
    loader
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_object_is_refused_clearly() {
        let err = Firewall::load(&[]).unwrap_err();
        assert!(matches!(err, KernelError::ObjectNotBuilt), "{err}");
    }

    #[test]
    fn attached_modes_read_well() {
        assert_eq!(AttachedMode::Native.to_string(), "native XDP");
        assert_eq!(AttachedMode::Skb.to_string(), "generic (skb) XDP");
    }
}
