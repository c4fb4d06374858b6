//! The loader's error type. Every variant's message is one line that names the problem and, where
//! the user can do something about it, what to do. `main` prints it after `error: `.

use std::{io, path::PathBuf};

use aya::{
    maps::MapError,
    pin::PinError,
    programs::{ProgramError, TcError},
    EbpfError,
};
use thiserror::Error;

/// Everything that can go wrong in `run` and `stats`.
#[derive(Debug, Error)]
pub enum LoaderError {
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

    /// `run` was given no interface.
    #[error("no interface given: pass at least one `--iface IF`")]
    NoInterface,

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

    /// The interface already runs an XDP program (ours from another run, or someone else's).
    #[error(
        "{iface} already has an XDP program attached: see `ip link show {iface}`; stop the \
         mptcp-loader run that owns it, or remove it with `ip link set {iface} xdp off`"
    )]
    XdpAlreadyAttached {
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

    /// Adding (or inspecting) the clsact qdisc the tc egress program needs failed.
    #[error(
        "could not set up the clsact qdisc on {iface} for the tc egress program: {source}: \
         check `tc qdisc show dev {iface}`"
    )]
    Clsact {
        /// Interface name.
        iface: String,
        /// aya's error.
        #[source]
        source: TcError,
    },

    /// Another qdisc holds the handle (`ffff:`) the clsact qdisc needs.
    #[error(
        "{iface} has an `{kind}` qdisc where the tc egress program needs a clsact qdisc: replace \
         it with `tc qdisc del dev {iface} {kind}` (its filters go with it) and re-add them under \
         clsact"
    )]
    QdiscInTheWay {
        /// Interface name.
        iface: String,
        /// The kind of the qdisc found (normally `ingress`).
        kind: String,
    },

    /// Attaching the tc egress program failed (XDP on the same interface was undone).
    #[error(
        "could not attach the tc egress program to {iface}: {source}: check \
         `tc qdisc show dev {iface}` and `tc filter show dev {iface} egress`"
    )]
    TcAttach {
        /// Interface name.
        iface: String,
        /// aya's error.
        #[source]
        source: ProgramError,
    },

    /// Detaching the tc egress program failed.
    #[error(
        "could not detach the tc egress program from {iface}: {source}: remove it with \
         `tc filter del dev {iface} egress`"
    )]
    TcDetach {
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

    /// `stats` found no pins.
    #[error(
        "no mptcp-loader run is active in this network namespace (no pins under {}); start \
         `mptcp-loader run --iface IF`",
        pin_dir.display()
    )]
    NoActiveRun {
        /// The pin directory that was looked at.
        pin_dir: PathBuf,
    },

    /// A file-system or system call failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What we were doing, e.g. "creating the pin directory".
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Setting up the async runtime or signal handlers failed.
    #[error("{what}: {source}")]
    Runtime {
        /// What we were doing.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// The policy (`--config` file or policy flags) is invalid; the message says where.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),

    /// `--metrics ADDR:PORT` cannot be listened on.
    #[error(
        "could not serve metrics on {addr} (--metrics): {source}: pick a free address and port \
         (`ss -ltnp` shows who listens)"
    )]
    MetricsListen {
        /// The address given.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl LoaderError {
    /// A [`LoaderError::Map`] for `map`.
    pub(crate) fn map(map: &'static str) -> impl FnOnce(MapError) -> Self {
        move |source| Self::Map { map, source }
    }

    /// A [`LoaderError::Io`] for `path`.
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
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
            LoaderError::NotRoot { euid: 1000 },
            LoaderError::UnknownInterface {
                iface: "nope0".into(),
            },
            LoaderError::BpffsNotMounted {
                path: "/sys/fs/bpf".into(),
            },
            LoaderError::ObjectNotBuilt,
            LoaderError::NoActiveRun {
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
            },
            LoaderError::AnotherRunActive {
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
                owner: "pid 42".into(),
            },
            LoaderError::TcAttach {
                iface: "veth0".into(),
                source: ProgramError::NotLoaded,
            },
            LoaderError::TcDetach {
                iface: "veth0".into(),
                source: ProgramError::NotLoaded,
            },
            LoaderError::Clsact {
                iface: "veth0".into(),
                source: TcError::AlreadyAttached,
            },
            LoaderError::QdiscInTheWay {
                iface: "veth0".into(),
                kind: "ingress".into(),
            },
            LoaderError::MapCreate {
                map: "MPTCP_FLOWS".into(),
                entries: Some(33_554_432),
                io_error: io::Error::from_raw_os_error(libc::ENOMEM),
            },
        ];
        for e in errors {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg.contains(": ") || msg.contains("; "), "no hint in {msg}");
        }
    }

    #[test]
    fn tc_and_map_errors_name_the_interface_and_the_fix() {
        let msg = LoaderError::TcAttach {
            iface: "veth0".into(),
            source: ProgramError::NotLoaded,
        }
        .to_string();
        assert!(
            msg.starts_with("could not attach the tc egress program to veth0: "),
            "{msg}"
        );
        assert!(msg.contains("`tc qdisc show dev veth0`"), "{msg}");
        let msg = LoaderError::QdiscInTheWay {
            iface: "veth0".into(),
            kind: "ingress".into(),
        }
        .to_string();
        assert!(msg.contains("`tc qdisc del dev veth0 ingress`"), "{msg}");
        let msg = LoaderError::MapCreate {
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
    fn object_not_built_names_the_fix() {
        let msg = LoaderError::ObjectNotBuilt.to_string();
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
