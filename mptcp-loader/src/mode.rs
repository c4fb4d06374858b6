//! The filter mode, enforce or monitor: the one place it is mapped to and from its names (config
//! file, command line, `stats`/`status` output) and its `Config::mode` value in the fast path.

use std::{fmt, str::FromStr};

use mptcp_common::maps::{MODE_ENFORCE, MODE_MONITOR};

/// What the fast path does with a segment that fails its check.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    clap::ValueEnum,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    /// Drop it.
    Enforce,
    /// Pass it and count it as would-drop.
    #[default]
    Monitor,
}

impl FilterMode {
    /// The value written to `Config::mode` (and per interface to `MPTCP_IFACE_MODES`).
    #[must_use]
    pub const fn config_value(self) -> u32 {
        match self {
            Self::Enforce => MODE_ENFORCE,
            Self::Monitor => MODE_MONITOR,
        }
    }

    /// The mode a `Config::mode` value means to the fast path: only [`MODE_ENFORCE`] drops.
    #[must_use]
    pub const fn from_config_value(value: u32) -> Self {
        if value == MODE_ENFORCE {
            Self::Enforce
        } else {
            Self::Monitor
        }
    }

    /// `enforce` / `monitor`, as in the file, on the command line and in the output.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Monitor => "monitor",
        }
    }
}

impl fmt::Display for FilterMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FilterMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [Self::Enforce, Self::Monitor]
            .into_iter()
            .find(|mode| mode.name() == text)
            .ok_or_else(|| format!("`{text}` is not a mode: expected enforce or monitor"))
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    #[test]
    fn names_values_and_parsing_agree() {
        assert_eq!(FilterMode::Enforce.config_value(), MODE_ENFORCE);
        assert_eq!(FilterMode::Monitor.config_value(), MODE_MONITOR);
        assert_eq!(FilterMode::default(), FilterMode::Monitor);
        for mode in FilterMode::value_variants() {
            assert_eq!(FilterMode::from_config_value(mode.config_value()), *mode);
            assert_eq!(mode.name().parse::<FilterMode>(), Ok(*mode));
            assert_eq!(mode.to_string(), mode.name());
            let clap_name = mode.to_possible_value().unwrap();
            assert_eq!(clap_name.get_name(), mode.name());
        }
        // Anything but MODE_ENFORCE is monitor to the fast path.
        assert_eq!(FilterMode::from_config_value(7), FilterMode::Monitor);
        assert_eq!(
            "Enforce".parse::<FilterMode>(),
            Err("`Enforce` is not a mode: expected enforce or monitor".to_owned())
        );
    }
}
