//! The two-namespace, two-path MPTCP lab.
//!
//! ```text
//!   client ns                                  server ns
//!   cveth1 198.18.1.1/24  <--- path 1 --->  198.18.1.2/24 sveth1   (initial subflow, port 10000)
//!   cveth2 198.18.2.1/24  <--- path 2 --->  198.18.2.2/24 sveth2   (joined subflow)
//! ```
//!
//! - Addresses come from the benchmarking range 198.18.0.0/15 (plus 2001:db8:1::/64 and
//!   2001:db8:2::/64 for IPv6, without DAD). Neighbours are static, so no ARP/ND is needed.
//! - MPTCP is enabled in both namespaces with `ip mptcp limits set subflows 4
//!   add_addr_accepted 4`.
//! - The client has the endpoint `198.18.2.1 dev cveth2 signal subflow`: it announces its second
//!   address to the server with ADD_ADDR (the genuine ADD_ADDR the validator must pass) and opens
//!   a second subflow from it. Only `signal` would not give a second subflow: the server's PM
//!   would try to connect to 198.18.2.1 on the client's ephemeral port, where nothing listens,
//!   and get a RST.
//! - That second subflow (198.18.2.1 -> 198.18.1.2) leaves via cveth2 thanks to a source rule
//!   (`from 198.18.2.1 lookup 102`); the server's replies go back over sveth2 by its connected
//!   route. So path 2 carries the MP_JOIN subflow in both directions.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use crate::{
    error::{LabError, Result},
    netns::{veth_with_macs, Netns},
    teardown,
};

/// One veth pair between the client and the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabPath {
    /// Interface name in the client namespace.
    pub client_iface: &'static str,
    /// Interface name in the server namespace.
    pub server_iface: &'static str,
    /// Client address (/24).
    pub client_addr: Ipv4Addr,
    /// Server address (/24).
    pub server_addr: Ipv4Addr,
    /// Client IPv6 address (/64).
    pub client_addr6: Ipv6Addr,
    /// Server IPv6 address (/64).
    pub server_addr6: Ipv6Addr,
    /// Client MAC (locally administered).
    pub client_mac: &'static str,
    /// Server MAC (locally administered).
    pub server_mac: &'static str,
}

/// Path 1: the initial subflow (and the one the forger injects into).
pub const PATH1: LabPath = LabPath {
    client_iface: "cveth1",
    server_iface: "sveth1",
    client_addr: Ipv4Addr::new(198, 18, 1, 1),
    server_addr: Ipv4Addr::new(198, 18, 1, 2),
    client_addr6: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1),
    server_addr6: Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2),
    client_mac: "02:00:00:00:01:01",
    server_mac: "02:00:00:00:01:02",
};

/// Path 2: the address the client announces, and the joined subflow.
pub const PATH2: LabPath = LabPath {
    client_iface: "cveth2",
    server_iface: "sveth2",
    client_addr: Ipv4Addr::new(198, 18, 2, 1),
    server_addr: Ipv4Addr::new(198, 18, 2, 2),
    client_addr6: Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1),
    server_addr6: Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2),
    client_mac: "02:00:00:00:02:01",
    server_mac: "02:00:00:00:02:02",
};

/// Both paths.
pub const PATHS: [LabPath; 2] = [PATH1, PATH2];

/// The server's interfaces, i.e. where the validator attaches.
pub const SERVER_IFACES: [&str; 2] = [PATH1.server_iface, PATH2.server_iface];

/// Routing table the client uses for traffic sourced from its path-2 address.
pub const CLIENT_PATH2_TABLE: &str = "102";

/// Set `MPTCP_TESTS_KEEP=1` to keep the lab's work directory (pcaps) after the run.
pub const KEEP_ENV: &str = "MPTCP_TESTS_KEEP";

/// The lab. Dropping it deletes both namespaces (killing whatever runs in them) and its work
/// directory.
pub struct Lab {
    /// The client namespace (connects, announces 198.18.2.1, hosts the forger).
    pub client: Netns,
    /// The server namespace (listens, hosts the validator).
    pub server: Netns,
    work_dir: PathBuf,
}

impl Lab {
    /// Builds the lab (about 0.2 s). Stale namespaces of dead earlier runs are removed first.
    ///
    /// # Errors
    /// When any `ip`/`sysctl` step fails; whatever was already created is torn down.
    pub fn new() -> Result<Lab> {
        teardown::reap_stale_namespaces();
        let client = Netns::create("client")?;
        let server = Netns::create("server")?;
        let work_dir = std::env::temp_dir().join(format!("{}-files", server.name()));
        std::fs::create_dir_all(&work_dir).map_err(LabError::io(format!(
            "creating the lab directory {}",
            work_dir.display()
        )))?;
        let lab = Lab {
            client,
            server,
            work_dir,
        };
        lab.configure()?;
        Ok(lab)
    }

    fn configure(&self) -> Result<()> {
        for ns in [&self.client, &self.server] {
            ns.sysctl("net.mptcp.enabled", "1")?;
            // Set before the veths exist so they inherit it: no DAD delay for the v6 addresses.
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
            // Path 2 is asymmetric at the IP level (source 198.18.2.1 -> 198.18.1.2).
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        for path in PATHS {
            self.add_path(&path)?;
        }
        for ns in [&self.client, &self.server] {
            ns.allow_mptcp_paths()?;
        }
        let p2 = PATH2;
        self.client.ip(&[
            "mptcp",
            "endpoint",
            "add",
            &p2.client_addr.to_string(),
            "dev",
            p2.client_iface,
            "signal",
            "subflow",
        ])?;
        self.client
            .route_from(&p2.client_addr.to_string(), CLIENT_PATH2_TABLE)?;
        self.client.ip(&[
            "route",
            "add",
            &format!("{}/24", Ipv4Addr::from(p2.client_addr.to_bits() & !0xff)),
            "dev",
            p2.client_iface,
            "table",
            CLIENT_PATH2_TABLE,
        ])?;
        self.client.ip(&[
            "route",
            "add",
            "default",
            "via",
            &p2.server_addr.to_string(),
            "dev",
            p2.client_iface,
            "table",
            CLIENT_PATH2_TABLE,
        ])?;
        Ok(())
    }

    fn add_path(&self, p: &LabPath) -> Result<()> {
        // Create both ends directly in their namespaces: nothing appears in the caller's.
        veth_with_macs(
            (&self.client, p.client_iface, p.client_mac),
            (&self.server, p.server_iface, p.server_mac),
        )?;
        let ends = [
            (
                &self.client,
                p.client_iface,
                p.client_addr,
                p.client_addr6,
                p.server_addr,
                p.server_addr6,
                p.server_mac,
            ),
            (
                &self.server,
                p.server_iface,
                p.server_addr,
                p.server_addr6,
                p.client_addr,
                p.client_addr6,
                p.client_mac,
            ),
        ];
        for (ns, iface, addr, addr6, peer, peer6, peer_mac) in ends {
            ns.sysctl(&format!("net.ipv6.conf.{iface}.accept_dad"), "0")?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", iface])?;
            ns.ip(&["addr", "add", &format!("{addr6}/64"), "dev", iface, "nodad"])?;
            ns.ip(&["link", "set", iface, "up"])?;
            for neighbour in [peer.to_string(), peer6.to_string()] {
                ns.static_neighbour(&neighbour, peer_mac, iface)?;
            }
        }
        Ok(())
    }

    /// Gives the client one more address on path 2 (`addr`, in 198.18.2.0/24) that works like
    /// 198.18.2.1: subflows from it leave via `cveth2`, and the server reaches it over `sveth2`
    /// through a static neighbour. With an MPTCP endpoint on it, the client's path manager
    /// announces it and joins from it.
    ///
    /// # Errors
    /// When an `ip` step fails.
    pub fn add_client_path2_addr(&self, addr: Ipv4Addr) -> Result<()> {
        let p = PATH2;
        let addr = addr.to_string();
        self.client
            .ip(&["addr", "add", &format!("{addr}/24"), "dev", p.client_iface])?;
        self.client.route_from(&addr, CLIENT_PATH2_TABLE)?;
        self.server
            .static_neighbour(&addr, p.client_mac, p.server_iface)
    }

    /// Where pcaps and other files of this lab go (removed on drop unless `MPTCP_TESTS_KEEP=1`).
    #[must_use]
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }
}

/// Removes a lab's work directory, unless [`KEEP_ENV`] asks to keep it (then says where it is).
/// For `Drop`: a failure is printed, not returned.
pub fn remove_work_dir(dir: &Path) {
    if std::env::var_os(KEEP_ENV).is_some_and(|v| v != "0") {
        eprintln!("lab: keeping {}", dir.display());
    } else if let Err(err) = std::fs::remove_dir_all(dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            eprintln!("lab teardown: removing {}: {err}", dir.display());
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        remove_work_dir(&self.work_dir);
        // The namespaces are dropped (and deleted) right after this, as fields.
    }
}
