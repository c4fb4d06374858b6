//! A named network namespace (`ip netns`) that is deleted, with everything running in it, when
//! the guard is dropped.

use std::{
    ffi::OsStr,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::{
    counters::Counters,
    error::{LabError, Result},
    proc::{run_checked, Proc},
    teardown::{self, NETNS_PREFIX},
};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// RAII guard of a network namespace. Names are unique per process and per call
/// (`mptcp-lab-<role>-<pid>-<counter>`), so tests and demo runs never collide.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with loopback up.
    ///
    /// # Errors
    /// When `ip netns add` fails (not root, no iproute2).
    pub fn create(role: &str) -> Result<Netns> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NETNS_PREFIX}{role}-{}-{id}", std::process::id());
        // Register first: if creation half-succeeds, teardown still finds it.
        teardown::register_namespace(&name);
        let ns = Netns { name };
        run_checked(Command::new("ip").args(["netns", "add", &ns.name]))?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as in `ip netns list`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=` or setns(2).
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `work` on a thread of this process that has entered the namespace (setns(2) on that
    /// thread only): sockets it opens, and threads it starts, belong to the namespace, and stay
    /// there after it returns. For peers and forgers run inside the test process.
    ///
    /// # Errors
    /// When the namespace cannot be entered.
    ///
    /// # Panics
    /// When `work` panics (the panic goes on in the caller).
    pub fn enter<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T> {
        let path = self.path();
        let file = std::fs::File::open(&path)
            .map_err(LabError::io(format!("opening {}", path.display())))?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                // SAFETY: setns(2) on a namespace file we hold open; it changes this thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(LabError::io(format!("entering {}", self.name))(
                        std::io::Error::last_os_error(),
                    ));
                }
                Ok(work())
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// `ip netns exec <name> <program>`: a command that runs inside the namespace (with the
    /// namespace's own /sys and /etc/netns config, in a private mount namespace).
    #[must_use]
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// `nsenter --net=/run/netns/<name> -- <program>`: enters only the network namespace and
    /// keeps the caller's mount namespace, so the host's `/sys/fs/bpf` stays visible (what the
    /// loader needs to share pinned maps between `run` and `stats`).
    #[must_use]
    pub fn net_only_command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `args[0] args[1..]` inside the namespace and returns its stdout.
    ///
    /// # Errors
    /// When it cannot be started or exits non-zero.
    ///
    /// # Panics
    /// When `args` is empty.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().expect("run() needs a program");
        run_checked(self.command(program).args(rest))
    }

    /// `ip -n <name> <args>`: configures the namespace without entering it.
    ///
    /// # Errors
    /// When `ip` exits non-zero.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run_checked(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `sysctl -qw key=value` inside the namespace.
    ///
    /// # Errors
    /// When sysctl fails (unknown key, read-only).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// `ip mptcp limits set subflows 4 add_addr_accepted 4`: room for the labs' second subflow
    /// and announced addresses (Linux's defaults accept none).
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn allow_mptcp_paths(&self) -> Result<()> {
        self.ip(&[
            "mptcp",
            "limits",
            "set",
            "subflows",
            "4",
            "add_addr_accepted",
            "4",
        ])
        .map(drop)
    }

    /// `ip neigh replace ADDR lladdr MAC dev IFACE nud permanent`: a static neighbour, so the
    /// link needs no ARP or neighbour discovery (and answers to an address no one owns reach
    /// `mac`).
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn static_neighbour(&self, addr: &str, mac: &str, iface: &str) -> Result<()> {
        self.ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            iface,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// `ip rule add from ADDR table TABLE pref 100`: what leaves from `addr` is routed by
    /// `table` (a second path's own default route).
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn route_from(&self, addr: &str, table: &str) -> Result<()> {
        self.ip(&["rule", "add", "from", addr, "table", table, "pref", "100"])
            .map(drop)
    }

    /// Reads the namespace's SNMP/MIB counters (`/proc/net/netstat` and `/proc/net/snmp` as
    /// seen from inside; the same numbers as `nstat -az`).
    ///
    /// # Errors
    /// When the files cannot be read or parsed.
    pub fn counters(&self) -> Result<Counters> {
        Counters::parse(&self.run(&["cat", "/proc/net/netstat", "/proc/net/snmp"])?)
    }

    /// Spawns a long-running process inside the namespace (`ip netns exec`, which execs, so
    /// the pid is the program's own and signals reach it directly).
    ///
    /// # Errors
    /// When it cannot be started.
    pub fn spawn<S: AsRef<OsStr>>(
        &self,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[S],
    ) -> Result<Proc> {
        let mut cmd = self.command(program);
        cmd.args(args);
        Proc::spawn(&format!("{name} [{}]", self.name), cmd)
    }

    /// The id of the XDP program attached to `iface`, if any (`ip -d link show`).
    ///
    /// # Errors
    /// When `ip link show` fails (no such interface).
    pub fn xdp_prog_id(&self, iface: &str) -> Result<Option<u32>> {
        let out = self.ip(&["-d", "link", "show", "dev", iface])?;
        Ok(parse_xdp_prog_id(&out))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panics: teardown reports problems on stderr.
        teardown::delete_namespace(&self.name);
    }
}

/// A veth pair `a_if` (in `a`, `a_addr/24`) <-> `b_if` (in `b`, `b_addr/24`), both ends up.
/// Both ends are created directly in their namespaces: nothing appears in the caller's.
///
/// # Errors
/// When an `ip` step fails.
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_addr: &str,
    b: &Netns,
    b_if: &str,
    b_addr: &str,
) -> Result<()> {
    run_checked(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]))?;
    for (ns, iface, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", iface])?;
        ns.ip(&["link", "set", iface, "up"])?;
    }
    Ok(())
}

/// A veth pair `a_if` (in `a`, MAC `a_mac`) <-> `b_if` (in `b`, MAC `b_mac`), down and without
/// addresses: for labs whose static neighbours need known MACs. Both ends are created directly
/// in their namespaces.
///
/// # Errors
/// When `ip link add` fails.
pub fn veth_with_macs(
    (a, a_if, a_mac): (&Netns, &str, &str),
    (b, b_if, b_mac): (&Netns, &str, &str),
) -> Result<()> {
    run_checked(Command::new("ip").args([
        "link", "add", a_if, "address", a_mac, "netns", &a.name, "type", "veth", "peer", "name",
        b_if, "address", b_mac, "netns", &b.name,
    ]))
    .map(drop)
}

/// Finds `prog/xdp id N` (or `xdp ... prog/xdp id N`) in `ip -d link show` output.
#[must_use]
pub fn parse_xdp_prog_id(out: &str) -> Option<u32> {
    let mut words = out.split_whitespace();
    while let Some(word) = words.next() {
        if word.starts_with("prog/xdp") && words.next() == Some("id") {
            return words.next().and_then(|id| id.parse().ok());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::parse_xdp_prog_id;

    #[test]
    fn xdp_prog_id_from_ip_link() {
        let attached = "3: sveth1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 xdp qdisc noqueue\n    \
                        link/ether 02:00:00:00:01:02 brd ff:ff:ff:ff:ff:ff link-netns c promiscuity 0\n    \
                        prog/xdp id 42 name mptcp_xdp tag 0123456789abcdef jited";
        assert_eq!(parse_xdp_prog_id(attached), Some(42));
        assert_eq!(
            parse_xdp_prog_id("3: sveth1@if2: <UP> mtu 1500 qdisc noqueue"),
            None
        );
    }
}
