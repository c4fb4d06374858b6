//! The one error type of the lab library. Tests panic on it (`expect`), the demo prints it.

use std::{io, time::Duration};

/// Anything that went wrong while building the lab or driving a process in it.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command could not be started at all (not installed, not executable).
    #[error("could not start `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// What `exec` said.
        #[source]
        source: io::Error,
    },

    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status, as printed by std.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },

    /// Some other I/O on a file, pipe or process failed.
    #[error("{what}")]
    Io {
        /// What we were doing.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A process did not say what we waited for in time.
    #[error("timed out after {after:?} waiting for {what}; its output so far:\n{log}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long we waited.
        after: Duration,
        /// Everything the process printed.
        log: String,
    },

    /// A process ended before saying what we waited for.
    #[error("{process} ended ({status}) while waiting for {what}; its output:\n{log}")]
    Exited {
        /// Which process.
        process: String,
        /// What we waited for.
        what: String,
        /// Its exit status, if it could be read.
        status: String,
        /// Everything the process printed.
        log: String,
    },

    /// A process answered something we did not expect.
    #[error("{process} answered `{line}` to {request}")]
    Unexpected {
        /// Which process.
        process: String,
        /// What we asked.
        request: String,
        /// Its answer.
        line: String,
    },

    /// Text (counters, pcap, JSON) could not be parsed.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What was being parsed.
        what: String,
        /// Why it failed.
        detail: String,
    },
}

/// Result of the lab library.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    /// An [`LabError::Io`] with a description (for `map_err`).
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
        let what = what.into();
        move |source| LabError::Io { what, source }
    }

    /// A [`LabError::Parse`].
    pub fn parse(what: impl Into<String>, detail: impl Into<String>) -> LabError {
        LabError::Parse {
            what: what.into(),
            detail: detail.into(),
        }
    }
}
