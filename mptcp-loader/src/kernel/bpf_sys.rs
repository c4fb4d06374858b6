//! The few `bpf(2)` queries aya 0.14 does not expose: the interface a link is attached to (its
//! `LinkInfo` has no accessor for the union part of `bpf_link_info`), and a program's tag by id
//! (`ProgramInfo` has no constructor from an id).

use std::{
    io,
    os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

/// `BPF_PROG_GET_FD_BY_ID`.
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
/// `BPF_OBJ_GET_INFO_BY_FD`.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `BPF_LINK_GET_FD_BY_ID`.
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: libc::c_long = 5;
/// `BPF_PROG_TYPE_XDP`.
const BPF_PROG_TYPE_XDP: u64 = 6;
/// `BPF_F_XDP_HAS_FRAGS` (5.18): the program handles multi-buffer frames.
const BPF_F_XDP_HAS_FRAGS: u64 = 1 << 5;

/// Whether the kernel loads multi-buffer aware XDP programs (`BPF_F_XDP_HAS_FRAGS`, with
/// `bpf_xdp_get_buff_len` and `bpf_xdp_load_bytes`, all 5.18): loads `r0 = XDP_PASS; exit`
/// with the flag. Older kernels reject the unknown flag before verifying anything.
#[must_use]
pub fn kernel_has_xdp_frags() -> bool {
    // mov64 r0, 2 (XDP_PASS); exit
    let insns: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];
    let license = c"GPL";
    let mut attr = [0u64; 16];
    // u32 prog_type, u32 insn_cnt; u64 insns; u64 license; u32 log_level, u32 log_size;
    // u64 log_buf; u32 kern_version, u32 prog_flags.
    attr[0] = BPF_PROG_TYPE_XDP | (insns.len() as u64) << 32;
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[5] = BPF_F_XDP_HAS_FRAGS << 32;
    match sys_bpf(BPF_PROG_LOAD, &mut attr).map(i32::try_from) {
        Ok(Ok(fd)) => {
            // SAFETY: the kernel just returned this descriptor; nothing else owns it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            true
        }
        _ => false,
    }
}

/// Whether the kernel has `bpf_ktime_get_coarse_ns` (5.11): loads `call
/// bpf_ktime_get_coarse_ns; r0 = XDP_PASS; exit`. Older kernels reject the unknown helper.
#[must_use]
pub fn kernel_has_coarse_clock() -> bool {
    // call 160 (bpf_ktime_get_coarse_ns); mov64 r0, 2 (XDP_PASS); exit
    let insns: [u64; 3] = [
        0x0000_00a0_0000_0085,
        0x0000_0002_0000_00b7,
        0x0000_0000_0000_0095,
    ];
    let license = c"GPL";
    let mut attr = [0u64; 16];
    attr[0] = BPF_PROG_TYPE_XDP | (insns.len() as u64) << 32;
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    match sys_bpf(BPF_PROG_LOAD, &mut attr).map(i32::try_from) {
        Ok(Ok(fd)) => {
            // SAFETY: the kernel just returned this descriptor; nothing else owns it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
            true
        }
        _ => false,
    }
}

/// `bpf_link_type` values we look at.
pub const BPF_LINK_TYPE_XDP: u32 = 6;
/// `BPF_LINK_TYPE_TCX`.
pub const BPF_LINK_TYPE_TCX: u32 = 11;

/// What `BPF_OBJ_GET_INFO_BY_FD` says about a link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkDetails {
    /// `bpf_link_type`.
    pub link_type: u32,
    /// Link id (stable for the link's life).
    pub id: u32,
    /// Id of the program the link runs now.
    pub prog_id: u32,
    /// Interface of an XDP or TCX link; 0 once the interface is gone (the link is defunct).
    pub ifindex: u32,
}

/// The `bpf(2)` system call with `attr` as its `union bpf_attr` (128 bytes, zeroed but for the
/// fields of `cmd`); returns what the kernel returned (a descriptor for the commands that make one).
///
/// # Errors
/// The kernel's error.
pub fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zero-initialised 128-byte buffer, larger than the union members used.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` into `info` (the kernel fills at most `info.len()` bytes).
fn object_info(fd: BorrowedFd<'_>, info: &mut [u8]) -> io::Result<()> {
    let mut attr = [0u64; 16];
    let fd =
        u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let len =
        u32::try_from(info.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // struct { __u32 bpf_fd; __u32 info_len; __aligned_u64 info; }
    attr[0] = u64::from(fd) | (u64::from(len) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).map(drop)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Link type, ids and interface of the link behind `fd`.
///
/// # Errors
/// When `fd` is not a BPF link.
pub fn link_details(fd: impl AsFd) -> io::Result<LinkDetails> {
    // struct bpf_link_info { __u32 type; __u32 id; __u32 prog_id; union { ... } } with the union
    // 8-aligned at offset 16; both `xdp` and `tcx` start with `__u32 ifindex`.
    let mut info = [0u8; 64];
    object_info(fd.as_fd(), &mut info)?;
    Ok(LinkDetails {
        link_type: u32_at(&info, 0),
        id: u32_at(&info, 4),
        prog_id: u32_at(&info, 8),
        ifindex: u32_at(&info, 16),
    })
}

fn fd_by_id(cmd: libc::c_long, id: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = u64::from(id);
    let fd = sys_bpf(cmd, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The tag (hash of the instructions, map references zeroed) of program `prog_id`: two loads of
/// the same object have the same tag.
///
/// # Errors
/// When there is no such program.
pub fn prog_tag(prog_id: u32) -> io::Result<[u8; 8]> {
    let fd = fd_by_id(BPF_PROG_GET_FD_BY_ID, prog_id)?;
    // struct bpf_prog_info { __u32 type; __u32 id; __u8 tag[8]; ... }
    let mut info = [0u8; 16];
    object_info(fd.as_fd(), &mut info)?;
    Ok(info[8..16].try_into().expect("8 bytes"))
}

/// Details of link `link_id`.
///
/// # Errors
/// When there is no such link.
pub fn link_details_by_id(link_id: u32) -> io::Result<LinkDetails> {
    link_details(fd_by_id(BPF_LINK_GET_FD_BY_ID, link_id)?)
}

/// `BPF_OBJ_GET`.
const BPF_OBJ_GET: libc::c_long = 7;

/// Opens the BPF object (map, program, link) pinned at `path`.
///
/// # Errors
/// When nothing is pinned there.
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = [0u64; 16];
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    attr[0] = c_path.as_ptr() as u64;
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Details of the link pinned at `path`.
///
/// # Errors
/// When nothing is pinned there or it is not a link.
pub fn pinned_link_details(path: &std::path::Path) -> io::Result<LinkDetails> {
    link_details(obj_get(path)?)
}

/// Waits (up to a second) until link `id` is released. Closing the last reference releases a
/// link at once, but a process that had it open at the same moment (another loader reading its
/// ids) delays the release until it closes it.
pub fn wait_link_gone(id: u32) {
    for _ in 0..100 {
        if link_details_by_id(id).is_err() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    log::warn!("link {id} is still held by another process; it goes when that one closes it");
}

#[cfg(test)]
mod tests {
    use aya::util::KernelVersion;

    use super::kernel_has_xdp_frags;

    /// The probe answers what the kernel's version says: multi-buffer XDP came with 5.18.
    #[test]
    fn the_frags_probe_agrees_with_the_kernel_version() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let problems: Vec<String> = if root {
            Vec::new()
        } else {
            vec!["not root (loading a BPF program needs root)".to_owned()]
        };
        if !mptcp_common::testing::gate("the_frags_probe_agrees_with_the_kernel_version", &problems)
        {
            return;
        }
        let version = KernelVersion::current().expect("the kernel version");
        assert_eq!(
            kernel_has_xdp_frags(),
            version >= KernelVersion::new(5, 18, 0),
            "kernel {version:?}"
        );
    }
}
