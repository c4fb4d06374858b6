//! Checks done before touching the kernel, so that a wrong command line or environment ends with
//! one clear line instead of an errno from deep inside aya.

use std::ffi::CString;

use crate::kernel::error::KernelError;

/// Our effective uid.
#[must_use]
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and has no preconditions.
    unsafe { libc::geteuid() }
}

/// Loading XDP programs and pinning maps needs root.
///
/// # Errors
/// [`KernelError::NotRoot`] unless `euid` is 0.
pub fn check_root(euid: u32) -> Result<(), KernelError> {
    if euid == 0 {
        Ok(())
    } else {
        Err(KernelError::NotRoot { euid })
    }
}

/// The interface index of `iface` in this network namespace.
///
/// # Errors
/// [`KernelError::UnknownInterface`] when there is no such interface.
pub fn interface_index(iface: &str) -> Result<u32, KernelError> {
    let unknown = || KernelError::UnknownInterface {
        iface: iface.to_owned(),
    };
    let c_name = CString::new(iface).map_err(|_| unknown())?;
    // SAFETY: c_name is NUL-terminated; if_nametoindex only reads it.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(unknown()),
        index => Ok(index),
    }
}

/// The name of interface `index`, for log lines (falls back to `if<index>`).
#[must_use]
pub fn interface_name(index: u32) -> String {
    interface_name_of(index).unwrap_or_else(|| format!("if{index}"))
}

/// The name of interface `index` in this network namespace, if it exists.
#[must_use]
pub fn interface_name_of(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the kernel wrote a NUL-terminated name into buf.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_check() {
        assert!(check_root(0).is_ok());
        let err = check_root(1000).unwrap_err();
        assert!(
            err.to_string().starts_with("mptcp-loader must run as root"),
            "{err}"
        );
    }

    #[test]
    fn loopback_exists_and_nonsense_does_not() {
        let lo = interface_index("lo").unwrap();
        assert_eq!(interface_name(lo), "lo");
        for bad in ["mptcp-nope0", "", "with\0nul"] {
            assert!(
                matches!(
                    interface_index(bad),
                    Err(KernelError::UnknownInterface { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
