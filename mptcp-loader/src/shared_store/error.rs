//! The shared store's errors: an option that cannot be used, and the kernel's underneath (the
//! pinned store state, the maps its peers' records go into).

use thiserror::Error;

use crate::kernel::error::KernelError;

/// Everything that can go wrong starting or applying the shared store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A `--store*` option cannot be used; the message says which and what to do.
    #[error("shared store (--store): {problem}")]
    Option {
        /// What is wrong, never with a password or key in it.
        problem: String,
    },

    /// Its pinned state or a map could not be created, read or written.
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_errors_name_the_store_option() {
        let msg = StoreError::Option {
            problem: "--store-ca-file needs a rediss:// URL (TLS)".to_owned(),
        }
        .to_string();
        assert_eq!(
            msg,
            "shared store (--store): --store-ca-file needs a rediss:// URL (TLS)"
        );
    }
}
