// SPDX-License-Identifier: MIT OR Apache-2.0
//! After a restart (a crash, `kill -9`), the key this process registered on a map is gone
//! from memory, yet REGISTER AND IGNORE does not carry the key it replaces, and the router
//! needs it to move a reservation held under the old key through a dead path. multipathd
//! kept it: prhelper told it with `setprkey` (with `reservation_key file` it is also in
//! /etc/multipath/prkeys). See docs/multipath.md, "Crash consistency".

use tracing::debug;

use super::{Map, Multipath};
use crate::proto::multipathd::{self as mpwire, Reply};
use crate::scsi::cdb::PrOutAction;

impl Multipath {
    /// The key to assume registered on `map` when this process does not know one: the
    /// one multipathd holds for it. Asked only for a REGISTER AND IGNORE, the one command
    /// that needs it.
    pub(super) fn key_from_multipathd(&self, map: &Map, cdb: &[u8; 16]) -> Option<u64> {
        if PrOutAction::from_code(cdb[1] & 0x1f) != Some(PrOutAction::RegisterAndIgnore) {
            return None;
        }
        let m = self.mpathd.as_ref()?;
        match m.command(&mpwire::map_cmd("getprkey", &map.name)) {
            Ok(Reply::Key { key, .. }) if key != 0 => {
                debug!("multipath {}: key {key:#x} from multipathd", map.name);
                Some(key)
            }
            Ok(r) => {
                debug!("multipath {}: getprkey: {r:?}", map.name);
                None
            }
            Err(e) => {
                debug!("multipath {}: getprkey: {e}", map.name);
                None
            }
        }
    }
}
