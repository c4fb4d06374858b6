//! Where a run pins its maps, and who owns that place.
//!
//! - The default pin directory is derived from the network namespace
//!   (`/sys/fs/bpf/mptcp-fw/netns-<inode of /proc/self/ns/net>`), so runs in different
//!   namespaces never collide and `stats` in a namespace finds the run of that namespace.
//! - bpffs accepts only pins and directories (no regular files, no symlinks), so a run marks
//!   the directory as its own with an exclusive `flock` on the directory itself. The lock dies
//!   with the process: pins left by a run that was killed (or exited with `--keep-attached`)
//!   are found by the next run, which adopts them (see [`crate::kernel::state`]) or, when nothing they
//!   hold is attached any more, removes them; `/proc/locks` names the pid of a live owner.
//! - What the loader itself publishes for `stats` (the install-latency summary
//!   [`PIN_INSTALL_LATENCY`], its own counters [`PIN_LOADER_COUNTERS`]) are small pinned arrays
//!   for the same reason: they are the only kind of file bpffs can hold.

use std::{
    fs::{self, File},
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData};

use crate::kernel::error::KernelError;

/// Where bpffs is normally mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Parent of every default pin directory.
pub const PIN_ROOT: &str = "/sys/fs/bpf/mptcp-fw";
/// `statfs::f_type` of a BPF filesystem (`BPF_FS_MAGIC` in linux/magic.h).
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Name of the pinned one-entry array holding the run's
/// [`crate::observe::latency::LatencySummary`].
pub const PIN_INSTALL_LATENCY: &str = "install_latency";
/// Name of the pinned `u64` array holding the loader's own counters
/// ([`crate::observe::loader_counters::LoaderCounter`]).
pub const PIN_LOADER_COUNTERS: &str = "loader_counters";

/// The pin directory of the network namespace with this inode number.
#[must_use]
pub fn pin_dir_for_netns(netns_inode: u64) -> PathBuf {
    Path::new(PIN_ROOT).join(format!("netns-{netns_inode}"))
}

/// Inode number of the network namespace we run in.
///
/// # Errors
/// When `/proc/self/ns/net` cannot be read (no /proc).
pub fn current_netns_inode() -> Result<u64, KernelError> {
    let path = "/proc/self/ns/net";
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(KernelError::io("reading the network namespace from", path))
}

/// The default pin directory: the one of the current network namespace.
///
/// # Errors
/// See [`current_netns_inode`].
pub fn default_pin_dir() -> Result<PathBuf, KernelError> {
    current_netns_inode().map(pin_dir_for_netns)
}

/// Whether a `statfs` type is bpffs.
#[must_use]
pub fn is_bpffs_magic(f_type: i64) -> bool {
    f_type == BPF_FS_MAGIC
}

/// `statfs(path).f_type`.
fn fs_type(path: &Path) -> io::Result<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is plain old data; the kernel fills it when the call succeeds.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and buf is a valid out-pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &raw mut buf) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between architectures"
    )]
    Ok(buf.f_type as i64)
}

/// Checks that `pin_dir` is (or would be created) on a BPF filesystem, by looking at its nearest
/// existing ancestor.
///
/// # Errors
/// [`KernelError::BpffsNotMounted`] naming the directory that is not on bpffs.
pub fn check_bpffs(pin_dir: &Path) -> Result<(), KernelError> {
    let existing = pin_dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let f_type =
        fs_type(existing).map_err(KernelError::io("checking the file system of", existing))?;
    if is_bpffs_magic(f_type) {
        Ok(())
    } else {
        Err(KernelError::BpffsNotMounted {
            path: existing.to_path_buf(),
        })
    }
}

/// The pid holding a `flock` on the file `(major:minor, inode)` according to `/proc/locks` text.
#[must_use]
pub fn parse_lock_owner(proc_locks: &str, major: u32, minor: u32, inode: u64) -> Option<u32> {
    let wanted = format!("{major:02x}:{minor:02x}:{inode}");
    proc_locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 8672 00:27:11681 0 EOF"; waiters have "->" after the id.
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, dev_ino, ..] if *dev_ino == wanted => pid.parse().ok(),
            _ => None,
        }
    })
}

/// The pid of the process holding the lock on `dir`, if any.
#[must_use]
pub fn lock_owner(dir: &Path) -> Option<u32> {
    let meta = fs::metadata(dir).ok()?;
    let locks = fs::read_to_string("/proc/locks").ok()?;
    let dev = meta.dev();
    parse_lock_owner(&locks, libc::major(dev), libc::minor(dev), meta.ino())
}

/// A pin directory owned by this process (exclusive `flock` held until drop).
///
/// Dropping it removes the directory and everything pinned in it if it was empty when claimed
/// (error paths of a first run leave nothing behind); pins found there stay, as found, unless
/// [`PinDir::clear`] or [`PinDir::remove`] is called.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    /// Holds the lock; closing it releases the lock.
    _lock: File,
    /// Pins were there when it was claimed (an earlier run's).
    found_pins: bool,
    /// Leave everything in place on drop.
    keep: bool,
}

impl PinDir {
    /// Creates (or takes over an unowned) pin directory and locks it. Pins already there are
    /// left for the caller to adopt or clear ([`PinDir::found_pins`]).
    ///
    /// # Errors
    /// [`KernelError::AnotherRunActive`] when a live process holds it; I/O errors otherwise.
    pub fn claim(path: &Path) -> Result<Self, KernelError> {
        if let Some(pid) = live_owner_elsewhere(path) {
            return Err(KernelError::AnotherRunActive {
                pin_dir: path.to_path_buf(),
                owner: format!("pid {pid}, in another mount namespace"),
            });
        }
        // A few rounds: the previous owner may remove the directory while we open it.
        for _ in 0..3 {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(KernelError::io("creating", parent))?;
            }
            match fs::create_dir(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(KernelError::io("creating the pin directory", path)(e)),
            }
            let lock =
                File::open(path).map_err(KernelError::io("opening the pin directory", path))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    let owner = lock_owner(path)
                        .map_or_else(|| "pid unknown".to_owned(), |p| format!("pid {p}"));
                    return Err(KernelError::AnotherRunActive {
                        pin_dir: path.to_path_buf(),
                        owner,
                    });
                }
                return Err(KernelError::io("locking the pin directory", path)(err));
            }
            // Locked; but is it still the directory at `path`?
            let locked = lock
                .metadata()
                .map_err(KernelError::io("inspecting", path))?;
            match fs::metadata(path) {
                Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {}
                _ => continue,
            }
            let mut dir = Self {
                path: path.to_path_buf(),
                _lock: lock,
                found_pins: false,
                keep: false,
            };
            dir.found_pins = !dir.entries()?.is_empty();
            return Ok(dir);
        }
        Err(KernelError::io("claiming the pin directory", path)(
            io::Error::other("it kept being replaced by another process"),
        ))
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the object called `name` is pinned.
    #[must_use]
    pub fn pin_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether pins were there when it was claimed.
    #[must_use]
    pub fn found_pins(&self) -> bool {
        self.found_pins
    }

    /// Removes every pin found in it (nothing they held is needed any more); from then on it
    /// is cleaned up on drop like a fresh one.
    ///
    /// # Errors
    /// When a pin cannot be removed.
    pub fn clear(&mut self) -> Result<(), KernelError> {
        self.remove_entries()?;
        self.found_pins = false;
        Ok(())
    }

    /// Leaves everything pinned in place when dropped (`run --keep-attached`, or an error after
    /// an adopted attachment was touched).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    fn entries(&self) -> Result<Vec<PathBuf>, KernelError> {
        let read = fs::read_dir(&self.path).map_err(KernelError::io("listing", &self.path))?;
        read.map(|e| e.map(|e| e.path()))
            .collect::<io::Result<_>>()
            .map_err(KernelError::io("listing", &self.path))
    }

    fn remove_entries(&self) -> Result<(), KernelError> {
        for entry in self.entries()? {
            let removed = if entry.is_dir() {
                fs::remove_dir_all(&entry)
            } else {
                fs::remove_file(&entry)
            };
            removed.map_err(KernelError::io("removing", &entry))?;
        }
        Ok(())
    }

    /// Removes every pin and the directory (unpinned maps are freed once no program uses them).
    ///
    /// # Errors
    /// When a pin or the directory cannot be removed.
    pub fn remove(mut self) -> Result<(), KernelError> {
        self.keep = true;
        self.remove_entries()?;
        fs::remove_dir(&self.path).map_err(KernelError::io("removing", &self.path))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if !self.keep && !self.found_pins {
            // Error paths of a first run: leave nothing behind (best effort; a later run
            // cleans up otherwise).
            let _ = self.remove_entries();
            let _ = fs::remove_dir(&self.path);
        }
    }
}

/// Opens the `u64` array pinned as `name` in `dir` if it has `len` entries, else (missing,
/// another size) replaces it with a zeroed one. Returns the array and whether it was reused.
///
/// # Errors
/// When the map can be neither opened nor created.
pub fn open_or_create_pinned_array<V: aya::Pod>(
    dir: &PinDir,
    name: &'static str,
    len: u32,
) -> Result<(Array<MapData, V>, bool), KernelError> {
    let path = dir.pin_path(name);
    let reopened = MapData::from_pin(&path)
        .and_then(Map::from_map_data)
        .and_then(Array::<MapData, V>::try_from)
        .ok()
        .filter(|a| a.len() == len);
    if let Some(array) = reopened {
        return Ok((array, true));
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(KernelError::io("removing", &path)(e))
        }
        _ => {}
    }
    Ok((create_pinned_array(dir, name, len)?, false))
}

/// The pin directory (and the pid of its live run, if any) whose pinned XDP link runs program
/// `prog_id`: the directories under [`PIN_ROOT`] and the siblings of `own_dir` are searched.
#[must_use]
pub fn find_xdp_link_owner(prog_id: u32, own_dir: Option<&Path>) -> Option<(PathBuf, Option<u32>)> {
    let mut parents = vec![PathBuf::from(PIN_ROOT)];
    if let Some(parent) = own_dir.and_then(Path::parent) {
        if parent != Path::new(PIN_ROOT) {
            parents.push(parent.to_path_buf());
        }
    }
    let candidates = parents
        .iter()
        .filter_map(|p| fs::read_dir(p).ok())
        .flat_map(|entries| entries.flatten().map(|e| e.path()));
    for dir in candidates {
        let Ok(links) = crate::kernel::state::pinned_links(&dir) else {
            continue;
        };
        let runs_it = links.iter().filter_map(|l| l.xdp.as_deref()).any(|pin| {
            crate::kernel::bpf_sys::pinned_link_details(pin).is_ok_and(|d| d.prog_id == prog_id)
        });
        if runs_it {
            let pid = lock_owner(&dir);
            return Some((dir, pid));
        }
    }
    None
}

/// Creates a userspace array map of `len` zeroed entries, pins it as `name` in `dir`, and returns
/// a handle to it.
///
/// # Errors
/// When the map cannot be created, pinned or reopened.
pub fn create_pinned_array<V: aya::Pod>(
    dir: &PinDir,
    name: &'static str,
    len: u32,
) -> Result<Array<MapData, V>, KernelError> {
    let path = dir.pin_path(name);
    let map = Array::<MapData, V>::create(len, 0).map_err(KernelError::map(name))?;
    map.pin(&path).map_err(|source| KernelError::Pin {
        map: name,
        path: path.clone(),
        source,
    })?;
    // `pin` consumed the handle; reopen it from the pin.
    let open_error = |source| KernelError::OpenPin {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_error)?;
    Array::try_from(Map::from_map_data(data).map_err(open_error)?).map_err(open_error)
}

/// `pin_dir` as seen by the other processes of this network namespace that live in other mount
/// namespaces, as `/proc/<pid>/root/...` paths, where such a directory exists there.
///
/// `ip netns exec` gives every command a fresh /sys, so a bpffs mounted for a `run` there is
/// invisible to a later `ip netns exec ... stats` (or to a second `run`); this finds it anyway.
#[must_use]
pub fn views_from_other_mount_namespaces(pin_dir: &Path) -> Vec<PathBuf> {
    let ns_inode = |pid: &str, ns: &str| {
        fs::metadata(format!("/proc/{pid}/ns/{ns}"))
            .ok()
            .map(|m| m.ino())
    };
    let (Some(our_net), Some(our_mnt), Ok(relative), Ok(procs)) = (
        ns_inode("self", "net"),
        ns_inode("self", "mnt"),
        pin_dir.strip_prefix("/"),
        fs::read_dir("/proc"),
    ) else {
        return Vec::new();
    };
    let mut mount_namespaces_seen = Vec::new();
    let mut views = Vec::new();
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().into_string() else {
            continue;
        };
        if !pid.bytes().all(|b| b.is_ascii_digit()) || ns_inode(&pid, "net") != Some(our_net) {
            continue;
        }
        match ns_inode(&pid, "mnt") {
            Some(mnt) if mnt != our_mnt && !mount_namespaces_seen.contains(&mnt) => {
                mount_namespaces_seen.push(mnt);
            }
            _ => continue,
        }
        let view = Path::new("/proc").join(&pid).join("root").join(relative);
        if view.is_dir() {
            views.push(view);
        }
    }
    views
}

/// The pid of a live run of this network namespace that holds `pin_dir` in another mount
/// namespace.
fn live_owner_elsewhere(pin_dir: &Path) -> Option<u32> {
    views_from_other_mount_namespaces(pin_dir)
        .iter()
        .find_map(|view| lock_owner(view))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_dir_names_the_namespace() {
        assert_eq!(
            pin_dir_for_netns(4_026_531_840),
            Path::new("/sys/fs/bpf/mptcp-fw/netns-4026531840")
        );
    }

    #[test]
    fn default_pin_dir_uses_our_namespace() {
        let ino = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(default_pin_dir().unwrap(), pin_dir_for_netns(ino));
    }

    #[test]
    fn bpffs_magic() {
        assert!(is_bpffs_magic(0xcafe_4a11));
        assert!(!is_bpffs_magic(0x6265_6572)); // sysfs
    }

    #[test]
    fn a_plain_directory_is_not_bpffs() {
        let err = check_bpffs(Path::new("/proc/self/this/does/not/exist")).unwrap_err();
        assert!(
            matches!(err, KernelError::BpffsNotMounted { ref path } if path == Path::new("/proc/self")),
            "{err}"
        );
    }

    #[test]
    fn lock_owner_from_proc_locks() {
        let text = "1: FLOCK  ADVISORY  WRITE 8672 00:27:11681 0 EOF\n\
                    1: -> FLOCK  ADVISORY  WRITE 9000 00:27:11681 0 EOF\n\
                    2: POSIX  ADVISORY  WRITE 77 fd:01:11681 0 EOF\n";
        assert_eq!(parse_lock_owner(text, 0, 0x27, 11681), Some(8672));
        assert_eq!(parse_lock_owner(text, 0, 0x27, 11682), None);
        assert_eq!(
            parse_lock_owner(text, 0xfd, 1, 11681),
            None,
            "POSIX locks are not ours"
        );
    }

    #[test]
    fn claim_locks_and_cleans_up() {
        // Any file system supports flock; bpffs is only needed for pinning.
        let base = std::env::temp_dir().join(format!("mptcp-loader-pins-{}", std::process::id()));
        let dir = base.join("netns-1");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("earlier_pin"), b"").unwrap();
        {
            // Found pins are the caller's to adopt: kept, also when it drops the directory.
            let claimed = PinDir::claim(&dir).unwrap();
            assert!(claimed.found_pins());
        }
        assert!(dir.join("earlier_pin").exists());
        let mut claimed = PinDir::claim(&dir).unwrap();
        claimed.clear().unwrap();
        assert!(!dir.join("earlier_pin").exists(), "cleared");
        assert!(!claimed.found_pins());
        assert_eq!(lock_owner(&dir), Some(std::process::id()));
        let again = PinDir::claim(&dir).unwrap_err();
        assert!(
            matches!(again, KernelError::AnotherRunActive { .. }),
            "{again}"
        );
        assert!(again
            .to_string()
            .contains(&format!("pid {}", std::process::id())));
        fs::write(claimed.pin_path("x"), b"").unwrap();
        claimed.remove().unwrap();
        assert!(!dir.exists());
        {
            let _dropped = PinDir::claim(&dir).unwrap();
        }
        assert!(!dir.exists(), "drop removes the directory");
        fs::remove_dir_all(&base).unwrap();
    }
}
