//! The observer's errors (`stats`, `status`, `conns`, `events`, `--metrics`): no run to read,
//! nothing recorded, an address that cannot be listened on, and the kernel's and file system's
//! errors underneath.

use std::{io, path::PathBuf};

use thiserror::Error;

use crate::{errors::IoError, kernel::error::KernelError};

/// Everything that can go wrong reading what a run shows.
#[derive(Debug, Error)]
pub enum ObserveError {
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

    /// `events` found no events file.
    #[error(
        "no drop events recorded under {} (no events.jsonl): `mptcp-loader run` records them \
         there; pass --state-dir if it ran with another one",
        state_dir.display()
    )]
    NoEvents {
        /// The state directory looked at.
        state_dir: PathBuf,
    },

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

    /// Opening or reading the pinned maps failed.
    #[error(transparent)]
    Kernel(#[from] KernelError),

    /// Reading or writing an events file failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_say_what_to_do() {
        let errors = [
            ObserveError::NoActiveRun {
                pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
            },
            ObserveError::NoEvents {
                state_dir: "/run/mptcp-fw/netns-1".into(),
            },
            ObserveError::MetricsListen {
                addr: "127.0.0.1:9464".parse().unwrap(),
                source: io::Error::from_raw_os_error(libc::EADDRINUSE),
            },
        ];
        crate::errors::assert_operator_messages(&errors);
    }

    #[test]
    fn no_active_run_says_how_to_start_one() {
        let msg = ObserveError::NoActiveRun {
            pin_dir: "/sys/fs/bpf/mptcp-fw/netns-1".into(),
        }
        .to_string();
        assert_eq!(
            msg,
            "no mptcp-loader run is active in this network namespace (no pins under \
             /sys/fs/bpf/mptcp-fw/netns-1); start `mptcp-loader run --iface IF`"
        );
    }
}
