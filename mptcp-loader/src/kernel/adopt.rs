//! What a starting `run` finds in its pin directory, and what it does about it.
//!
//! A run that was killed, or that exited with `--keep-attached`, leaves its programs attached
//! through pinned links and its state in pinned maps. The next run takes an [`Inventory`] of the
//! directory (which links still hold an interface of this namespace, the layout record, the
//! kernel's view of every pinned map), checks the layout
//! ([`crate::kernel::layout::ObjectLayout::check_pinned`]) and then decides per interface ([`plan_steps`]):
//! adopt the pinned links (and swap its programs in atomically), or attach anew. Links whose
//! interface is gone are defunct: their pins are removed. When nothing attached is left, the
//! directory is cleared and the run starts from scratch.

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;

use crate::{
    kernel::bpf_sys::{self, BPF_LINK_TYPE_TCX, BPF_LINK_TYPE_XDP},
    kernel::error::KernelError,
    kernel::firewall::{AttachedMode, XdpAttach},
    kernel::layout::{MapLayout, ObjectLayout},
    kernel::netlink,
    kernel::preflight::interface_name_of,
    kernel::state::{pinned_links, read_layout_hash, PinnedLinks, PinnedState},
};

/// An interface of this network namespace that pinned links attach the firewall to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinnedIface {
    /// Its live link pins (defunct ones are left out).
    pub links: PinnedLinks,
    /// Its name now.
    pub name: String,
    /// The XDP mode its program runs in (from netlink, else from the interface record).
    pub mode: Option<AttachedMode>,
}

/// What a pin directory holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    /// The layout record, if readable.
    pub layout_hash: Option<u64>,
    /// Every shared map and what the kernel says of its pin (`None`: not pinned).
    pub maps: Vec<(String, Option<MapLayout>)>,
    /// Interfaces held by live links.
    pub ifaces: Vec<PinnedIface>,
    /// Link pins that hold nothing any more (interface gone) or are not links.
    pub defunct_links: Vec<PathBuf>,
}

/// Whether the link pinned at `path` is a live link of `link_type` on `ifindex` (a link whose
/// interface was deleted reports ifindex 0).
fn is_live_link(path: &Path, link_type: u32, ifindex: u32) -> bool {
    bpf_sys::pinned_link_details(path)
        .is_ok_and(|d| d.link_type == link_type && d.ifindex == ifindex)
}

/// Takes stock of `dir` (reads only), looking for the shared maps of `layout`.
///
/// # Errors
/// When the directory cannot be listed.
pub fn take_inventory(dir: &Path, layout: &ObjectLayout) -> Result<Inventory, KernelError> {
    let records = PinnedState::open(dir)
        .and_then(|state| state.ifaces())
        .unwrap_or_default();
    let mut inventory = Inventory {
        layout_hash: read_layout_hash(dir),
        maps: layout
            .names()
            .map(|name| (name.to_owned(), pinned_map_layout(&dir.join(name), name)))
            .collect(),
        ..Inventory::default()
    };
    for mut links in pinned_links(dir)? {
        let ifindex = links.ifindex;
        for (pin, link_type) in [
            (&mut links.xdp, BPF_LINK_TYPE_XDP),
            (&mut links.tcx, BPF_LINK_TYPE_TCX),
        ] {
            if pin
                .as_deref()
                .is_some_and(|p| !is_live_link(p, link_type, ifindex))
            {
                inventory.defunct_links.extend(pin.take());
            }
        }
        let name = interface_name_of(ifindex);
        let (Some(name), true) = (name, links.xdp.is_some() || links.tcx.is_some()) else {
            // A live link always has its interface; this one's pins are all defunct.
            inventory.defunct_links.extend(links.xdp.take());
            inventory.defunct_links.extend(links.tcx.take());
            continue;
        };
        let from_kernel = netlink::xdp_attached(ifindex)
            .ok()
            .flatten()
            .and_then(|x| AttachedMode::from_netlink(x.mode));
        let recorded = records
            .iter()
            .find(|r| r.ifindex == ifindex)
            .and_then(super::state::IfaceRecord::mode);
        inventory.ifaces.push(PinnedIface {
            links,
            name,
            mode: from_kernel.or(recorded),
        });
    }
    Ok(inventory)
}

/// The kernel's view of the map pinned at `path`, if one is.
fn pinned_map_layout(path: &Path, name: &str) -> Option<MapLayout> {
    let info = MapInfo::from_pin(path).ok()?;
    Some(MapLayout::new(
        name,
        info.map_type().map_or(u32::MAX, |t| t as u32),
        info.key_size(),
        info.value_size(),
        info.max_entries(),
    ))
}

/// What a run does for one of its interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Attach anew.
    Attach {
        /// The interface.
        iface: String,
    },
    /// Take over the links an earlier run pinned.
    Adopt {
        /// The interface.
        iface: String,
        /// Its pins.
        links: PinnedLinks,
        /// The mode its XDP program runs in (the mode to attach in if its XDP link is missing).
        mode: AttachedMode,
    },
}

/// Decides, for each interface of the run (`requested`: name and index, in command-line
/// order), whether it adopts pinned links or attaches anew. Pure.
///
/// # Errors
/// [`KernelError::PinnedInterfaceNotRequested`] when pinned links hold an interface the run
/// does not name (it would leave it protected by nobody's knowledge);
/// [`KernelError::XdpModeDiffers`] when a pinned XDP program runs in a mode `--xdp-mode`
/// excludes; [`KernelError::IncompatiblePins`] when the mode of a pinned XDP link is unknown.
pub fn plan_steps(
    pin_dir: &Path,
    requested: &[(String, u32)],
    how: XdpAttach,
    pinned: &[PinnedIface],
) -> Result<Vec<Step>, KernelError> {
    if let Some(other) = pinned
        .iter()
        .find(|p| !requested.iter().any(|(_, index)| *index == p.links.ifindex))
    {
        return Err(KernelError::PinnedInterfaceNotRequested {
            pin_dir: pin_dir.to_path_buf(),
            iface: other.name.clone(),
        });
    }
    requested
        .iter()
        .map(|(iface, ifindex)| {
            let Some(found) = pinned.iter().find(|p| p.links.ifindex == *ifindex) else {
                return Ok(Step::Attach {
                    iface: iface.clone(),
                });
            };
            let mode = match (found.mode, &found.links.xdp, how) {
                (Some(mode), _, _) if mode.satisfies(how) => mode,
                (Some(mode), _, asked) => {
                    return Err(KernelError::XdpModeDiffers {
                        pin_dir: pin_dir.to_path_buf(),
                        iface: iface.clone(),
                        pinned: mode.short(),
                        asked: match asked {
                            XdpAttach::Native => "native",
                            XdpAttach::Skb => "skb",
                            XdpAttach::Auto => "auto",
                        },
                    })
                }
                // Only the TCX link survived: XDP is attached anew as asked.
                (None, None, XdpAttach::Skb) => AttachedMode::Skb,
                (None, None, _) => AttachedMode::Native,
                (None, Some(_), _) => {
                    return Err(KernelError::IncompatiblePins {
                        pin_dir: pin_dir.to_path_buf(),
                        detail: format!("cannot tell in which XDP mode {iface} runs"),
                    })
                }
            };
            Ok(Step::Adopt {
                iface: iface.clone(),
                links: found.links.clone(),
                mode,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &str = "/sys/fs/bpf/mptcp-fw/netns-9";

    fn pinned(ifindex: u32, name: &str, mode: Option<AttachedMode>, xdp: bool) -> PinnedIface {
        PinnedIface {
            links: PinnedLinks {
                ifindex,
                xdp: xdp.then(|| PathBuf::from(format!("{DIR}/link_xdp_{ifindex}"))),
                tcx: Some(PathBuf::from(format!("{DIR}/link_tcx_egress_{ifindex}"))),
            },
            name: name.to_owned(),
            mode,
        }
    }

    fn requested(names: &[(&str, u32)]) -> Vec<(String, u32)> {
        names.iter().map(|(n, i)| ((*n).to_owned(), *i)).collect()
    }

    #[test]
    fn pinned_interfaces_are_adopted_and_new_ones_attached() {
        let pins = [pinned(3, "veth0", Some(AttachedMode::Native), true)];
        let steps = plan_steps(
            Path::new(DIR),
            &requested(&[("veth1", 4), ("veth0", 3)]),
            XdpAttach::Auto,
            &pins,
        )
        .unwrap();
        assert_eq!(
            steps,
            [
                Step::Attach {
                    iface: "veth1".into()
                },
                Step::Adopt {
                    iface: "veth0".into(),
                    links: pins[0].links.clone(),
                    mode: AttachedMode::Native
                }
            ]
        );
        // Nothing pinned: everything is attached anew.
        let fresh = plan_steps(
            Path::new(DIR),
            &requested(&[("veth0", 3)]),
            XdpAttach::Skb,
            &[],
        );
        assert_eq!(
            fresh.unwrap(),
            [Step::Attach {
                iface: "veth0".into()
            }]
        );
    }

    #[test]
    fn an_interface_held_by_pins_must_be_named() {
        let pins = [pinned(3, "veth0", Some(AttachedMode::Skb), true)];
        let err = plan_steps(
            Path::new(DIR),
            &requested(&[("veth1", 4)]),
            XdpAttach::Auto,
            &pins,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the firewall pinned under {DIR} is attached to veth0, which this run does not \
                 name: add `--iface veth0`, or remove it first with `mptcp-loader detach --iface \
                 veth0`"
            )
        );
    }

    #[test]
    fn a_pinned_mode_is_kept_or_the_run_refused() {
        let pins = [pinned(3, "veth0", Some(AttachedMode::Skb), true)];
        let ok = plan_steps(
            Path::new(DIR),
            &requested(&[("veth0", 3)]),
            XdpAttach::Skb,
            &pins,
        );
        assert!(ok.is_ok());
        let err = plan_steps(
            Path::new(DIR),
            &requested(&[("veth0", 3)]),
            XdpAttach::Native,
            &pins,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "veth0 runs the firewall in generic (skb) XDP mode through the links pinned under \
                 {DIR}; --xdp-mode native cannot be applied without detaching: use `--xdp-mode \
                 auto`, or run `mptcp-loader detach --iface veth0` first"
            )
        );
        // Only the TCX link was pinned (a run died in between): XDP is attached as asked.
        let partial = [pinned(3, "veth0", None, false)];
        let steps = plan_steps(
            Path::new(DIR),
            &requested(&[("veth0", 3)]),
            XdpAttach::Skb,
            &partial,
        )
        .unwrap();
        assert!(matches!(
            steps[0],
            Step::Adopt {
                mode: AttachedMode::Skb,
                ..
            }
        ));
        let unknown = [pinned(3, "veth0", None, true)];
        assert!(matches!(
            plan_steps(
                Path::new(DIR),
                &requested(&[("veth0", 3)]),
                XdpAttach::Auto,
                &unknown
            ),
            Err(KernelError::IncompatiblePins { .. })
        ));
    }
}
