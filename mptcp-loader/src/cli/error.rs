//! The commands' error: each area's error (kernel, policy file, observer, shared store, file
//! system) as it is, plus what only the command line can get wrong. `main` prints it after
//! `error: `, followed by its causes; every area's message stays as that area wrote it.

use thiserror::Error;

use crate::{
    errors::{IoError, OsError},
    kernel::error::KernelError,
    observe::error::ObserveError,
    policy::config::ConfigError,
    shared_store::error::StoreError,
};

/// Everything that can go wrong in a command.
#[derive(Debug, Error)]
pub enum LoaderError {
    /// `run` was given no interface.
    #[error("no interface given: pass at least one `--iface IF`")]
    NoInterface,

    /// Loading, attaching, the maps, links or pins.
    #[error(transparent)]
    Kernel(#[from] KernelError),

    /// The policy (`--config` file or policy flags) is invalid; the message says where.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// Reading what a run shows (stats, status, conns, events, metrics).
    #[error(transparent)]
    Observe(#[from] ObserveError),

    /// The shared store (`--store`).
    #[error(transparent)]
    Store(#[from] StoreError),

    /// A file-system call of the command itself.
    #[error(transparent)]
    Io(#[from] IoError),

    /// Setting up the async runtime, signal handlers or sockets failed.
    #[error(transparent)]
    Os(#[from] OsError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_area_keeps_its_own_message() {
        let kernel = KernelError::NotRoot { euid: 1000 };
        let text = kernel.to_string();
        assert_eq!(LoaderError::from(kernel).to_string(), text);
        let store = StoreError::Option {
            problem: "the password file /nope (--store-password-file) is empty".to_owned(),
        };
        let text = store.to_string();
        assert_eq!(LoaderError::from(store).to_string(), text);
        let msg = LoaderError::NoInterface.to_string();
        assert_eq!(msg, "no interface given: pass at least one `--iface IF`");
    }

    #[test]
    fn causes_come_through_the_wrapper() {
        use std::error::Error as _;
        let kernel = KernelError::TcAttach {
            iface: "veth0".into(),
            source: aya::programs::ProgramError::NotLoaded,
        };
        let cause = kernel.source().map(ToString::to_string);
        assert!(cause.is_some());
        assert_eq!(
            LoaderError::from(kernel).source().map(ToString::to_string),
            cause
        );
    }
}
