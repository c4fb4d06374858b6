//! Reference XDP programs for the flood benchmark's floors: two instructions,
//! `r0 = XDP_DROP (or XDP_PASS); exit`, loaded with `BPF_PROG_LOAD` and attached in native mode
//! with a `BPF_LINK_CREATE` link, so they go away when the process holding the link exits.
//!
//! - XDP_DROP on the receiving interface is the cheapest thing any XDP program can do to a
//!   packet: what remains is the cost of delivering the packet to XDP (veth's ring, its copy of
//!   an skb into an XDP buffer, freeing it). The validator's own work is what it adds to that.
//! - XDP_PASS is the same delivery followed by the whole stack, i.e. the kernel's rejection cost
//!   measured on the same path.

use std::{
    ffi::CString,
    io,
    os::fd::{FromRawFd as _, OwnedFd},
};

/// `XDP_DROP`.
pub const XDP_DROP: i32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: i32 = 2;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_DRV_MODE`: native XDP, fail rather than fall back to generic.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// The head of `union bpf_attr` for `BPF_PROG_LOAD` (fields up to `expected_attach_type`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The head of `union bpf_attr` for `BPF_LINK_CREATE`.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: bpf(2) reads `size_of::<T>()` bytes of a #[repr(C)] head of union bpf_attr; the
    // kernel treats the rest of the union as zero.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Loads `r0 = action; exit` as an XDP program.
///
/// # Errors
/// When the kernel refuses it (not root, no BPF).
pub fn load(action: i32) -> io::Result<OwnedFd> {
    let mut insns = [0u8; 16];
    insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
    insns[4..8].copy_from_slice(&action.to_le_bytes());
    insns[8] = 0x95; // BPF_JMP | BPF_EXIT
    let license = c"GPL";
    let mut name = [0u8; 16];
    let label: &[u8] = if action == XDP_DROP {
        b"flood_xdp_drop"
    } else {
        b"flood_xdp_pass"
    };
    name[..label.len()].copy_from_slice(label);
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_XDP,
        ..ProgLoadAttr::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr)
}

/// Attaches `prog` to `iface` (of the caller's network namespace) in native mode; the
/// program stays attached as long as the returned link is open.
///
/// # Errors
/// When the interface does not exist or the driver has no native XDP.
pub fn attach(prog: &OwnedFd, iface: &str) -> io::Result<OwnedFd> {
    use std::os::fd::AsRawFd as _;
    let name = CString::new(iface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let mut attr = LinkCreateAttr {
        prog_fd: u32::try_from(prog.as_raw_fd())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    bpf(BPF_LINK_CREATE, &mut attr)
}
