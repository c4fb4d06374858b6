//! Kernel SNMP/MIB counters of a network namespace (`/proc/net/netstat` + `/proc/net/snmp`,
//! read from inside the namespace), named as `nstat` names them: section prefix + field, e.g.
//! `MPTcpExtAddAddr`, `TcpInSegs`, `TcpExtTCPPureAcks`.

use std::{collections::BTreeMap, fmt};

use crate::error::{LabError, Result};

/// Counter names used by the tests (checked against the running kernel by the baseline test).
pub mod mib {
    /// Valid ADD_ADDR (E=0, right HMAC) received and handed to the path manager.
    ///
    /// Linux 6.18 has **no** counter for an ADD_ADDR whose HMAC is wrong: `add_addr_hmac_valid()`
    /// failing just skips the option (net/mptcp/options.c, `mptcp_incoming_options`). Measured in
    /// this lab: 5 forged ADD_ADDRs move `TcpInSegs` and `TcpExtTCPPureAcks` by 5 and no
    /// `MPTcpExt*` counter at all.
    pub const ADD_ADDR: &str = "MPTcpExtAddAddr";
    /// ADD_ADDR dropped by the path manager (limits reached, PM busy); not HMAC failures.
    pub const ADD_ADDR_DROP: &str = "MPTcpExtAddAddrDrop";
    /// ADD_ADDR echoes sent (one per accepted ADD_ADDR).
    pub const ECHO_ADD_TX: &str = "MPTcpExtEchoAddTx";
    /// ADD_ADDR sent (client side).
    pub const ADD_ADDR_TX: &str = "MPTcpExtAddAddrTx";
    /// ADD_ADDR echoes received (client side).
    pub const ECHO_ADD: &str = "MPTcpExtEchoAdd";
    /// MP_CAPABLE third ACK received (server side): the connection is MPTCP.
    pub const MP_CAPABLE_ACK_RX: &str = "MPTcpExtMPCapableACKRX";
    /// MP_CAPABLE SYN/ACK received (client side).
    pub const MP_CAPABLE_SYNACK_RX: &str = "MPTcpExtMPCapableSYNACKRX";
    /// MP_JOIN SYN received (server side).
    pub const MP_JOIN_SYN_RX: &str = "MPTcpExtMPJoinSynRx";
    /// MP_JOIN third ACK received with a valid HMAC (server side): a subflow joined.
    pub const MP_JOIN_ACK_RX: &str = "MPTcpExtMPJoinAckRx";
    /// MP_JOIN SYN/ACK received (client side).
    pub const MP_JOIN_SYNACK_RX: &str = "MPTcpExtMPJoinSynAckRx";
    /// Subflow connect attempts that failed locally (e.g. no route to an announced address).
    pub const MP_JOIN_SYN_TX_CONNECT_ERR: &str = "MPTcpExtMPJoinSynTxConnectErr";
    /// TCP segments received (after the IP layer): a forged segment the stack saw moves it.
    pub const TCP_IN_SEGS: &str = "TcpInSegs";
    /// Pure ACKs processed on the slow path (every ADD_ADDR is a pure ACK with options).
    pub const TCP_PURE_ACKS: &str = "TcpExtTCPPureAcks";
    /// Segments dropped by PAWS (a forged TS that is too old would land here).
    pub const PAWS_ESTAB: &str = "TcpExtPAWSEstab";
    /// Established connections reset (a RST the stack accepted moves it).
    pub const ESTAB_RESETS: &str = "TcpEstabResets";

    /// Every name above, to check they exist on the running kernel.
    pub const ALL: &[&str] = &[
        ADD_ADDR,
        ADD_ADDR_DROP,
        ECHO_ADD_TX,
        ADD_ADDR_TX,
        ECHO_ADD,
        MP_CAPABLE_ACK_RX,
        MP_CAPABLE_SYNACK_RX,
        MP_JOIN_SYN_RX,
        MP_JOIN_ACK_RX,
        MP_JOIN_SYNACK_RX,
        MP_JOIN_SYN_TX_CONNECT_ERR,
        TCP_IN_SEGS,
        TCP_PURE_ACKS,
        PAWS_ESTAB,
        ESTAB_RESETS,
    ];
}

/// A snapshot of a namespace's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    values: BTreeMap<String, u64>,
}

impl Counters {
    /// Parses the `/proc/net/netstat` / `/proc/net/snmp` format: pairs of lines
    /// `Section: Name1 Name2 ...` / `Section: v1 v2 ...`. Several files may be concatenated.
    /// Negative values (a few snmp gauges) are skipped.
    ///
    /// # Errors
    /// When a header has no matching value line.
    pub fn parse(text: &str) -> Result<Counters> {
        let mut values = BTreeMap::new();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        while let Some(header) = lines.next() {
            let value_line = lines.next().ok_or_else(|| {
                LabError::parse(
                    "/proc/net counters",
                    format!("no value line after `{header}`"),
                )
            })?;
            let mut names = header.split_whitespace();
            let mut nums = value_line.split_whitespace();
            let (Some(section), Some(section2)) = (names.next(), nums.next()) else {
                continue;
            };
            if section != section2 {
                return Err(LabError::parse(
                    "/proc/net counters",
                    format!("section `{section}` followed by `{section2}`"),
                ));
            }
            let section = section.trim_end_matches(':');
            for (name, value) in names.zip(nums) {
                if let Ok(value) = value.parse::<u64>() {
                    values.insert(format!("{section}{name}"), value);
                }
            }
        }
        Ok(Counters { values })
    }

    /// The value, 0 when the kernel does not have that counter (use [`Counters::contains`] to
    /// tell the difference).
    #[must_use]
    pub fn get(&self, name: &str) -> u64 {
        self.values.get(name).copied().unwrap_or(0)
    }

    /// Whether the kernel reported this counter.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// `self[name] - earlier[name]` (negative if it went down, which counters do not).
    #[must_use]
    pub fn delta(&self, earlier: &Counters, name: &str) -> i128 {
        i128::from(self.get(name)) - i128::from(earlier.get(name))
    }

    /// Every counter that changed since `earlier`, with the difference, by name.
    #[must_use]
    pub fn changes_since(&self, earlier: &Counters) -> Changes {
        Changes(
            self.values
                .keys()
                .chain(earlier.values.keys())
                .filter_map(|name| {
                    let d = self.delta(earlier, name);
                    (d != 0).then(|| (name.clone(), d))
                })
                .collect(),
        )
    }

    /// All counters by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.values.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

/// Counters that changed between two snapshots (printable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes(pub BTreeMap<String, i128>);

impl Changes {
    /// Only the `MPTcpExt*` ones.
    #[must_use]
    pub fn mptcp(&self) -> Changes {
        Changes(
            self.0
                .iter()
                .filter(|(k, _)| k.starts_with("MPTcpExt"))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        )
    }
}

impl fmt::Display for Changes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        let mut first = true;
        for (name, delta) in &self.0 {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{name} {delta:+}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
TcpExt: SyncookiesSent TCPPureAcks
TcpExt: 0 8
MPTcpExt: MPCapableSYNRX AddAddr AddAddrDrop
MPTcpExt: 1 2 0
Tcp: RtoAlgorithm MaxConn InSegs
Tcp: 1 -1 39
";

    #[test]
    fn parses_nstat_names() {
        let c = Counters::parse(SAMPLE).unwrap();
        assert_eq!(c.get("MPTcpExtAddAddr"), 2);
        assert_eq!(c.get("TcpExtTCPPureAcks"), 8);
        assert_eq!(c.get("TcpInSegs"), 39);
        assert!(c.contains("MPTcpExtAddAddrDrop"));
        assert!(!c.contains("TcpMaxConn"), "negative values are skipped");
        assert_eq!(c.get("NoSuchCounter"), 0);
    }

    #[test]
    fn deltas() {
        let a = Counters::parse(SAMPLE).unwrap();
        let b = Counters::parse(&SAMPLE.replace("1 2 0", "1 3 0")).unwrap();
        assert_eq!(b.delta(&a, "MPTcpExtAddAddr"), 1);
        assert_eq!(b.changes_since(&a).to_string(), "MPTcpExtAddAddr +1");
        assert_eq!(a.changes_since(&a).to_string(), "(none)");
    }

    #[test]
    fn rejects_unpaired_lines() {
        assert!(Counters::parse("TcpExt: A B\n").is_err());
        assert!(Counters::parse("TcpExt: A\nMPTcpExt: 1\n").is_err());
    }
}
