//! The policy of a run ([`PolicyKeeper`]): where it comes from, what is in force, and reloading
//! it on SIGHUP.

use std::path::PathBuf;

use aya::Ebpf;

use crate::{
    cli::error::LoaderError,
    kernel::preflight::interface_index,
    observe::loader_counters::{LoaderCounter, LoaderCounters},
    policy::config::PolicySource,
    policy::{apply_policy, ApplyOutcome, Policy, PolicyMaps},
};

/// The policy of a run: where it comes from, what is in force, and the maps it lives in.
/// `run` creates it before attaching and calls [`PolicyKeeper::reload`] on SIGHUP.
#[derive(Debug)]
pub struct PolicyKeeper {
    source: PolicySource,
    maps: PolicyMaps,
    current: Policy,
}

impl PolicyKeeper {
    /// Opens the policy maps of `ebpf` and applies `policy` (already loaded from `source`).
    ///
    /// # Errors
    /// When the maps cannot be opened or written, or an interface is gone.
    pub fn start(ebpf: &Ebpf, source: PolicySource, policy: Policy) -> Result<Self, LoaderError> {
        let mut maps = PolicyMaps::open(ebpf)?;
        apply_policy(&mut maps, &policy, interface_index)?;
        Ok(Self {
            source,
            maps,
            current: policy,
        })
    }

    /// The policy in force.
    #[must_use]
    pub fn current(&self) -> &Policy {
        &self.current
    }

    /// The policy maps.
    #[must_use]
    pub fn maps(&self) -> &PolicyMaps {
        &self.maps
    }

    /// The policy file, if there is one.
    #[must_use]
    pub fn file(&self) -> Option<&PathBuf> {
        self.source.file.as_ref()
    }

    /// SIGHUP: re-reads the file (flags still override it), and applies the result if it is
    /// valid. Logs what changed or why the file was rejected (the policy in force then stays),
    /// and counts the reload or the error in `counters`.
    pub fn reload(&mut self, counters: &mut LoaderCounters) {
        let Some(file) = self.source.file.clone() else {
            log::warn!("SIGHUP: no --config file to reload; the policy stays as it is");
            return;
        };
        match self.try_reload() {
            Ok((changes, outcome)) => {
                counters.add(LoaderCounter::PolicyReloads, 1);
                if changes.is_empty() {
                    log::info!(
                        "reloaded the policy from {}: nothing changed",
                        file.display()
                    );
                } else {
                    log::info!(
                        "reloaded the policy from {}: {} ({} map entries written, {} removed)",
                        file.display(),
                        changes.join("; "),
                        outcome.entries_written,
                        outcome.entries_removed
                    );
                }
            }
            Err(e) => {
                counters.add(LoaderCounter::PolicyReloadErrors, 1);
                log::error!("policy reload rejected, the previous policy stays in force: {e}");
            }
        }
    }

    fn try_reload(&mut self) -> Result<(Vec<String>, ApplyOutcome), LoaderError> {
        let policy = self.source.load()?;
        let outcome = apply_policy(&mut self.maps, &policy, interface_index)?;
        let changes = policy.changes_from(&self.current);
        self.current = policy;
        Ok((changes, outcome))
    }
}
