//! `mptcp-loader detach [--iface IF]`: removes what `run` left attached (after a SIGKILL, or an
//! exit with `--keep-attached`): for every interface, or just one, it unpins the XDP and TCX
//! links (the kernel detaches a link when its last reference, the pin, goes) and forgets the
//! interface's record; once no interface is left, it removes every pin (maps included) and the
//! directory. It refuses while a run owns the directory: that run detaches on SIGINT/SIGTERM.
//! An egress program attached as a clsact filter (kernels without TCX) has no pin: it is
//! removed from the interface by netlink (the clsact qdisc stays).

use std::{fs, io, path::Path};

use crate::{
    kernel::bpf_sys,
    kernel::error::KernelError,
    kernel::firewall::LinkIds,
    kernel::netlink,
    kernel::pins::{lock_owner, views_from_other_mount_namespaces, PinDir},
    kernel::preflight::{interface_index, interface_name_of},
    kernel::state::{pinned_links, PinnedLinks, PinnedState},
};

/// One interface `detach` detached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detached {
    /// Its name (or `if<index>` if it is gone).
    pub iface: String,
    /// The XDP link it had, if alive.
    pub xdp: Option<LinkIds>,
    /// The TCX link it had, if alive.
    pub tc: Option<LinkIds>,
    /// Whether an `mptcp_tc_egress` clsact filter was removed from it.
    pub filter_removed: bool,
}

/// What `detach` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetachReport {
    /// The interfaces detached.
    pub detached: Vec<Detached>,
    /// Whether the pin directory went too (nothing left attached).
    pub removed_pins: bool,
}

/// Which pinned interfaces `detach` removes: all, or the one with `ifindex` (`iface` is its
/// name, for the error). Pure.
///
/// # Errors
/// [`KernelError::NotAttachedHere`] when `ifindex` has no pinned links.
pub fn select_links(
    pin_dir: &Path,
    links: &[PinnedLinks],
    only: Option<(&str, u32)>,
) -> Result<Vec<PinnedLinks>, KernelError> {
    let Some((iface, ifindex)) = only else {
        return Ok(links.to_vec());
    };
    if let Some(found) = links.iter().find(|l| l.ifindex == ifindex) {
        Ok(vec![found.clone()])
    } else {
        let names: Vec<String> = links
            .iter()
            .map(|l| interface_name_of(l.ifindex).unwrap_or_else(|| format!("if{}", l.ifindex)))
            .collect();
        Err(KernelError::NotAttachedHere {
            pin_dir: pin_dir.to_path_buf(),
            iface: iface.to_owned(),
            attached: if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            },
        })
    }
}

/// The pin directory to work on: `pin_dir`, or its view in the mount namespace of another
/// process of this network namespace (a run started with `ip netns exec`).
///
/// # Errors
/// [`KernelError::NothingToDetach`] when neither exists.
fn locate(pin_dir: &Path) -> Result<std::path::PathBuf, KernelError> {
    if pin_dir.is_dir() {
        return Ok(pin_dir.to_path_buf());
    }
    views_from_other_mount_namespaces(pin_dir)
        .into_iter()
        .next()
        .ok_or_else(|| KernelError::NothingToDetach {
            pin_dir: pin_dir.to_path_buf(),
        })
}

/// Detaches the firewall pinned under `pin_dir` from every interface, or from `iface` only.
/// Call [`crate::kernel::preflight::check_root`] first (after checking `iface`, which needs no
/// privileges).
///
/// # Errors
/// [`KernelError::NothingToDetach`] without pins, [`KernelError::DetachWhileRunning`] while a
/// run owns them, [`KernelError::NotAttachedHere`] for an interface they do not attach to, I/O
/// errors.
pub fn detach(pin_dir: &Path, iface: Option<&str>) -> Result<DetachReport, KernelError> {
    let only = iface
        .map(|name| interface_index(name).map(|index| (name, index)))
        .transpose()?;
    let dir = locate(pin_dir)?;
    if let Some(pid) = lock_owner(&dir) {
        return Err(KernelError::DetachWhileRunning { pin_dir: dir, pid });
    }
    // Held until the end, so no run starts on the directory meanwhile.
    let mut claimed = PinDir::claim(&dir)?;
    claimed.keep();
    let all = pinned_links(&dir)?;
    let chosen = select_links(&dir, &all, only)?;
    let mut state = PinnedState::open(&dir).ok();
    let mut detached = Vec::new();
    for links in &chosen {
        let ids = |pin: Option<&Path>| {
            pin.and_then(|p| bpf_sys::pinned_link_details(p).ok())
                .filter(|d| d.ifindex == links.ifindex)
                .map(LinkIds::from)
        };
        let (xdp, tc) = (ids(links.xdp.as_deref()), ids(links.tcx.as_deref()));
        // Egress first, the reverse of attaching. The link is opened before its pin goes, so
        // that closing it is the last reference: the kernel then detaches it at once (the
        // release of a pin's reference is deferred to a workqueue).
        for pin in [&links.tcx, &links.xdp].into_iter().flatten() {
            let held = bpf_sys::obj_get(pin).ok();
            match fs::remove_file(pin) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(KernelError::io("unpinning the link", pin)(e))
                }
                _ => {}
            }
            drop(held);
        }
        for link in [tc, xdp].into_iter().flatten() {
            bpf_sys::wait_link_gone(link.link);
        }
        // A `--xdp-chain multiprog` run's XDP program is a component of libxdp's dispatcher,
        // pinned there, not here.
        let name = interface_name_of(links.ifindex).unwrap_or_default();
        if crate::kernel::multiprog::leave(&name, links.ifindex)? {
            log::info!("{name}: took the firewall out of libxdp's dispatcher");
        }
        if let Some(state) = &mut state {
            state.remove_iface(links.ifindex)?;
        }
        let name = interface_name_of(links.ifindex);
        // The clsact filter of a run without TCX, or leftovers of loader versions that
        // attached the egress program as a tc filter.
        let filter_removed = name.as_deref().is_some_and(|name| {
            netlink::remove_stale_filters(name).unwrap_or_else(|e| {
                log::warn!("{e}");
                false
            })
        });
        detached.push(Detached {
            iface: name.unwrap_or_else(|| format!("if{}", links.ifindex)),
            xdp,
            tc,
            filter_removed,
        });
    }
    drop(state);
    let removed_pins = chosen.len() == all.len();
    if removed_pins {
        claimed.remove()?;
    }
    Ok(DetachReport {
        detached,
        removed_pins,
    })
}

/// Runs `detach` and prints what it did (for the CLI).
///
/// # Errors
/// See [`detach`].
pub fn print_detach(pin_dir: &Path, iface: Option<&str>) -> Result<(), KernelError> {
    let report = detach(pin_dir, iface)?;
    let ids = |l: Option<LinkIds>| l.map_or_else(|| "gone".to_owned(), |l| l.to_string());
    for d in &report.detached {
        let egress = if d.tc.is_none() && d.filter_removed {
            "clsact egress filter: removed".to_owned()
        } else {
            format!("TCX egress: {}", ids(d.tc))
        };
        println!(
            "detached from {} (XDP ingress: {}; {egress})",
            d.iface,
            ids(d.xdp),
        );
    }
    if report.removed_pins {
        println!("removed the pins under {}", pin_dir.display());
    } else {
        println!(
            "kept the pins under {} for the interfaces still attached",
            pin_dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const DIR: &str = "/sys/fs/bpf/mptcp-fw/netns-5";

    fn links(ifindex: u32) -> PinnedLinks {
        PinnedLinks {
            ifindex,
            xdp: Some(PathBuf::from(format!("{DIR}/link_xdp_{ifindex}"))),
            tcx: None,
        }
    }

    #[test]
    fn all_or_one_interface_is_selected() {
        let pinned = [links(1), links(999_999)];
        assert_eq!(
            select_links(Path::new(DIR), &pinned, None).unwrap().len(),
            2
        );
        let one = select_links(Path::new(DIR), &pinned, Some(("lo", 1))).unwrap();
        assert_eq!(one, [links(1)]);
        let err = select_links(Path::new(DIR), &pinned, Some(("veth7", 7))).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the firewall pinned under {DIR} is not attached to veth7 (it is attached to: lo, \
                 if999999): see `mptcp-loader status`"
            )
        );
        let none = select_links(Path::new(DIR), &[], Some(("veth7", 7))).unwrap_err();
        assert!(
            none.to_string().contains("(it is attached to: none)"),
            "{none}"
        );
    }

    #[test]
    fn nothing_pinned_is_nothing_to_detach() {
        let err = detach(Path::new("/nonexistent/mptcp-fw/netns-0"), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "nothing to detach: no mptcp-loader pins under /nonexistent/mptcp-fw/netns-0 (see \
             `mptcp-loader status`)"
        );
        let err = detach(Path::new("/nonexistent/x"), Some("mptcp-nope0")).unwrap_err();
        assert!(matches!(err, KernelError::UnknownInterface { .. }), "{err}");
    }
}
