//! What every layer's errors are made of. Each area has its own error type, next to its code
//! (the kernel layer's, the policy file's, the observer's, the shared store's); the commands on
//! top wrap them all in one, which `main` prints after `error: `. Every message is one line that
//! names the problem and, where the user can do something about it, what to do.
//!
//! Here: the failures that happen in every layer alike, a file-system call and an OS call.

use std::{io, path::PathBuf};

use thiserror::Error;

/// A file-system or system call on a path failed.
#[derive(Debug, Error)]
#[error("{what} {}: {source}", path.display())]
pub struct IoError {
    /// What we were doing, e.g. "creating the pin directory".
    pub what: &'static str,
    /// The path involved.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl IoError {
    /// An [`IoError`] for `path`, to give to `map_err`.
    pub fn at(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self { what, path, source }
    }
}

/// A system call without a path failed (signal handlers, sockets, duplicating a descriptor).
#[derive(Debug, Error)]
#[error("{what}: {source}")]
pub struct OsError {
    /// What we were doing.
    pub what: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl OsError {
    /// An [`OsError`] for `what`, to give to `map_err`.
    pub fn doing(what: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self { what, source }
    }
}

/// Asserts what every operator-facing message is: one line, with what to do after `: ` or `; `.
#[cfg(test)]
pub(crate) fn assert_operator_messages<E: std::error::Error>(errors: &[E]) {
    for msg in errors.iter().map(ToString::to_string) {
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains(": ") || msg.contains("; "), "no hint in {msg}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_and_os_errors_name_what_was_done_and_where() {
        let e = IoError::at("creating the pin directory", "/sys/fs/bpf/mptcp-fw")(
            io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(
            e.to_string(),
            "creating the pin directory /sys/fs/bpf/mptcp-fw: Permission denied (os error 13)"
        );
        let e = OsError::doing("installing the signal handlers")(io::Error::from_raw_os_error(
            libc::EINVAL,
        ));
        assert_eq!(
            e.to_string(),
            "installing the signal handlers: Invalid argument (os error 22)"
        );
    }
}
