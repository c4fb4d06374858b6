//! Process-wide record of what the lab created, so it can be torn down from anywhere.
//!
//! Normal teardown is RAII ([`crate::Netns`] and [`crate::Proc`] clean up in `Drop`). This
//! registry covers the two cases RAII cannot: a signal (Ctrl-C on the demo), handled by
//! [`install_signal_teardown`], and namespaces left by a run that was killed outright, removed by
//! [`reap_stale_namespaces`] the next time a lab is built.
//!
//! Nothing here panics: every failure is reported on stderr and cleanup goes on.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, ExitCode, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, MutexGuard, PoisonError,
    },
    thread,
    time::Duration,
};

use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};

/// Prefix of every namespace the lab creates: `mptcp-lab-<role>-<pid>-<counter>`.
pub const NETNS_PREFIX: &str = "mptcp-lab-";

struct Registry {
    namespaces: BTreeSet<String>,
    pids: BTreeSet<u32>,
}

/// Set by the signal thread: the process is about to exit(128 + signal).
static TEARING_DOWN: AtomicBool = AtomicBool::new(false);

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: BTreeSet::new(),
    pids: BTreeSet::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    // A panic while holding the lock must not stop cleanup.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn register_namespace(name: &str) {
    registry().namespaces.insert(name.to_owned());
}

pub(crate) fn register_pid(pid: u32) {
    registry().pids.insert(pid);
}

pub(crate) fn unregister_pid(pid: u32) {
    registry().pids.remove(&pid);
}

/// Kills every process inside the namespace, then deletes it (which destroys its veths).
/// Best effort: errors are printed, never returned.
pub(crate) fn delete_namespace(name: &str) {
    registry().namespaces.remove(name);
    if !Path::new("/run/netns").join(name).exists() {
        return;
    }
    // `ip netns del` only removes the name: a process still inside keeps the namespace (and its
    // interfaces) alive, so kill them first.
    kill_namespace_processes(name);
    if let Err(err) = quiet_command("ip", &["netns", "del", name]) {
        // Another thread (signal teardown vs. Drop) may have won the race: that is fine.
        if Path::new("/run/netns").join(name).exists() {
            eprintln!("lab teardown: deleting namespace {name}: {err}");
        }
    }
}

/// The processes inside the namespace `name` (`ip netns pids`; none when it cannot be asked).
#[must_use]
pub fn namespace_pids(name: &str) -> Vec<i32> {
    let Ok(out) = Command::new("ip")
        .args(["netns", "pids", name])
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

fn kill_namespace_processes(name: &str) {
    let pids = namespace_pids(name);
    for &pid in &pids {
        // SAFETY: kill(2) with a pid read from `ip netns pids`; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if !pids.is_empty() {
        // Let them die so the namespace really goes away with its name.
        thread::sleep(Duration::from_millis(50));
    }
}

fn quiet_command(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Stops every registered child process (SIGTERM, up to 8 s to exit, then SIGKILL: the loader
/// detaches and unpins on SIGTERM, but one signalled while it loads its program takes about
/// 5 s to exit) and deletes every registered namespace.
/// Safe to call more than once and concurrently with normal `Drop` teardown.
pub fn teardown_all() {
    let (pids, namespaces) = {
        let reg = registry();
        (reg.pids.clone(), reg.namespaces.clone())
    };
    let pids: Vec<i32> = pids
        .into_iter()
        .filter_map(|p| i32::try_from(p).ok())
        .collect();
    for &pid in &pids {
        // SAFETY: kill(2) on a child we spawned and have not reaped; no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    while pids.iter().any(|&pid| is_running(pid)) && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    for &pid in &pids {
        if is_running(pid) {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        unregister_pid(pid.unsigned_abs());
    }
    for name in namespaces {
        delete_namespace(&name);
    }
}

/// Whether `pid` exists and is not a zombie (an exited child nobody has reaped yet).
fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state letter follows the parenthesised command name.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Installs a SIGINT/SIGTERM/SIGHUP handler (a thread, not an async handler) that tears the lab
/// down with [`teardown_all`] and exits with 128 + the signal number.
///
/// # Errors
/// When the handler cannot be registered.
pub fn install_signal_teardown() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    thread::Builder::new()
        .name("lab-signal-teardown".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                TEARING_DOWN.store(true, Ordering::SeqCst);
                eprintln!("\nsignal {signal}: tearing the lab down");
                teardown_all();
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// Whether a signal started the teardown (the main thread's errors are then consequences of it).
#[must_use]
pub fn signal_teardown_started() -> bool {
    TEARING_DOWN.load(Ordering::SeqCst)
}

/// If a signal started the teardown, blocks until the signal thread exits the process, so the
/// main thread does not return (and exit) while namespaces are still being deleted. Returns at
/// once otherwise. Call it before leaving `main`.
pub fn wait_for_signal_teardown() {
    if signal_teardown_started() {
        loop {
            thread::park();
        }
    }
}

/// The end of a lab tool's `main`: waits for a signal's teardown
/// ([`wait_for_signal_teardown`]), then prints a failure as `TOOL: ERROR`.
pub fn exit_code<E: std::fmt::Display>(tool: &str, result: Result<(), E>) -> ExitCode {
    wait_for_signal_teardown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{tool}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Deletes lab namespaces whose creating process is gone (a run that was SIGKILLed, or a test
/// binary that aborted). Namespaces of live processes are left alone.
pub fn reap_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = creator_pid(&name) {
            if !Path::new("/proc").join(pid.to_string()).exists() {
                eprintln!("lab: removing stale namespace {name} (pid {pid} is gone)");
                delete_namespace(&name);
            }
        }
    }
}

/// The pid in `mptcp-lab-<role>-<pid>-<counter>`.
fn creator_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let _counter: u32 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    let _role = parts.next()?;
    Some(pid)
}

#[cfg(test)]
mod tests {
    use super::creator_pid;

    #[test]
    fn creator_pid_parses_lab_names_only() {
        assert_eq!(creator_pid("mptcp-lab-client-1234-0"), Some(1234));
        assert_eq!(creator_pid("mptcp-lab-server-77-12"), Some(77));
        assert_eq!(creator_pid("mptcp-lab-client-x-0"), None);
        assert_eq!(creator_pid("other-client-1234-0"), None);
        assert_eq!(creator_pid("mptcp-lab-1234"), None);
    }
}
