// SPDX-License-Identifier: MIT OR Apache-2.0
//! Dropping privileges. Runs while the process still has a single thread (capabilities
//! and credentials are per thread on Linux; threads started later inherit the result).
//!
//! As root, everything goes except CAP_SYS_RAWIO (SG_IO with any CDB) and, when asked
//! for, CAP_SYS_ADMIN (device-mapper ioctls): effective, permitted, inheritable, ambient
//! and bounding sets alike. With `-u`/`-g`, the process also changes to that user and
//! group and drops supplementary groups. Without root, nothing can be dropped and nothing
//! is changed.

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Group, Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("invalid user '{0}'")]
    NoUser(String),
    #[error("invalid group '{0}'")]
    NoGroup(String),
    #[error("user '{0}' has no passwd entry to take a group from: give -g too")]
    NoPrimaryGroup(String),
    #[error("-u/-g need root privileges")]
    NotRoot,
    #[error("failed to drop privileges: {0}")]
    Drop(String),
}

/// Whom to run as after start-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: Uid,
    pub gid: Gid,
}

/// Resolve `-u`/`-g` (name first, then number, as qemu-pr-helper does).
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, PrivError> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let mut primary = None;
    let uid = match user {
        None => Uid::current(),
        Some(u) => match User::from_name(u).ok().flatten() {
            Some(pw) => {
                primary = Some(pw.gid);
                pw.uid
            }
            None => {
                let uid = u.parse::<u32>().map_err(|_| PrivError::NoUser(u.into()))?;
                primary = User::from_uid(Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|pw| pw.gid);
                Uid::from_raw(uid)
            }
        },
    };
    let gid = match group {
        Some(g) => match Group::from_name(g).ok().flatten() {
            Some(gr) => gr.gid,
            None => Gid::from_raw(g.parse::<u32>().map_err(|_| PrivError::NoGroup(g.into()))?),
        },
        None => match user {
            // qemu-pr-helper keeps gid 0 here; we take the user's own group.
            Some(u) => primary.ok_or_else(|| PrivError::NoPrimaryGroup(u.into()))?,
            None => Gid::current(),
        },
    };
    Ok(Some(Identity { uid, gid }))
}

/// Capabilities the daemon keeps.
pub fn kept(sys_admin: bool) -> CapsHashSet {
    let mut set = CapsHashSet::new();
    set.insert(Capability::CAP_SYS_RAWIO);
    if sys_admin {
        set.insert(Capability::CAP_SYS_ADMIN);
    }
    set
}

/// Drop to `keep` (and to `who`, if given). Call before any thread is started.
pub fn drop_privileges(who: Option<Identity>, keep: &CapsHashSet) -> Result<(), PrivError> {
    if !Uid::effective().is_root() {
        if who.is_some_and(|w| w.uid != Uid::effective() || w.gid != Gid::effective()) {
            return Err(PrivError::NotRoot);
        }
        return Ok(());
    }
    let err = |what: &str, e: &dyn std::fmt::Display| PrivError::Drop(format!("{what}: {e}"));
    // Bounding set first: removing from it needs CAP_SETPCAP, which goes next.
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| err("bounding set", &e))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("ambient set", &e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| err("inheritable set", &e))?;
    if let Some(id) = who {
        // Keep permitted capabilities across the uid change.
        nix::sys::prctl::set_keepcaps(true).map_err(|e| err("PR_SET_KEEPCAPS", &e))?;
        nix::unistd::setgroups(&[]).map_err(|e| err("setgroups", &e))?;
        nix::unistd::setresgid(id.gid, id.gid, id.gid).map_err(|e| err("setresgid", &e))?;
        nix::unistd::setresuid(id.uid, id.uid, id.uid).map_err(|e| err("setresuid", &e))?;
        nix::sys::prctl::set_keepcaps(false).map_err(|e| err("PR_SET_KEEPCAPS", &e))?;
    }
    // Effective first: the kernel requires effective to stay a subset of permitted.
    caps::set(None, CapSet::Effective, keep).map_err(|e| err("effective set", &e))?;
    caps::set(None, CapSet::Permitted, keep).map_err(|e| err("permitted set", &e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_names_and_numbers() {
        assert_eq!(resolve(None, None).unwrap(), None);
        let id = resolve(Some("root"), None).unwrap().unwrap();
        assert_eq!(
            id,
            Identity {
                uid: Uid::from_raw(0),
                gid: Gid::from_raw(0)
            }
        );
        let id = resolve(Some("0"), Some("0")).unwrap().unwrap();
        assert_eq!(id.uid.as_raw(), 0);
        assert!(matches!(
            resolve(Some("no-such-user-xyz"), None),
            Err(PrivError::NoUser(_))
        ));
        assert!(matches!(
            resolve(Some("0"), Some("no-such-group-xyz")),
            Err(PrivError::NoGroup(_))
        ));
        assert!(matches!(
            resolve(Some("4000000"), None),
            Err(PrivError::NoPrimaryGroup(_))
        ));
        assert_eq!(
            resolve(Some("4000000"), Some("5"))
                .unwrap()
                .unwrap()
                .gid
                .as_raw(),
            5
        );
    }

    #[test]
    fn kept_sets() {
        assert_eq!(kept(false).len(), 1);
        assert!(kept(true).contains(&Capability::CAP_SYS_ADMIN));
    }
}
