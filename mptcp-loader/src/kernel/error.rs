//! The kernel layer's errors: loading the object, attaching its programs, its maps, links and
//! pins. Every message is one line that names the problem and what to do (see `crate::errors`).

use std::{io, path::PathBuf};

use aya::{
    maps::MapError,
    pin::PinError,
    programs::{links::LinkError, ProgramError, TcError},
    EbpfError,
};
use thiserror::Error;

use crate::errors::{IoError, OsError};

/// Everything that can go wrong between the loader and the kernel.
#[derive(Debug, Error)]
pub enum KernelError {
    /// Loading XDP programs and pinning maps needs root (CAP_BPF + CAP_NET_ADMIN).
    #[error(
        "mptcp-loader must run as root (effective uid is {euid}): try `sudo mptcp-loader ...`"
    )]
    NotRoot {
        /// The effective uid we run with.
        euid: u32,
    },

    /// `--iface` names an interface that does not exist in this network namespace.
    #[error("network interface `{iface}` does not exist in this network namespace: check `ip link show`")]
    UnknownInterface {
        /// The name given on the command line.
        iface: String,
    },

    /// The pin directory is not on a BPF filesystem.
    #[error(
        "no BPF filesystem is mounted at {path}: run `mount -t bpf bpf /sys/fs/bpf` \
         (inside `ip netns exec`, /sys is a fresh sysfs: mount it there, or enter the namespace \
         with `nsenter --net=/run/netns/NAME` instead)"
    )]
    BpffsNotMounted {
        /// The directory that should be on bpffs.
        path: PathBuf,
    },

    /// The embedded eBPF object is the empty stub written when bpf-linker was missing.
    #[error(
        "the eBPF object was not built: run `cargo xtask setup` (installs bpf-linker and the \
         nightly rust-src), then rebuild without AYA_BUILD_SKIP"
    )]
    ObjectNotBuilt,

    /// aya could not parse the object or create its maps.
    #[error("could not load the eBPF object: {source}")]
    Object {
        /// aya's error.
        #[source]
        source: EbpfError,
    },

    /// The object has no program or map of the expected name (object and loader out of sync).
    #[error(
        "the eBPF object has no {kind} named `{name}`: rebuild mptcp-loader so both sides agree"
    )]
    MissingInObject {
        /// "program" or "map".
        kind: &'static str,
        /// The name looked up (a constant of `mptcp_common::maps`).
        name: &'static str,
    },

    /// The kernel verifier refused the program. The log is kept for `RUST_LOG=debug`.
    #[error(
        "the kernel rejected the eBPF program `{program}` ({io_error}): rerun with RUST_LOG=debug \
         to see the tail of the verifier log"
    )]
    VerifierRejected {
        /// Program name.
        program: &'static str,
        /// What `BPF_PROG_LOAD` returned.
        io_error: io::Error,
        /// The verifier's log (can be megabytes; never printed whole).
        verifier_log: String,
    },

    /// Loading a program failed for another reason than the verifier.
    #[error("could not load the eBPF program `{program}`: {source}")]
    ProgramLoad {
        /// Program name.
        program: &'static str,
        /// aya's error.
        #[source]
        source: ProgramError,
    },

    /// Attaching XDP to an interface failed in every mode that was tried.
    #[error("could not attach XDP to {iface} in {mode} mode: {source}")]
    Attach {
        /// Interface name.
        iface: String,
        /// The mode of the last attempt ("native" or "generic (skb)").
        mode: &'static str,
        /// aya's error.
        #[source]
        source: ProgramError,
    },

    /// The interface already runs an XDP program that is not a firewall's of ours.
    #[error("{iface} already runs {occupant}: {remedy}")]
    XdpAlreadyAttached {
        /// Interface name.
        iface: String,
        /// What is there (the multi-program module's `XdpOccupant`), or "another XDP program".
        occupant: String,
        /// What to do about it.
        remedy: String,
    },

    /// libxdp's dispatcher object could not be read or loaded.
    #[error(
        "could not load libxdp's XDP dispatcher {}: {detail}; install Debian's `libxdp1` \
         package (`cargo xtask setup` does)",
        path.display()
    )]
    DispatcherObject {
        /// The dispatcher object file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },

    /// The kernel refuses what libxdp's multi-program protocol needs.
    #[error(
        "XDP programs cannot be chained through libxdp's dispatcher on this kernel: {detail}; \
         run the firewall alone on the interface's XDP hook"
    )]
    MultiprogUnsupported {
        /// Why (the kernel's answer).
        detail: String,
    },

    /// An earlier exclusive-mode run's XDP link holds the interface; this run is multiprog.
    #[error(
        "{iface} runs the firewall alone through an XDP link pinned by an earlier run: it \
         cannot join libxdp's dispatcher without a gap; run without `--xdp-chain multiprog`, \
         or `mptcp-loader detach --iface {iface}` first"
    )]
    ChainModeChange {
        /// Interface name.
        iface: String,
    },

    /// A component program did not load into its dispatcher slot.
    #[error(
        "the kernel refused `{program}` as the freplace component of dispatcher slot {slot}: \
         {source}; run with `RUST_LOG=debug` for the verifier log"
    )]
    ComponentLoad {
        /// The program.
        program: &'static str,
        /// The slot.
        slot: usize,
        /// aya's error.
        #[source]
        source: ProgramError,
    },

    /// Another firewall (another run, or links pinned by one) already holds the interface.
    #[error(
        "{iface} is already protected by the mptcp-loader firewall pinned under {} ({owner}): \
         stop that run, or run this one with `--pin-dir {}` to take it over, or remove it with \
         `mptcp-loader detach --iface {iface} --pin-dir {}`",
        pin_dir.display(), pin_dir.display(), pin_dir.display()
    )]
    InterfaceProtected {
        /// Interface name.
        iface: String,
        /// The pin directory holding its links.
        pin_dir: PathBuf,
        /// "mptcp-loader run pid N" or "no loader process: ...".
        owner: String,
    },

    /// Another firewall holds the interface, but its pins were not found.
    #[error(
        "{iface} is already protected by another mptcp-loader firewall (XDP program {prog_id}), \
         pinned outside /sys/fs/bpf/mptcp-fw: stop its run, or remove it with `mptcp-loader \
         detach --iface {iface} --pin-dir DIR` giving its pin directory"
    )]
    InterfaceProtectedElsewhere {
        /// Interface name.
        iface: String,
        /// The program the interface runs.
        prog_id: u32,
    },

    /// The kernel attached XDP without a bpf_link (Linux < 5.9: torvalds/linux@aa8d3a716b59): it
    /// could not be pinned.
    #[error(
        "the kernel attached XDP to {iface} without a bpf_link, which cannot be pinned: \
         mptcp-loader needs Linux >= 5.9 (XDP links)"
    )]
    NoXdpLinks {
        /// Interface name.
        iface: String,
    },

    /// `--xdp-mode native` on an interface whose driver has no native XDP.
    #[error(
        "the driver of {iface} does not support native XDP: use `--xdp-mode auto` or \
         `--xdp-mode skb` (generic XDP)"
    )]
    NativeXdpUnsupported {
        /// Interface name.
        iface: String,
    },

    /// Removing a netlink tc filter left by an older loader version failed.
    #[error(
        "could not remove the old mptcp_tc_egress filter from {iface}: {source}: remove it with \
         `tc filter del dev {iface} egress`"
    )]
    Clsact {
        /// Interface name.
        iface: String,
        /// aya's error.
        #[source]
        source: TcError,
    },

    /// Attaching the tc egress program failed (XDP on the same interface was undone).
    #[error(
        "could not attach the tc egress program to {iface} as a TCX link: {source}: it needs \
         Linux >= 6.6 (else use `--egress-attach clsact`); `bpftool net show dev {iface}` lists \
         what is attached"
    )]
    TcAttach {
        /// Interface name.
        iface: String,
        /// aya's error.
        #[source]
        source: ProgramError,
    },

    /// Attaching, finding or replacing the clsact egress filter failed.
    #[error(
        "could not attach the tc egress program to {iface} as a clsact filter (priority 1, \
         handle 0x4d46): {source}: `tc filter show dev {iface} egress` lists what is there"
    )]
    ClsactAttach {
        /// Interface name.
        iface: String,
        /// aya's error.
        #[source]
        source: ProgramError,
    },

    /// The kernel refused to create a map, typically because of its size (maps are
    /// preallocated).
    #[error(
        "could not create map `{map}`{}: {io_error}: lower --max-conns / --max-joins, or check \
         the memory lock limit (`ulimit -l`)",
        entries.map(|n| format!(" with {n} entries")).unwrap_or_default()
    )]
    MapCreate {
        /// Map name.
        map: String,
        /// The size asked for, if it was one we chose.
        entries: Option<u32>,
        /// What `BPF_MAP_CREATE` returned.
        io_error: io::Error,
    },

    /// Reading or writing a map failed.
    #[error("map `{map}`: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: MapError,
    },

    /// Pinning a map failed.
    #[error("could not pin map `{map}` at {}: {source}", path.display())]
    Pin {
        /// Map name.
        map: &'static str,
        /// Pin path.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: PinError,
    },

    /// Opening a pinned map failed.
    #[error("could not open the pinned map {}: {source}", path.display())]
    OpenPin {
        /// Pin path.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: MapError,
    },

    /// Another `run` holds the pin directory of this network namespace.
    #[error(
        "another mptcp-loader run is active in this network namespace ({owner}, pins under {}): \
         stop it first, or pass a different --pin-dir",
        pin_dir.display()
    )]
    AnotherRunActive {
        /// The pin directory.
        pin_dir: PathBuf,
        /// Who holds it, e.g. "pid 1234" or "pid unknown".
        owner: String,
    },

    /// Pinning a link failed.
    #[error("could not pin a link at {}: {source}", path.display())]
    PinLink {
        /// Pin path.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: PinError,
    },

    /// Opening a pinned link failed.
    #[error("could not open the pinned link {}: {source}: `mptcp-loader detach` removes it", path.display())]
    OpenLink {
        /// Pin path.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: LinkError,
    },

    /// Reading a link's ids failed.
    #[error("could not read the link attached to {iface}: {source}")]
    LinkInfo {
        /// Interface name.
        iface: String,
        /// aya's error.
        #[source]
        source: LinkError,
    },

    /// Replacing the program of a pinned link failed (it still runs the old one).
    #[error(
        "could not put this run's program into the pinned link {} (it keeps running the \
         previous one): {source}",
        path.display()
    )]
    LinkUpdate {
        /// Pin path.
        path: PathBuf,
        /// aya's error.
        #[source]
        source: ProgramError,
    },

    /// The pins a run would adopt were made by a loader with another map layout.
    #[error(
        "pinned maps under {} have another layout (built by another version: {detail}): run \
         `mptcp-loader detach` first",
        pin_dir.display()
    )]
    IncompatiblePins {
        /// The pin directory.
        pin_dir: PathBuf,
        /// What differs.
        detail: String,
    },

    /// The pinned maps were created with other `--max-conns` / `--max-joins`.
    #[error(
        "the maps pinned under {} have other sizes ({map} holds {pinned} entries, this run asks \
         for {asked}): pass the --max-conns / --max-joins the attached firewall was started with, \
         or run `mptcp-loader detach` first",
        pin_dir.display()
    )]
    PinnedSizesDiffer {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The map whose size differs.
        map: &'static str,
        /// Its pinned `max_entries`.
        pinned: u32,
        /// What this run asks for.
        asked: u32,
    },

    /// Links pinned by an earlier run attach the firewall to an interface this run does not name.
    #[error(
        "the firewall pinned under {} is attached to {iface}, which this run does not name: add \
         `--iface {iface}`, or remove it first with `mptcp-loader detach --iface {iface}`",
        pin_dir.display()
    )]
    PinnedInterfaceNotRequested {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The interface.
        iface: String,
    },

    /// The pinned XDP attachment runs in another mode than `--xdp-mode` asks for.
    #[error(
        "{iface} runs the firewall in {pinned} XDP mode through the links pinned under {}; \
         --xdp-mode {asked} cannot be applied without detaching: use `--xdp-mode auto`, or run \
         `mptcp-loader detach --iface {iface}` first",
        pin_dir.display()
    )]
    XdpModeDiffers {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The interface.
        iface: String,
        /// The mode in use.
        pinned: &'static str,
        /// The mode asked for.
        asked: &'static str,
    },

    /// `detach` while a run owns the pin directory.
    #[error(
        "mptcp-loader run pid {pid} owns {}: stop it with SIGINT or SIGTERM (it detaches on exit \
         unless started with --keep-attached), then run `mptcp-loader detach` if needed",
        pin_dir.display()
    )]
    DetachWhileRunning {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The run's pid.
        pid: u32,
    },

    /// `detach --iface IF` for an interface the firewall is not attached to.
    #[error(
        "the firewall pinned under {} is not attached to {iface} (it is attached to: {attached}): \
         see `mptcp-loader status`",
        pin_dir.display()
    )]
    NotAttachedHere {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The interface asked for.
        iface: String,
        /// The interfaces it is attached to, or "none".
        attached: String,
    },

    /// `detach` found no pins.
    #[error(
        "nothing to detach: no mptcp-loader pins under {} (see `mptcp-loader status`)",
        pin_dir.display()
    )]
    NothingToDetach {
        /// The pin directory looked at.
        pin_dir: PathBuf,
    },

    /// A file-system call failed (pins, run state).
    #[error(transparent)]
    Io(#[from] IoError),

    /// A system call without a path failed.
    #[error(transparent)]
    Os(#[from] OsError),
}

impl KernelError {
    /// A [`KernelError::Map`] for `map`.
    pub(crate) fn map(map: &'static str) -> impl FnOnce(MapError) -> Self {
        move |source| Self::Map { map, source }
    }

    /// A [`KernelError::Io`] for `path`.
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let at = IoError::at(what, path);
        move |source| Self::Io(at(source))
    }
}

/// The last `lines` lines of a verifier log: where the verifier gave up.
#[must_use]
pub fn verifier_log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_say_what_to_do() {
        let errors = [
            KernelError::NotRoot { euid: 1000 },
            KernelError::UnknownInterface {
                iface: "nope0".into(),
            },
            KernelError::BpffsNotMounted {
                path: "/sys/fs/bpf".into(),
            },
            KernelError::ObjectNotBuilt,
            KernelError::AnotherRunActive {
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
                owner: "pid 42".into(),
            },
            KernelError::TcAttach {
                iface: "veth0".into(),
                source: ProgramError::NotLoaded,
            },
            KernelError::ClsactAttach {
                iface: "veth0".into(),
                source: ProgramError::NotLoaded,
            },
            KernelError::Clsact {
                iface: "veth0".into(),
                source: TcError::AlreadyAttached,
            },
            KernelError::MapCreate {
                map: "MPTCP_FLOWS".into(),
                entries: Some(33_554_432),
                io_error: io::Error::from_raw_os_error(libc::ENOMEM),
            },
            KernelError::InterfaceProtected {
                iface: "veth0".into(),
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
                owner: "mptcp-loader run pid 42".into(),
            },
            KernelError::XdpAlreadyAttached {
                iface: "veth0".into(),
                occupant: "XDP program `xdpfilt_alw_all` (id 7, skb mode)".into(),
                remedy: "remove it first".into(),
            },
            KernelError::DispatcherObject {
                path: "/usr/lib/x86_64-linux-gnu/bpf/xdp-dispatcher.o".into(),
                detail: "No such file or directory (os error 2)".into(),
            },
            KernelError::MultiprogUnsupported {
                detail: "the kernel refuses BPF_PROG_TYPE_EXT (freplace) programs".into(),
            },
            KernelError::ChainModeChange {
                iface: "veth0".into(),
            },
            KernelError::ComponentLoad {
                program: "mptcp_xdp_ingress",
                slot: 0,
                source: ProgramError::NotLoaded,
            },
            KernelError::NoXdpLinks {
                iface: "veth0".into(),
            },
            KernelError::InterfaceProtectedElsewhere {
                iface: "veth0".into(),
                prog_id: 7,
            },
            KernelError::IncompatiblePins {
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
                detail: "no layout record".into(),
            },
            KernelError::PinnedSizesDiffer {
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
                map: "MPTCP_CONNS",
                pinned: 1024,
                asked: 65536,
            },
            KernelError::PinnedInterfaceNotRequested {
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
                iface: "veth0".into(),
            },
            KernelError::XdpModeDiffers {
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
                iface: "veth0".into(),
                pinned: "native",
                asked: "skb",
            },
            KernelError::DetachWhileRunning {
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
                pid: 42,
            },
            KernelError::NotAttachedHere {
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
                iface: "veth1".into(),
                attached: "veth0".into(),
            },
            KernelError::NothingToDetach {
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
            },
            KernelError::LinkUpdate {
                path: "/sys/fs/bpf/mptcp-fw/netns-1/link_xdp_3".into(),
                source: ProgramError::NotLoaded,
            },
        ];
        crate::errors::assert_operator_messages(&errors);
    }

    #[test]
    fn tc_and_map_errors_name_the_interface_and_the_fix() {
        let msg = KernelError::TcAttach {
            iface: "veth0".into(),
            source: ProgramError::NotLoaded,
        }
        .to_string();
        assert!(
            msg.starts_with("could not attach the tc egress program to veth0 as a TCX link: "),
            "{msg}"
        );
        assert!(msg.contains("Linux >= 6.6"), "{msg}");
        let msg = KernelError::MapCreate {
            map: "MPTCP_FLOWS".into(),
            entries: Some(33_554_432),
            io_error: io::Error::from_raw_os_error(libc::ENOMEM),
        }
        .to_string();
        assert!(
            msg.starts_with("could not create map `MPTCP_FLOWS` with 33554432 entries: "),
            "{msg}"
        );
        assert!(msg.contains("lower --max-conns / --max-joins"), "{msg}");
    }

    #[test]
    fn restart_errors_name_the_pins_and_the_fix() {
        let msg = KernelError::InterfaceProtected {
            iface: "veth0".into(),
            pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
            owner: "no loader process: programs attached by pinned links".into(),
        }
        .to_string();
        assert_eq!(
            msg,
            "veth0 is already protected by the mptcp-loader firewall pinned under \
             /sys/fs/bpf/mptcp-fw/netns-1 (no loader process: programs attached by pinned links): \
             stop that run, or run this one with `--pin-dir /sys/fs/bpf/mptcp-fw/netns-1` to take \
             it over, or remove it with `mptcp-loader detach --iface veth0 --pin-dir \
             /sys/fs/bpf/mptcp-fw/netns-1`"
        );
        let msg = KernelError::DetachWhileRunning {
            pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
            pid: 42,
        }
        .to_string();
        assert!(
            msg.starts_with("mptcp-loader run pid 42 owns /sys/fs/bpf/mptcp-fw/netns-1: stop it"),
            "{msg}"
        );
        let msg = KernelError::IncompatiblePins {
            pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
            detail: "no layout record".into(),
        }
        .to_string();
        assert_eq!(
            msg,
            "pinned maps under /sys/fs/bpf/mptcp-fw/netns-1 have another layout (built by another \
             version: no layout record): run `mptcp-loader detach` first"
        );
    }

    #[test]
    fn object_not_built_names_the_fix() {
        let msg = KernelError::ObjectNotBuilt.to_string();
        assert!(msg.starts_with("the eBPF object was not built: run `cargo xtask setup`"));
    }

    #[test]
    fn verifier_tail_keeps_the_end() {
        let log = "a\nb\nc\nd";
        assert_eq!(verifier_log_tail(log, 2), "c\nd");
        assert_eq!(verifier_log_tail(log, 10), log);
        assert_eq!(verifier_log_tail("", 3), "");
    }
}
