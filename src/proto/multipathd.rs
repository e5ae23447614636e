// SPDX-License-Identifier: MIT OR Apache-2.0
//! multipathd's command socket protocol (pure code): each message is the native-endian,
//! native-size `size_t` length of the text *including* its NUL, then the text and NUL.
//! Requests are commands such as `setprkey map mpatha key 0x1234`; replies are short
//! texts such as `ok\n`, `fail\n`, `set\n` or `0x1234\n`.

/// Longest reply accepted (multipathd's own limit for show commands is far larger, but
/// the PR commands answer a few bytes).
pub const MAX_REPLY: usize = 64 * 1024;

const LEN: usize = std::mem::size_of::<usize>();

/// Frame a command.
pub fn encode(cmd: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(LEN + cmd.len() + 1);
    b.extend_from_slice(&(cmd.len() + 1).to_ne_bytes());
    b.extend_from_slice(cmd.as_bytes());
    b.push(0);
    b
}

/// Why a reply frame is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reply length {0} over the {MAX_REPLY}-byte limit")]
    TooLong(usize),
}

/// Length of the text that follows a reply header (`None` until all header bytes are in).
pub fn reply_len(header: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(h) = header.get(..LEN) else {
        return Ok(None);
    };
    let n = usize::from_ne_bytes(h.try_into().expect("LEN bytes"));
    if n > MAX_REPLY {
        return Err(FrameError::TooLong(n));
    }
    Ok(Some(n))
}

/// A parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok,
    /// `fail`, with whatever reason followed (e.g. "permission deny: need to be root").
    Fail(String),
    /// getprstatus / getprhold: `set` (0.9.x answers `1`).
    Set,
    /// `unset` (0.9.x: `0`).
    Unset,
    /// getprkey: the key and whether it was registered with APTPL (`0X` or `:aptpl`).
    Key {
        key: u64,
        aptpl: bool,
    },
    /// getprkey: `none`.
    NoKey,
    /// Anything else (unknown command in an older multipathd, ...).
    Other(String),
}

/// Parse the text of a reply (NUL and trailing whitespace ignored).
pub fn parse(text: &[u8]) -> Reply {
    let end = text.iter().position(|&c| c == 0).unwrap_or(text.len());
    let s = String::from_utf8_lossy(&text[..end]);
    let s = s.trim();
    match s {
        "ok" => return Reply::Ok,
        "set" | "1" => return Reply::Set,
        "unset" | "unknown" | "0" => return Reply::Unset,
        "none" => return Reply::NoKey,
        _ => {}
    }
    if let Some(rest) = s.strip_prefix("fail") {
        return Reply::Fail(rest.trim().to_string());
    }
    if let Some(k) = parse_key(s) {
        return k;
    }
    Reply::Other(s.chars().take(200).collect())
}

fn parse_key(s: &str) -> Option<Reply> {
    let (body, suffix_aptpl) = match s.strip_suffix(":aptpl") {
        Some(b) => (b, true),
        None => (s, false),
    };
    let (hex, cap_x) = if let Some(h) = body.strip_prefix("0x") {
        (h, false)
    } else {
        (body.strip_prefix("0X")?, true)
    };
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let key = u64::from_str_radix(hex, 16).ok()?;
    Some(Reply::Key {
        key,
        aptpl: suffix_aptpl || cap_x,
    })
}

/// `setprkey map MAP key 0x…[:aptpl]`.
pub fn setprkey(map: &str, key: u64, aptpl: bool) -> String {
    let suffix = if aptpl { ":aptpl" } else { "" };
    format!("setprkey map {map} key 0x{key:x}{suffix}")
}

/// Commands that take only a map: `VERB map MAP`.
pub fn map_cmd(verb: &str, map: &str) -> String {
    format!("{verb} map {map}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_with_native_length_including_nul() {
        let f = encode("getprkey map mpatha");
        assert_eq!(f.len(), LEN + 20);
        assert_eq!(usize::from_ne_bytes(f[..LEN].try_into().unwrap()), 20);
        assert_eq!(&f[LEN..LEN + 19], b"getprkey map mpatha");
        assert_eq!(f[LEN + 19], 0);
        assert_eq!(reply_len(&f[..LEN - 1]), Ok(None));
        assert_eq!(reply_len(&f), Ok(Some(20)));
        assert_eq!(
            reply_len(&(MAX_REPLY + 1).to_ne_bytes()),
            Err(FrameError::TooLong(MAX_REPLY + 1))
        );
    }

    #[test]
    fn parses_replies_of_old_and_new_multipathd() {
        assert_eq!(parse(b"ok\n\0"), Reply::Ok);
        assert_eq!(parse(b"fail\n"), Reply::Fail(String::new()));
        assert_eq!(
            parse(b"fail\npermission deny: need to be root\n\0"),
            Reply::Fail("permission deny: need to be root".into())
        );
        assert_eq!(parse(b"set\n"), Reply::Set);
        assert_eq!(parse(b"1"), Reply::Set);
        assert_eq!(parse(b"unset\n"), Reply::Unset);
        assert_eq!(parse(b"0"), Reply::Unset);
        assert_eq!(parse(b"none\n"), Reply::NoKey);
        assert_eq!(
            parse(b"0x123abc\n"),
            Reply::Key {
                key: 0x123abc,
                aptpl: false
            }
        );
        assert_eq!(
            parse(b"0xffffffffffffffff:aptpl\n"),
            Reply::Key {
                key: u64::MAX,
                aptpl: true
            }
        );
        assert_eq!(
            parse(b"0X10"),
            Reply::Key {
                key: 16,
                aptpl: true
            }
        );
        assert_eq!(parse(b"0x"), Reply::Other("0x".into()));
        assert_eq!(
            parse(b"0x1ffffffffffffffff"),
            Reply::Other("0x1ffffffffffffffff".into())
        );
        assert_eq!(parse(b"\xff\xfe"), Reply::Other("\u{fffd}\u{fffd}".into()));
    }

    #[test]
    fn commands() {
        assert_eq!(
            setprkey("mpatha", 0xabc, false),
            "setprkey map mpatha key 0xabc"
        );
        assert_eq!(setprkey("dm-3", 1, true), "setprkey map dm-3 key 0x1:aptpl");
        assert_eq!(map_cmd("setprstatus", "x"), "setprstatus map x");
    }
}
