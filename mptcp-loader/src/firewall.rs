//! The aya side: load the object (with the chosen map sizes), configure it, attach/detach the
//! XDP ingress and tc egress programs, pin maps, read counters. `run` drives this; integration
//! tests use it directly (and [`Firewall::ebpf_mut`] for `TestRun` and map access).

use std::fmt;

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions},
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use mptcp_common::maps::{
    Config, DEFAULT_EVENT_BURST, DEFAULT_EVENT_RATE, MAP_CONFIG, MAP_CONNS, MAP_COUNTERS,
    MAP_FLOWS, MAP_KEY_EVENTS, MAP_TOKENS, MODE_ENFORCE, MODE_MONITOR, PINNED_MAPS, PROG_TC_EGRESS,
    PROG_XDP_INGRESS,
};

use crate::{
    errors::{verifier_log_tail, LoaderError},
    map_sizes::MapSizes,
    pins::PinDir,
    preflight::interface_index,
    stats::sum_counters,
    store::KernelMaps,
    tc,
};

/// Verifier log lines shown at debug level when the kernel rejects the program.
const VERIFIER_TAIL_LINES: usize = 40;

/// What the program does with an ADD_ADDR whose HMAC is wrong.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum FilterMode {
    /// Drop it.
    Enforce,
    /// Pass it and count it as would-drop.
    #[default]
    Monitor,
}

impl FilterMode {
    /// The value written to `Config::mode`.
    #[must_use]
    pub const fn config_value(self) -> u32 {
        match self {
            Self::Enforce => MODE_ENFORCE,
            Self::Monitor => MODE_MONITOR,
        }
    }
}

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

    fn short(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "generic (skb)",
        }
    }
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} XDP", self.short())
    }
}

/// What is attached to one interface.
#[derive(Debug)]
struct Attachment {
    iface: String,
    ifindex: u32,
    xdp_mode: AttachedMode,
    xdp: aya::programs::xdp::XdpLinkId,
    tc: SchedClassifierLinkId,
    /// We added the interface's clsact qdisc, so we remove it again.
    clsact_added: bool,
}

/// How one interface was attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAttachment {
    /// The XDP mode in use.
    pub xdp: AttachedMode,
    /// Whether we added the clsact qdisc for the tc egress program (removed again on detach).
    pub clsact_added: bool,
    /// Whether `mptcp_tc_egress` filters of a run that died without cleaning up were removed.
    pub stale_filters_removed: bool,
}

impl fmt::Display for InterfaceAttachment {
    /// `native XDP ingress, tc egress`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ingress, tc egress", self.xdp)
    }
}

/// What became of the clsact qdisc of an interface we detached from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClsactOutcome {
    /// It was there before us: left as it was.
    NotOurs,
    /// We had added it and removed it.
    Removed,
    /// We had added it but left it in place: someone else has attached a filter to it since,
    /// or ours could not be detached or the deletion failed (the log says which).
    Kept,
}

/// One interface [`Firewall::detach_all`] detached from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetachedInterface {
    /// Interface name.
    pub iface: String,
    /// The clsact qdisc's fate.
    pub clsact: ClsactOutcome,
}

/// The loaded eBPF object with its XDP and tc programs verified and loaded into the kernel.
/// Dropping it detaches everything it attached (and removes a clsact qdisc it added).
#[derive(Debug)]
pub struct Firewall {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
}

impl Firewall {
    /// Loads `object` (normally [`crate::EBPF_OBJ`]) with the compiled-in map sizes.
    ///
    /// # Errors
    /// See [`Firewall::load_with`].
    pub fn load(object: &[u8]) -> Result<Self, LoaderError> {
        Self::load_with(object, &MapSizes::default())
    }

    /// Loads `object`: creates its maps with `sizes` and loads the XDP and tc programs through
    /// the verifier. Nothing is attached yet.
    ///
    /// # Errors
    /// [`LoaderError::ObjectNotBuilt`] for the empty stub object, [`LoaderError::MapCreate`]
    /// when the kernel refuses a map of that size, [`LoaderError::VerifierRejected`] when it
    /// refuses a program, other variants for aya failures.
    pub fn load_with(object: &[u8], sizes: &MapSizes) -> Result<Self, LoaderError> {
        if object.is_empty() {
            return Err(LoaderError::ObjectNotBuilt);
        }
        let mut loader = EbpfLoader::new();
        for (name, entries) in sizes.entries() {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(object).map_err(|source| match source {
            EbpfError::ProgramError(source) => program_load_error(PROG_XDP_INGRESS, source),
            EbpfError::MapError(MapError::CreateError { name, io_error }) => {
                let entries = sizes
                    .entries()
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, e)| *e);
                LoaderError::MapCreate {
                    map: name,
                    entries,
                    io_error,
                }
            }
            source => LoaderError::Object { source },
        })?;
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_ebpf_logger(logger),
            Err(e) => log::debug!("eBPF logging is off: {e}"),
        }
        let mut firewall = Self {
            ebpf,
            attachments: Vec::new(),
        };
        firewall
            .xdp_mut()?
            .load()
            .map_err(|e| program_load_error(PROG_XDP_INGRESS, e))?;
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

    /// The XDP program.
    ///
    /// # Errors
    /// When the object has no XDP program named [`PROG_XDP_INGRESS`].
    pub fn xdp_mut(&mut self) -> Result<&mut Xdp, LoaderError> {
        let missing = LoaderError::MissingInObject {
            kind: "program",
            name: PROG_XDP_INGRESS,
        };
        let program = self.ebpf.program_mut(PROG_XDP_INGRESS).ok_or(missing)?;
        program
            .try_into()
            .map_err(|source| LoaderError::ProgramLoad {
                program: PROG_XDP_INGRESS,
                source,
            })
    }

    /// The tc egress program.
    ///
    /// # Errors
    /// When the object has no classifier named [`PROG_TC_EGRESS`].
    pub fn tc_egress_mut(&mut self) -> Result<&mut SchedClassifier, LoaderError> {
        let missing = LoaderError::MissingInObject {
            kind: "program",
            name: PROG_TC_EGRESS,
        };
        let program = self.ebpf.program_mut(PROG_TC_EGRESS).ok_or(missing)?;
        program
            .try_into()
            .map_err(|source| LoaderError::ProgramLoad {
                program: PROG_TC_EGRESS,
                source,
            })
    }

    /// Writes the filter mode into the config map.
    ///
    /// # Errors
    /// When the map is missing or cannot be written.
    pub fn set_mode(&mut self, mode: FilterMode) -> Result<(), LoaderError> {
        let map = self
            .ebpf
            .map_mut(MAP_CONFIG)
            .ok_or(missing_map(MAP_CONFIG))?;
        let mut config: Array<_, Config> =
            Array::try_from(map).map_err(LoaderError::map(MAP_CONFIG))?;
        let value = Config {
            mode: mode.config_value(),
            event_rate: DEFAULT_EVENT_RATE,
            event_burst: DEFAULT_EVENT_BURST,
            ..Config::default()
        };
        config
            .set(0, value, 0)
            .map_err(LoaderError::map(MAP_CONFIG))
    }

    /// Attaches the XDP program (ingress) and the tc program (egress, adding a clsact qdisc if
    /// the interface has none) to `iface`. With [`XdpAttach::Auto`] XDP tries native mode first.
    /// If the tc part fails, the XDP part is undone: an interface has both or neither.
    ///
    /// # Errors
    /// [`LoaderError::Attach`] and friends for XDP, [`LoaderError::Clsact`] or
    /// [`LoaderError::TcAttach`] for tc.
    pub fn attach(
        &mut self,
        iface: &str,
        how: XdpAttach,
    ) -> Result<InterfaceAttachment, LoaderError> {
        let ifindex = interface_index(iface)?;
        // XDP first: it refuses a second live run on the same interface, so whatever tc filter
        // of ours is left after it succeeded belongs to a dead run.
        let (xdp_mode, xdp) = self.attach_xdp(iface, how)?;
        match self.attach_tc_egress(iface, ifindex) {
            Ok((tc, clsact_added, stale_filters_removed)) => {
                self.attachments.push(Attachment {
                    iface: iface.to_owned(),
                    ifindex,
                    xdp_mode,
                    xdp,
                    tc,
                    clsact_added,
                });
                Ok(InterfaceAttachment {
                    xdp: xdp_mode,
                    clsact_added,
                    stale_filters_removed,
                })
            }
            Err(e) => {
                if let Err(undo) = self.xdp_mut().and_then(|p| {
                    p.detach(xdp).map_err(|source| LoaderError::Attach {
                        iface: iface.to_owned(),
                        mode: xdp_mode.short(),
                        source,
                    })
                }) {
                    log::warn!("could not detach XDP from {iface} again: {undo}");
                }
                Err(e)
            }
        }
    }

    fn attach_xdp(
        &mut self,
        iface: &str,
        how: XdpAttach,
    ) -> Result<(AttachedMode, aya::programs::xdp::XdpLinkId), LoaderError> {
        let attempts: &[AttachedMode] = match how {
            XdpAttach::Native => &[AttachedMode::Native],
            XdpAttach::Skb => &[AttachedMode::Skb],
            XdpAttach::Auto => &[AttachedMode::Native, AttachedMode::Skb],
        };
        let mut last_error = None;
        for &mode in attempts {
            match self.xdp_mut()?.attach(iface, mode.xdp_mode()) {
                Ok(link) => return Ok((mode, link)),
                Err(source) => {
                    if let Some(errno @ (libc::EEXIST | libc::EBUSY)) = attach_errno(&source) {
                        // Not a driver limitation: falling back to another mode would fail too.
                        log::debug!("attaching XDP to {iface} failed (errno {errno}): {source}");
                        return Err(LoaderError::XdpAlreadyAttached {
                            iface: iface.to_owned(),
                        });
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
            return Err(LoaderError::NativeXdpUnsupported {
                iface: iface.to_owned(),
            });
        }
        Err(LoaderError::Attach {
            iface: iface.to_owned(),
            mode: mode.short(),
            source,
        })
    }

    /// Attaches the egress classifier as a netlink (`cls_bpf`, direct-action) filter, so that
    /// `tc filter show dev IF egress` lists it (see [`crate::tc`]). Returns the link, whether we
    /// added the clsact qdisc, and whether stale filters were removed first.
    fn attach_tc_egress(
        &mut self,
        iface: &str,
        ifindex: u32,
    ) -> Result<(SchedClassifierLinkId, bool, bool), LoaderError> {
        let clsact_added = tc::ensure_clsact(iface, ifindex)?;
        // Only a clsact that was already there can hold a dead run's filter.
        let stale_filters_removed = !clsact_added && tc::remove_stale_filters(iface)?;
        let attached = self.tc_egress_mut()?.attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions::default()),
        );
        match attached {
            Ok(link) => Ok((link, clsact_added, stale_filters_removed)),
            Err(source) => {
                if clsact_added {
                    remove_clsact(iface, ifindex);
                }
                Err(LoaderError::TcAttach {
                    iface: iface.to_owned(),
                    source,
                })
            }
        }
    }

    /// Interfaces we are attached to, with their XDP mode.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachedMode)> {
        self.attachments
            .iter()
            .map(|a| (a.iface.as_str(), a.xdp_mode))
    }

    /// Detaches both programs from every interface (the tc filter, then the clsact qdisc if we
    /// added it and nobody else uses it, then XDP). Every interface is tried; returns the ones
    /// fully detached, or the first error after the loop.
    ///
    /// # Errors
    /// The first detach that failed.
    pub fn detach_all(&mut self) -> Result<Vec<DetachedInterface>, LoaderError> {
        let mut detached = Vec::new();
        let mut first_error = None;
        // Newest first, the reverse of attaching.
        for attachment in std::mem::take(&mut self.attachments).into_iter().rev() {
            match self.detach(attachment) {
                Ok(done) => detached.push(done),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        detached.reverse();
        first_error.map_or(Ok(detached), Err)
    }

    fn detach(&mut self, attachment: Attachment) -> Result<DetachedInterface, LoaderError> {
        let Attachment {
            iface,
            ifindex,
            xdp_mode,
            xdp,
            tc,
            clsact_added,
        } = attachment;
        let tc_result = self.tc_egress_mut().and_then(|p| {
            p.detach(tc).map_err(|source| LoaderError::TcDetach {
                iface: iface.clone(),
                source,
            })
        });
        let clsact = match (clsact_added, &tc_result) {
            (false, _) => ClsactOutcome::NotOurs,
            // Our filter may still hang from it: leave the qdisc rather than rip the filter out.
            (true, Err(_)) => ClsactOutcome::Kept,
            (true, Ok(())) => remove_clsact(&iface, ifindex),
        };
        let xdp_result = self.xdp_mut().and_then(|p| {
            p.detach(xdp).map_err(|source| LoaderError::Attach {
                iface: iface.clone(),
                mode: xdp_mode.short(),
                source,
            })
        });
        tc_result?;
        xdp_result?;
        Ok(DetachedInterface { iface, clsact })
    }

    /// Pins every map of [`PINNED_MAPS`] into `dir`.
    ///
    /// # Errors
    /// When a map is missing or cannot be pinned.
    pub fn pin_maps(&self, dir: &PinDir) -> Result<(), LoaderError> {
        for name in PINNED_MAPS {
            let map = self.ebpf.map(name).ok_or(missing_map(name))?;
            let path = dir.pin_path(name);
            map.pin(&path).map_err(|source| LoaderError::Pin {
                map: name,
                path,
                source,
            })?;
        }
        Ok(())
    }

    /// Every counter summed over CPUs, in `Counter::ALL` order.
    ///
    /// # Errors
    /// When the counter map is missing or cannot be read.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, LoaderError> {
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or(missing_map(MAP_COUNTERS))?;
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(LoaderError::map(MAP_COUNTERS))?;
        sum_counters(&counters).map_err(LoaderError::map(MAP_COUNTERS))
    }

    /// Takes the key-event ring buffer out of the object (for the event loop).
    ///
    /// # Errors
    /// When it is missing or not a ring buffer.
    pub fn take_key_events(&mut self) -> Result<RingBuf<MapData>, LoaderError> {
        let map = self
            .ebpf
            .take_map(MAP_KEY_EVENTS)
            .ok_or(missing_map(MAP_KEY_EVENTS))?;
        RingBuf::try_from(map).map_err(LoaderError::map(MAP_KEY_EVENTS))
    }

    /// Takes the connection, subflow and token maps out of the object (for the event loop's
    /// installation and idle sweep).
    ///
    /// # Errors
    /// When one is missing or its key/value sizes differ from ours.
    pub fn take_maps(&mut self) -> Result<KernelMaps, LoaderError> {
        Ok(KernelMaps {
            conns: self.take_hash_map(MAP_CONNS)?,
            flows: self.take_hash_map(MAP_FLOWS)?,
            tokens: self.take_hash_map(MAP_TOKENS)?,
        })
    }

    fn take_hash_map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<HashMap<MapData, K, V>, LoaderError> {
        let map = self.ebpf.take_map(name).ok_or(missing_map(name))?;
        HashMap::try_from(map).map_err(LoaderError::map(name))
    }
}

impl Drop for Firewall {
    /// Error paths: detach what is still attached (aya would detach the programs too, but
    /// not remove a clsact qdisc we added).
    fn drop(&mut self) {
        if !self.attachments.is_empty() {
            if let Err(e) = self.detach_all() {
                log::warn!("cleaning up the attachments: {e}");
            }
        }
    }
}

/// Deletes a clsact qdisc we added, unless someone else's filter now hangs from it.
fn remove_clsact(iface: &str, ifindex: u32) -> ClsactOutcome {
    match tc::delete_clsact_if_unused(ifindex) {
        Ok(true) => ClsactOutcome::Removed,
        Ok(false) => {
            log::info!("leaving the clsact qdisc on {iface} in place: another filter uses it now");
            ClsactOutcome::Kept
        }
        Err(e) => {
            log::warn!(
                "could not remove the clsact qdisc we added to {iface} ({e}): remove it with \
                 `tc qdisc del dev {iface} clsact`"
            );
            ClsactOutcome::Kept
        }
    }
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

fn missing_map(name: &'static str) -> LoaderError {
    LoaderError::MissingInObject { kind: "map", name }
}

/// A verifier rejection becomes one line; its log goes to debug level.
fn program_load_error(program: &'static str, source: ProgramError) -> LoaderError {
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
            LoaderError::VerifierRejected {
                program,
                io_error,
                verifier_log,
            }
        }
        source => LoaderError::ProgramLoad { program, source },
    }
}

/// Forwards aya-log records to `log` when a tokio runtime is running (the `run` command);
/// elsewhere (tests without a runtime) logging stays off.
fn spawn_ebpf_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // SAFETY: the logger owns its ring buffer's fd until it is dropped, and as_raw_fd always
    // returns it.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let Ok(mut fd) = registered else {
        return;
    };
    handle.spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_object_is_refused_clearly() {
        let err = Firewall::load(&[]).unwrap_err();
        assert!(matches!(err, LoaderError::ObjectNotBuilt), "{err}");
    }

    #[test]
    fn modes_map_to_config_values() {
        assert_eq!(FilterMode::Enforce.config_value(), MODE_ENFORCE);
        assert_eq!(FilterMode::Monitor.config_value(), MODE_MONITOR);
        assert_eq!(FilterMode::default(), FilterMode::Monitor);
        assert_eq!(AttachedMode::Native.to_string(), "native XDP");
        assert_eq!(AttachedMode::Skb.to_string(), "generic (skb) XDP");
    }
}
