//! The aya side: load the object, configure it, attach/detach XDP, pin maps, read counters.
//! `run` drives this; integration tests use it directly (and [`Firewall::ebpf_mut`] for
//! `TestRun` and map access).

use std::fmt;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use mptcp_common::maps::{
    Config, ConnState, MAP_CONFIG, MAP_CONNS, MAP_COUNTERS, MAP_KEY_EVENTS, MODE_ENFORCE,
    MODE_MONITOR, PINNED_MAPS, PROG_XDP_INGRESS,
};

use crate::{
    errors::{verifier_log_tail, LoaderError},
    pins::PinDir,
    stats::sum_counters,
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

#[derive(Debug)]
struct Attachment {
    iface: String,
    mode: AttachedMode,
    link: aya::programs::xdp::XdpLinkId,
}

/// The loaded eBPF object with its XDP program verified and loaded into the kernel.
/// Dropping it detaches everything it attached.
#[derive(Debug)]
pub struct Firewall {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
}

impl Firewall {
    /// Loads `object` (normally [`crate::EBPF_OBJ`]): creates its maps and loads the XDP program
    /// through the verifier. Nothing is attached yet.
    ///
    /// # Errors
    /// [`LoaderError::ObjectNotBuilt`] for the empty stub object, [`LoaderError::VerifierRejected`]
    /// when the kernel refuses the program, other variants for aya failures.
    pub fn load(object: &[u8]) -> Result<Self, LoaderError> {
        if object.is_empty() {
            return Err(LoaderError::ObjectNotBuilt);
        }
        let mut ebpf = EbpfLoader::new()
            .load(object)
            .map_err(|source| match source {
                EbpfError::ProgramError(source) => program_load_error(source),
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
        firewall.xdp_mut()?.load().map_err(program_load_error)?;
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
            pad: 0,
        };
        config
            .set(0, value, 0)
            .map_err(LoaderError::map(MAP_CONFIG))
    }

    /// Attaches the XDP program to `iface`; with [`XdpAttach::Auto`] tries native mode first.
    /// Returns the mode in use.
    ///
    /// # Errors
    /// [`LoaderError::Attach`] when every mode tried failed.
    pub fn attach(&mut self, iface: &str, how: XdpAttach) -> Result<AttachedMode, LoaderError> {
        let attempts: &[AttachedMode] = match how {
            XdpAttach::Native => &[AttachedMode::Native],
            XdpAttach::Skb => &[AttachedMode::Skb],
            XdpAttach::Auto => &[AttachedMode::Native, AttachedMode::Skb],
        };
        let mut last_error = None;
        for &mode in attempts {
            match self.xdp_mut()?.attach(iface, mode.xdp_mode()) {
                Ok(link) => {
                    self.attachments.push(Attachment {
                        iface: iface.to_owned(),
                        mode,
                        link,
                    });
                    return Ok(mode);
                }
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

    /// Interfaces we are attached to, with their mode.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachedMode)> {
        self.attachments.iter().map(|a| (a.iface.as_str(), a.mode))
    }

    /// Detaches XDP from every interface. Returns the interfaces detached; the first error
    /// stops nothing (every interface is tried), and is returned after the loop.
    ///
    /// # Errors
    /// The first detach that failed.
    pub fn detach_all(&mut self) -> Result<Vec<String>, LoaderError> {
        let mut detached = Vec::new();
        let mut first_error = None;
        for Attachment { iface, mode, link } in std::mem::take(&mut self.attachments) {
            match self.xdp_mut().and_then(|xdp| {
                xdp.detach(link).map_err(|source| LoaderError::Attach {
                    iface: iface.clone(),
                    mode: mode.short(),
                    source,
                })
            }) {
                Ok(()) => detached.push(iface),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(detached), Err)
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

    /// Takes the connection map out of the object (for the event loop).
    ///
    /// # Errors
    /// When it is missing or its key/value sizes differ from ours.
    pub fn take_conns(&mut self) -> Result<HashMap<MapData, u64, ConnState>, LoaderError> {
        let map = self
            .ebpf
            .take_map(MAP_CONNS)
            .ok_or(missing_map(MAP_CONNS))?;
        HashMap::try_from(map).map_err(LoaderError::map(MAP_CONNS))
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
fn program_load_error(source: ProgramError) -> LoaderError {
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
                program: PROG_XDP_INGRESS,
                io_error,
                verifier_log,
            }
        }
        source => LoaderError::ProgramLoad {
            program: PROG_XDP_INGRESS,
            source,
        },
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
