//! The two-gateway lab: client and server joined through two forwarding gateways, each with the
//! firewall, and a Redis store both gateways reach (issue 15, "more than one box").
//!
//! ```text
//!                 c1 198.18.1.1 --- 198.18.1.254 g1c [gw1] g1s 198.18.3.254 --- 198.18.3.2 s1
//!   client ns                                     g1m 198.18.5.1                               server ns
//!                 c2 198.18.2.1 --- 198.18.2.254 g2c [gw2] g2s 198.18.4.254 --- 198.18.4.2 s2
//!                                                 g2m 198.18.6.1
//!                           store ns: m1 198.18.5.2 (to gw1), m2 198.18.6.2 (to gw2), redis-server
//! ```
//!
//! - The connection goes 198.18.1.1 -> 198.18.3.2 through gw1 (path 1): gw1's fast path sees the
//!   MP_CAPABLE handshake and learns the keys.
//! - The client's `subflow` endpoint on 198.18.2.1 joins 198.18.3.2 from c2; a source rule
//!   sends it through gw2, which routes 198.18.3.0/24 over s2, and the server answers
//!   198.18.2.0/24 through gw2: path 2 carries the join both ways, and gw2 never saw the keys.
//! - The client's `signal port 10100` endpoint announces 198.18.2.1:10100 (a genuine ADD_ADDR)
//!   and the server's path manager joins it from 198.18.4.2, also through gw2: a
//!   server-initiated join.
//! - The store namespace is linked to both gateways (the loaders run in the gateway
//!   namespaces); redis-server listens on both addresses with a password and no persistence.
//!
//! Every address is from 198.18.0.0/15. Dropping the lab stops redis-server and deletes the five
//! namespaces (killing whatever runs in them) and the work directory.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    counters::{mib, Counters},
    error::{LabError, Result},
    join_scenario::{StreamClient, StreamServer},
    lab::{remove_work_dir, LabPath, CLIENT_PATH2_TABLE},
    netns::{veth_with_macs, Netns},
    proc::{run_checked, Proc},
    scenario::wait_for_counters,
    teardown,
};

/// One veth link between two namespaces, with a /24 on each end.
struct Link {
    a_iface: &'static str,
    a_addr: Ipv4Addr,
    a_mac: &'static str,
    b_iface: &'static str,
    b_addr: Ipv4Addr,
    b_mac: &'static str,
}

const CLIENT_GW1: Link = Link {
    a_iface: "c1",
    a_addr: Ipv4Addr::new(198, 18, 1, 1),
    a_mac: "02:00:00:00:01:01",
    b_iface: "g1c",
    b_addr: Ipv4Addr::new(198, 18, 1, 254),
    b_mac: "02:00:00:00:01:fe",
};
const CLIENT_GW2: Link = Link {
    a_iface: "c2",
    a_addr: Ipv4Addr::new(198, 18, 2, 1),
    a_mac: "02:00:00:00:02:01",
    b_iface: "g2c",
    b_addr: Ipv4Addr::new(198, 18, 2, 254),
    b_mac: "02:00:00:00:02:fe",
};
const SERVER_GW1: Link = Link {
    a_iface: "s1",
    a_addr: Ipv4Addr::new(198, 18, 3, 2),
    a_mac: "02:00:00:00:03:02",
    b_iface: "g1s",
    b_addr: Ipv4Addr::new(198, 18, 3, 254),
    b_mac: "02:00:00:00:03:fe",
};
const SERVER_GW2: Link = Link {
    a_iface: "s2",
    a_addr: Ipv4Addr::new(198, 18, 4, 2),
    a_mac: "02:00:00:00:04:02",
    b_iface: "g2s",
    b_addr: Ipv4Addr::new(198, 18, 4, 254),
    b_mac: "02:00:00:00:04:fe",
};
const STORE_GW1: Link = Link {
    a_iface: "m1",
    a_addr: Ipv4Addr::new(198, 18, 5, 2),
    a_mac: "02:00:00:00:05:02",
    b_iface: "g1m",
    b_addr: Ipv4Addr::new(198, 18, 5, 1),
    b_mac: "02:00:00:00:05:01",
};
const STORE_GW2: Link = Link {
    a_iface: "m2",
    a_addr: Ipv4Addr::new(198, 18, 6, 2),
    a_mac: "02:00:00:00:06:02",
    b_iface: "g2m",
    b_addr: Ipv4Addr::new(198, 18, 6, 1),
    b_mac: "02:00:00:00:06:01",
};

/// The server's listening address (on s1, reached through either gateway).
pub const SERVER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 3, 2), 10_000);
/// The client's address on path 1 (the initial subflow).
pub const CLIENT_PATH1: Ipv4Addr = CLIENT_GW1.a_addr;
/// The client's address on path 2 (its join, its announcement).
pub const CLIENT_PATH2: Ipv4Addr = CLIENT_GW2.a_addr;
/// The server's own address on path 2 (source of its join).
pub const SERVER_PATH2: Ipv4Addr = SERVER_GW2.a_addr;
/// Port of the client's announced endpoint (where the server joins).
pub const CLIENT_JOIN_PORT: u16 = 10_100;
/// The interfaces of gateway 1 the firewall attaches to (both directions of path 1).
pub const GW1_IFACES: [&str; 2] = [CLIENT_GW1.b_iface, SERVER_GW1.b_iface];
/// The interfaces of gateway 2 the firewall attaches to (both directions of path 2).
pub const GW2_IFACES: [&str; 2] = [CLIENT_GW2.b_iface, SERVER_GW2.b_iface];
/// The store's port.
pub const STORE_PORT: u16 = 6379;
/// Where the join forger sends from on each path (addresses the client does not own; the
/// gateway has a static neighbour for it pointing at the client, so answers reach its sniffer).
pub const FORGER_PATH1: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 66);
/// See [`FORGER_PATH1`]; this one is `join_forger::FORGER_ADDR`.
pub const FORGER_PATH2: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 66);

const SIGNAL_ENDPOINT_ID: &str = "1";
const SUBFLOW_ENDPOINT_ID: &str = "2";

/// The lab (see the module docs).
pub struct GatewayLab {
    /// The client.
    pub client: Netns,
    /// Gateway 1 (path 1).
    pub gw1: Netns,
    /// Gateway 2 (path 2).
    pub gw2: Netns,
    /// The server.
    pub server: Netns,
    /// The store's namespace.
    pub store_ns: Netns,
    work_dir: PathBuf,
}

impl GatewayLab {
    /// Builds the lab (stale namespaces of dead earlier runs are removed first).
    ///
    /// # Errors
    /// When an `ip`/`sysctl` step fails; what was created is torn down.
    pub fn new() -> Result<GatewayLab> {
        teardown::reap_stale_namespaces();
        let store_ns = Netns::create("store")?;
        let work_dir = std::env::temp_dir().join(format!("{}-files", store_ns.name()));
        std::fs::create_dir_all(&work_dir).map_err(LabError::io(format!(
            "creating the lab directory {}",
            work_dir.display()
        )))?;
        let lab = GatewayLab {
            client: Netns::create("client")?,
            gw1: Netns::create("gw1")?,
            gw2: Netns::create("gw2")?,
            server: Netns::create("server")?,
            store_ns,
            work_dir,
        };
        lab.configure()?;
        Ok(lab)
    }

    fn configure(&self) -> Result<()> {
        for ns in self.all() {
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        for ns in [&self.client, &self.server] {
            ns.sysctl("net.mptcp.enabled", "1")?;
        }
        for ns in [&self.gw1, &self.gw2] {
            ns.sysctl("net.ipv4.ip_forward", "1")?;
        }
        Self::link(&self.client, &self.gw1, &CLIENT_GW1)?;
        Self::link(&self.client, &self.gw2, &CLIENT_GW2)?;
        Self::link(&self.server, &self.gw1, &SERVER_GW1)?;
        Self::link(&self.server, &self.gw2, &SERVER_GW2)?;
        Self::link(&self.store_ns, &self.gw1, &STORE_GW1)?;
        Self::link(&self.store_ns, &self.gw2, &STORE_GW2)?;
        // Client: path 1 by default, path 2 for what leaves from 198.18.2.1.
        let gw1 = CLIENT_GW1.b_addr.to_string();
        let gw2 = CLIENT_GW2.b_addr.to_string();
        let path2 = CLIENT_PATH2.to_string();
        self.client.ip(&["route", "add", "default", "via", &gw1])?;
        self.client.route_from(&path2, CLIENT_PATH2_TABLE)?;
        self.client.ip(&[
            "route",
            "add",
            "default",
            "via",
            &gw2,
            "dev",
            CLIENT_GW2.a_iface,
            "table",
            CLIENT_PATH2_TABLE,
        ])?;
        // Server: each client network through its gateway. Gateway 2 reaches the server's
        // path-1 address over path 2.
        for (ns, net, via) in [
            (&self.server, "198.18.1.0/24", SERVER_GW1.b_addr),
            (&self.server, "198.18.2.0/24", SERVER_GW2.b_addr),
            (&self.gw2, "198.18.3.0/24", SERVER_GW2.a_addr),
        ] {
            ns.ip(&["route", "add", net, "via", &via.to_string()])?;
        }
        // The forgers' addresses: answers to them go to the client's interface.
        for (gw, link, forger) in [
            (&self.gw1, &CLIENT_GW1, FORGER_PATH1),
            (&self.gw2, &CLIENT_GW2, FORGER_PATH2),
        ] {
            gw.static_neighbour(&forger.to_string(), link.a_mac, link.b_iface)?;
        }
        self.client.sysctl("net.ipv4.ip_forward", "0")?;
        for ns in [&self.client, &self.server] {
            ns.allow_mptcp_paths()?;
        }
        self.client.ip(&[
            "mptcp",
            "endpoint",
            "add",
            &path2,
            "id",
            SUBFLOW_ENDPOINT_ID,
            "dev",
            CLIENT_GW2.a_iface,
            "subflow",
        ])?;
        Ok(())
    }

    fn all(&self) -> [&Netns; 5] {
        [
            &self.client,
            &self.gw1,
            &self.gw2,
            &self.server,
            &self.store_ns,
        ]
    }

    fn link(a: &Netns, b: &Netns, l: &Link) -> Result<()> {
        veth_with_macs((a, l.a_iface, l.a_mac), (b, l.b_iface, l.b_mac))?;
        for (ns, iface, addr) in [(a, l.a_iface, l.a_addr), (b, l.b_iface, l.b_addr)] {
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", iface])?;
            ns.ip(&["link", "set", iface, "up"])?;
        }
        // Static neighbours: no ARP needed on any path.
        a.static_neighbour(&l.b_addr.to_string(), l.b_mac, l.a_iface)?;
        b.static_neighbour(&l.a_addr.to_string(), l.a_mac, l.b_iface)?;
        Ok(())
    }

    /// Adds the client's `signal` endpoint with a port: it announces 198.18.2.1:10100 (a genuine
    /// ADD_ADDR) and listens there, and the server's path manager joins it through gw2. Called
    /// once the server has accepted the connection.
    ///
    /// # Errors
    /// When `ip mptcp endpoint add` fails.
    pub fn announce_join_port(&self) -> Result<()> {
        self.client
            .ip(&[
                "mptcp",
                "endpoint",
                "add",
                &CLIENT_PATH2.to_string(),
                "id",
                SIGNAL_ENDPOINT_ID,
                "dev",
                CLIENT_GW2.a_iface,
                "signal",
                "port",
                &CLIENT_JOIN_PORT.to_string(),
            ])
            .map(drop)
    }

    /// Takes the client's `subflow` endpoint away: a connection opened from now on (without
    /// announcing) has only its initial subflow, through gw1, so gw2 sees none of its segments
    /// (nor its end).
    ///
    /// # Errors
    /// When `ip mptcp endpoint delete` fails.
    pub fn no_client_joins(&self) -> Result<()> {
        self.client
            .ip(&["mptcp", "endpoint", "delete", "id", SUBFLOW_ENDPOINT_ID])
            .map(drop)
    }

    /// Path 2 as the join forger sees it: it sends out of c2 to gateway 2's MAC.
    #[must_use]
    pub fn forger_path2() -> LabPath {
        forger_path(&CLIENT_GW2)
    }

    /// Path 1 as the join forger sees it: out of c1 to gateway 1's MAC.
    #[must_use]
    pub fn forger_path1() -> LabPath {
        forger_path(&CLIENT_GW1)
    }

    /// The client's interface on path 1 and on path 2 (where the ADD_ADDR forger sniffs).
    #[must_use]
    pub fn client_ifaces() -> [&'static str; 2] {
        [CLIENT_GW1.a_iface, CLIENT_GW2.a_iface]
    }

    /// Where files of this lab go (removed on drop unless `MPTCP_TESTS_KEEP=1`).
    #[must_use]
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The store URL each gateway uses (its own link to the store namespace).
    #[must_use]
    pub fn store_urls() -> [String; 2] {
        [STORE_GW1.a_addr, STORE_GW2.a_addr].map(|a| format!("redis://{a}:{STORE_PORT}"))
    }
}

fn forger_path(l: &Link) -> LabPath {
    LabPath {
        client_iface: l.a_iface,
        server_iface: l.b_iface,
        client_addr: l.a_addr,
        server_addr: l.b_addr,
        client_addr6: std::net::Ipv6Addr::UNSPECIFIED,
        server_addr6: std::net::Ipv6Addr::UNSPECIFIED,
        client_mac: l.a_mac,
        server_mac: l.b_mac,
    }
}

impl Drop for GatewayLab {
    fn drop(&mut self) {
        remove_work_dir(&self.work_dir);
    }
}

/// `redis-server` in the store namespace: password, no persistence, listening on both links.
pub struct StoreServer {
    proc: Proc,
    password_file: PathBuf,
    /// With TLS: the CA that signed its certificate.
    ca_file: Option<PathBuf>,
}

/// What the store needs and is missing: `redis-server` and `redis-cli` (package
/// redis-server), `openssl` for the TLS store (`cargo xtask setup` installs both).
#[must_use]
pub fn redis_missing() -> Vec<String> {
    [
        ("redis-server", "--version"),
        ("redis-cli", "--version"),
        ("openssl", "version"),
    ]
    .iter()
    .filter(|(program, arg)| !crate::tools::succeeds(program, &[arg]))
    .map(|(program, _)| format!("{program} is not installed (cargo xtask setup installs it)"))
    .collect()
}

impl StoreServer {
    /// Starts redis-server in the lab's store namespace with a fresh random password (written
    /// to a 0600 file in the work directory) and waits until it accepts connections.
    ///
    /// # Errors
    /// When it does not start.
    pub fn start(lab: &GatewayLab) -> Result<StoreServer> {
        StoreServer::start_with(lab, false)
    }

    /// [`StoreServer::start`] with TLS only (no plain port): a throw-away CA (made with
    /// `openssl` in the work directory) signs a certificate for both store addresses; clients
    /// need no certificate of their own.
    ///
    /// # Errors
    /// When openssl or redis-server fails.
    pub fn start_tls(lab: &GatewayLab) -> Result<StoreServer> {
        StoreServer::start_with(lab, true)
    }

    fn start_with(lab: &GatewayLab, tls: bool) -> Result<StoreServer> {
        let password_file = lab.work_dir.join("store-password");
        if !password_file.exists() {
            let mut bytes = [0u8; 16];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
                .map_err(LabError::io("reading /dev/urandom"))?;
            let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            std::fs::write(&password_file, format!("{password}\n"))
                .and_then(|()| {
                    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))
                })
                .map_err(LabError::io(format!("writing {}", password_file.display())))?;
        }
        let password = std::fs::read_to_string(&password_file)
            .map_err(LabError::io(format!("reading {}", password_file.display())))?;
        let ca_file = if tls {
            Some(make_certificates(&lab.work_dir)?)
        } else {
            None
        };
        let port_args: Vec<String> = if tls {
            let file = |name: &str| lab.work_dir.join(name).display().to_string();
            vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                STORE_PORT.to_string(),
                "--tls-cert-file".into(),
                file("store.pem"),
                "--tls-key-file".into(),
                file("store.key"),
                "--tls-ca-cert-file".into(),
                file("ca.pem"),
                "--tls-auth-clients".into(),
                "no".into(),
            ]
        } else {
            vec!["--port".into(), STORE_PORT.to_string()]
        };
        let mut args = vec![
            "--bind".to_owned(),
            STORE_GW1.a_addr.to_string(),
            STORE_GW2.a_addr.to_string(),
        ];
        args.extend(port_args);
        // The password goes in through stdin (a config file read from "-"), not argv.
        let mut proc = lab.store_ns.spawn(
            "redis-server",
            "redis-server",
            &[
                args,
                vec![
                    "--save".to_owned(),
                    String::new(),
                    "--appendonly".to_owned(),
                    "no".to_owned(),
                    "--dir".to_owned(),
                    lab.work_dir.display().to_string(),
                    // Then the rest of the configuration from stdin.
                    "-".to_owned(),
                ],
            ]
            .concat(),
        )?;
        proc.send_line(&format!("requirepass {}", password.trim()))?;
        proc.close_stdin();
        proc.wait_for_line("redis-server ready", Duration::from_secs(10), |l| {
            l.contains("Ready to accept connections")
        })?;
        Ok(StoreServer {
            proc,
            password_file,
            ca_file,
        })
    }

    /// The CA file (for `--store-ca-file`) of a TLS store.
    #[must_use]
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The 0600 file holding the password (for `--store-password-file`).
    #[must_use]
    pub fn password_file(&self) -> &Path {
        &self.password_file
    }

    /// Kills it (SIGKILL: a crash, the store loses everything it held).
    ///
    /// # Errors
    /// When signalling fails.
    pub fn kill(mut self) -> Result<()> {
        self.proc
            .stop(libc::SIGKILL, Duration::from_secs(5))
            .map(drop)
    }

    /// Everything it printed.
    #[must_use]
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// The keys (hex, both of each connection) of every connection hash in the store, read with
    /// `redis-cli` (the password through the environment, not argv).
    ///
    /// # Errors
    /// When redis-cli fails.
    pub fn keys_in_store(&self, lab: &GatewayLab) -> Result<Vec<String>> {
        let password = std::fs::read_to_string(&self.password_file).map_err(LabError::io(
            format!("reading {}", self.password_file.display()),
        ))?;
        let cli = |args: &[&str]| {
            let mut cmd = lab.store_ns.command("redis-cli");
            cmd.env("REDISCLI_AUTH", password.trim())
                .args([
                    "-h",
                    &STORE_GW1.a_addr.to_string(),
                    "-p",
                    &STORE_PORT.to_string(),
                ])
                .args(args);
            run_checked(&mut cmd)
        };
        let mut keys = Vec::new();
        for hash in cli(&["--scan", "--pattern", "mptcp:conn:*"])?.lines() {
            for field in ["a", "b"] {
                let key = cli(&["HGET", hash.trim(), field])?;
                if !key.trim().is_empty() {
                    keys.push(key.trim().to_owned());
                }
            }
        }
        Ok(keys)
    }
}

/// A throw-away CA and a certificate for both store addresses, in `dir` (`ca.pem`,
/// `store.pem`, `store.key`); returns the CA file.
fn make_certificates(dir: &Path) -> Result<PathBuf> {
    let file = |name: &str| dir.join(name).display().to_string();
    let ext = dir.join("store-ext.cnf");
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=IP:{},IP:{}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
            STORE_GW1.a_addr, STORE_GW2.a_addr
        ),
    )
    .map_err(LabError::io(format!("writing {}", ext.display())))?;
    let openssl = |args: &[String]| run_checked(std::process::Command::new("openssl").args(args));
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    openssl(
        &[
            s(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ]),
            vec![
                "-keyout".into(),
                file("ca.key"),
                "-out".into(),
                file("ca.pem"),
            ],
            s(&["-days", "1", "-subj", "/CN=mptcp-lab store CA"]),
        ]
        .concat(),
    )?;
    openssl(
        &[
            s(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ]),
            vec![
                "-keyout".into(),
                file("store.key"),
                "-out".into(),
                file("store.csr"),
            ],
            s(&["-subj", "/CN=mptcp-lab store"]),
        ]
        .concat(),
    )?;
    openssl(
        &[
            s(&["x509", "-req", "-days", "1", "-in"]),
            vec![
                file("store.csr"),
                "-CA".into(),
                file("ca.pem"),
                "-CAkey".into(),
                file("ca.key"),
                "-CAcreateserial".into(),
                "-out".into(),
                file("store.pem"),
                "-extfile".into(),
                ext.display().to_string(),
            ],
        ]
        .concat(),
    )?;
    Ok(dir.join("ca.pem"))
}

/// `run` options that point a gateway's loader at the store (with the lab's password file and
/// an id), and a 600 s idle timeout (so its sweep, and the TTL refresh after it, run in a
/// minute's test).
#[must_use]
pub fn store_options(url: &str, store: &StoreServer, id: &str) -> Vec<String> {
    let url = match store.ca_file() {
        Some(_) => url.replacen("redis://", "rediss://", 1),
        None => url.to_owned(),
    };
    let ca = store
        .ca_file()
        .map(|ca| vec!["--store-ca-file".to_owned(), ca.display().to_string()])
        .unwrap_or_default();
    [
        ca,
        vec![
            "--store".into(),
            url,
            "--store-password-file".into(),
            store.password_file().display().to_string(),
            "--store-id".into(),
            id.into(),
            "--idle-timeout".into(),
            "600".into(),
        ],
    ]
    .concat()
}

/// `mptcp-loader stats --json` of the run in `ns`.
///
/// # Errors
/// When the loader is not found, the command fails or its output is no JSON.
pub fn stats_json(ns: &Netns) -> Result<serde_json::Value> {
    let loader = crate::validator::locate_loader()
        .ok_or_else(|| LabError::parse("the loader binary", "not found"))?;
    let mut cmd = ns.net_only_command(loader);
    cmd.args(["stats", "--json"]);
    let out = run_checked(&mut cmd)?;
    serde_json::from_str(out.trim())
        .map_err(|e| LabError::parse("`mptcp-loader stats --json` output", e.to_string()))
}

/// A counter of [`stats_json`]'s output.
#[must_use]
pub fn counter(stats: &serde_json::Value, name: &str) -> Option<u64> {
    stats[name].as_u64()
}

/// One MPTCP connection from the client through gateway 1, with its joins through gateway 2.
pub struct Connection {
    server: StreamServer,
    client: StreamClient,
    started: Instant,
    srv0: Counters,
    cli0: Counters,
}

/// When the joins completed, after the connection was opened.
#[derive(Clone, Copy, Debug)]
pub struct Joined {
    /// The client's join (the server counted its third ACK).
    pub client_join_after: Option<Duration>,
    /// The server's join (the client counted its third ACK).
    pub server_join_after: Option<Duration>,
}

impl Connection {
    /// Connects to `to` (through gw1) and sends a little; `announce`: add the client's signal
    /// endpoint (once per lab), so the server joins it through gw2. The client's own join
    /// through gw2 starts at once.
    ///
    /// # Errors
    /// When a peer fails.
    pub fn open(
        lab: &GatewayLab,
        peer_bin: &Path,
        to: SocketAddrV4,
        announce: bool,
    ) -> Result<Connection> {
        let mut server = StreamServer::start(&lab.server, peer_bin, to)?;
        let srv0 = lab.server.counters()?;
        let cli0 = lab.client.counters()?;
        let started = Instant::now();
        let mut client = StreamClient::start(&lab.client, peer_bin, to)?;
        server.wait_accepted()?;
        if announce {
            lab.announce_join_port()?;
        }
        client.send(1_000)?;
        Ok(Connection {
            server,
            client,
            started,
            srv0,
            cli0,
        })
    }

    /// Waits until `wait` after the connection was opened for both joins.
    ///
    /// # Errors
    /// When the counters cannot be read.
    pub fn wait_joins(&mut self, lab: &GatewayLab, wait: Duration) -> Result<Joined> {
        let deadline = self.started + wait;
        let wait_for = |ns: &Netns, base: &Counters| -> Result<Option<Duration>> {
            let done = wait_for_counters(
                || ns.counters(),
                base,
                &[(mib::MP_JOIN_ACK_RX, 1)],
                deadline.saturating_duration_since(Instant::now()),
            )?;
            Ok(done.then(|| self.started.elapsed()))
        };
        Ok(Joined {
            client_join_after: wait_for(&lab.server, &self.srv0)?,
            server_join_after: wait_for(&lab.client, &self.cli0)?,
        })
    }

    /// Sends `bytes` more.
    ///
    /// # Errors
    /// When the client fails.
    pub fn send(&mut self, bytes: u64) -> Result<()> {
        self.client.send(bytes)
    }

    /// Ends it from the client with `SO_LINGER` 0: Linux sends an MP_FASTCLOSE carrying the
    /// server's key on an RST on every subflow.
    ///
    /// # Errors
    /// When the client fails.
    pub fn abort(self) -> Result<()> {
        self.client.abort()
    }

    /// Sends 100 kB more, closes; returns (bytes sent, bytes the server received).
    ///
    /// # Errors
    /// When a peer fails.
    pub fn finish(mut self) -> Result<(u64, u64)> {
        self.client.send(100_000)?;
        let sent = self.client.close()?;
        let received = self.server.finish()?;
        Ok((sent, received))
    }
}
