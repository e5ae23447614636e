// SPDX-License-Identifier: MIT OR Apache-2.0
//! Parsing dm-multipath status lines (pure code).
//!
//! The kernel's `multipath_status` (STATUSTYPE_INFO) writes:
//!
//! ```text
//! <#feature args> <args...> <#handler args> <args...> <#groups> <next group>
//!   per group:  <D|A|E> <#selector args> <args...> <#paths> <#per-path selector args>
//!     per path: <maj:min> <A|F> <fail count> <selector args...>
//! ```

/// One path of a map, in table order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathState {
    pub major: u32,
    pub minor: u32,
    /// Not failed by device-mapper (`A`).
    pub active: bool,
    /// Its priority group (0-based) and whether that group is the current/next one.
    pub group: usize,
    pub group_active: bool,
}

fn num(tok: Option<&str>) -> Option<usize> {
    tok?.parse().ok()
}

/// Parse a multipath status line. `None` if it is malformed.
pub fn parse(status: &str) -> Option<Vec<PathState>> {
    let mut t = status.split_ascii_whitespace();
    let skip = |t: &mut std::str::SplitAsciiWhitespace<'_>, n: usize| -> Option<()> {
        for _ in 0..n {
            t.next()?;
        }
        Some(())
    };
    let features = num(t.next())?;
    skip(&mut t, features)?;
    let handler = num(t.next())?;
    skip(&mut t, handler)?;
    let groups = num(t.next())?;
    let next_group = num(t.next())?;
    let mut paths = Vec::new();
    for g in 0..groups.min(1024) {
        let state = t.next()?;
        let sel_args = num(t.next())?;
        skip(&mut t, sel_args)?;
        let npaths = num(t.next())?;
        let per_path = num(t.next())?;
        for _ in 0..npaths.min(4096) {
            let dev = t.next()?;
            let (ma, mi) = dev.split_once(':')?;
            let active = match t.next()? {
                "A" => true,
                "F" => false,
                _ => return None,
            };
            t.next()?; // fail count
            skip(&mut t, per_path)?;
            paths.push(PathState {
                major: ma.parse().ok()?,
                minor: mi.parse().ok()?,
                active,
                group: g,
                group_active: state == "A" || g + 1 == next_group,
            });
        }
    }
    Some(paths)
}

/// The order to try paths in: the active group's usable paths first, then other usable
/// paths, in table order.
pub fn preference(paths: &[PathState]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..paths.len()).collect();
    idx.sort_by_key(|&i| (!paths[i].active, !paths[i].group_active, i));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_two_paths_one_group() {
        let p = parse("2 0 0 0 1 1 A 0 2 0 8:16 A 0 8:32 F 3 ").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].major, p[0].minor, p[0].active), (8, 16, true));
        assert_eq!((p[1].major, p[1].minor, p[1].active), (8, 32, false));
        assert!(p[0].group_active);
    }

    #[test]
    fn multipathd_style_service_time_and_alua_two_groups() {
        // service-time: 2 per-path info args; handler reported as 0 args in status.
        let s = "2 0 0 0 2 2 E 0 1 2 8:16 A 0 0 1 A 0 1 2 8:32 A 0 0 1 ";
        let p = parse(s).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].group, 0);
        assert!(!p[0].group_active);
        assert_eq!(p[1].group, 1);
        assert!(p[1].group_active);
        assert_eq!(preference(&p), vec![1, 0]);
    }

    #[test]
    fn failed_paths_go_last() {
        let p = parse("2 0 0 0 1 1 A 0 3 0 8:16 F 1 8:32 A 0 8:48 A 0").unwrap();
        assert_eq!(preference(&p), vec![1, 2, 0]);
    }

    #[test]
    fn malformed_is_none() {
        for s in [
            "",
            "2 0",
            "2 0 0 0 1 1 A 0 2 0 8:16 A 0",
            "2 0 0 0 1 1 A 0 1 0 816 A 0",
            "2 0 0 0 1 1 A 0 1 0 8:16 X 0",
            "x",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
        assert_eq!(parse("0 0 0 0").unwrap(), vec![]);
    }
}
