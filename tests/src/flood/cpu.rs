//! CPU placement and CPU-time accounting for the flood benchmark: pinning, real-time priority,
//! per-process CPU clocks (exact, in ns) and the receiving CPU's `/proc/stat` line.

use std::{collections::BTreeSet, fs, io, time::Duration};

/// The CPU the generator, the client side and the harness run on.
pub const SENDER_CPU: usize = 0;
/// The CPU that does the receiver's work: the server interfaces' NAPI threads and the server
/// application.
pub const RECEIVER_CPU: usize = 1;

/// Pins a process (`0`: the calling thread) to one CPU. Threads and children created afterwards
/// inherit it.
///
/// # Errors
/// When sched_setaffinity(2) fails.
pub fn pin(pid: u32, cpu: usize) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked by the caller's CPU count, at most 1024).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &raw const set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Gives a process SCHED_FIFO at `priority` (1..=99).
///
/// # Errors
/// When sched_setscheduler(2) fails.
pub fn set_fifo(pid: u32, priority: i32) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: sched_setscheduler reads `param`, a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &raw const param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// CPU time consumed so far by process `pid` (all its threads), in ns, from its CPU-time
/// clock (`clock_getcpuclockid`): exact, not sampled by the tick. `None` when the process is
/// gone.
#[must_use]
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    // MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) from include/linux/posix-timers.h; pids are
    // below 2^22 (PID_MAX_LIMIT), and 0 would name the caller.
    if pid == 0 || pid >= 1 << 22 {
        return None;
    }
    let clock: libc::clockid_t = i32::try_from(((!i64::from(pid)) << 3) | 2).ok()?;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    if unsafe { libc::clock_gettime(clock, &raw mut ts) } != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    Some(secs * 1_000_000_000 + nanos)
}

/// Pids of every process whose `comm` satisfies `matches`.
#[must_use]
pub fn pids_by_comm(matches: impl Fn(&str) -> bool) -> BTreeSet<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| matches(c.trim_end()))
        })
        .collect()
}

/// The CPU's line of `/proc/stat`: user, nice, system, idle, iowait, irq, softirq, steal, in
/// USER_HZ ticks (10 ms). `system`, `softirq` and friends are sampled at each tick on this
/// kernel (`CONFIG_TICK_CPU_ACCOUNTING`), so they are only a cross-check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// user + nice.
    pub user: u64,
    /// system.
    pub system: u64,
    /// idle + iowait.
    pub idle: u64,
    /// irq + softirq.
    pub irq: u64,
}

impl CpuStat {
    /// Reads `cpu<N>` from /proc/stat (all zero if it cannot).
    #[must_use]
    pub fn read(cpu: usize) -> CpuStat {
        let prefix = format!("cpu{cpu} ");
        fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with(&prefix))?;
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                Some(CpuStat {
                    user: v.first()? + v.get(1)?,
                    system: *v.get(2)?,
                    idle: v.get(3)? + v.get(4)?,
                    irq: v.get(5)? + v.get(6)?,
                })
            })
            .unwrap_or_default()
    }

    /// `self - earlier`, field by field.
    #[must_use]
    pub fn since(&self, earlier: &CpuStat) -> CpuStat {
        CpuStat {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            idle: self.idle.saturating_sub(earlier.idle),
            irq: self.irq.saturating_sub(earlier.irq),
        }
    }

    /// system + irq + softirq time, the kernel's share.
    #[must_use]
    pub fn kernel_time(&self) -> Duration {
        Duration::from_millis(10 * (self.system + self.irq))
    }
}

/// Number of online CPUs (of the machine, whatever this thread's affinity).
#[must_use]
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// The CPU model (`model name` of /proc/cpuinfo).
#[must_use]
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// The running kernel's release.
#[must_use]
pub fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_clock_advances() {
        let me = std::process::id();
        let a = process_cpu_ns(me).unwrap();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i * i));
        }
        let b = process_cpu_ns(me).unwrap();
        assert!(b > a, "{a} {b} {x}");
        assert!(process_cpu_ns(0).is_none());
        assert!(process_cpu_ns(u32::MAX).is_none());
    }

    #[test]
    fn proc_stat_has_cpu0() {
        let s = CpuStat::read(0);
        assert!(s.user + s.system + s.idle > 0);
        assert_eq!(s.since(&s), CpuStat::default());
    }
}
