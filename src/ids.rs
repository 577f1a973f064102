//! Ids of the form `ps_`/`rs_`/`bt_`/`sb_` + 12 lowercase base32 characters (60 random
//! bits), and the checks the CLI applies to whatever prefix a person types.

use std::fmt;

/// What an id names; the prefix of the id says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    Prompt,
    Run,
    Batch,
    Submission,
}

impl IdKind {
    pub const ALL: [IdKind; 4] = [IdKind::Prompt, IdKind::Run, IdKind::Batch, IdKind::Submission];

    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Prompt => "ps_",
            IdKind::Run => "rs_",
            IdKind::Batch => "bt_",
            IdKind::Submission => "sb_",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            IdKind::Prompt => "prompt",
            IdKind::Run => "run",
            IdKind::Batch => "batch",
            IdKind::Submission => "submission",
        }
    }

    /// The kind an id (or id prefix) names, from its first three characters.
    pub fn of(text: &str) -> Option<IdKind> {
        IdKind::ALL.into_iter().find(|k| text.starts_with(k.prefix()))
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// RFC 4648 base32, lower case: ids stay `[a-z0-9]+` after the underscore, which is what
/// the seed's scripts grep for (`rs_[a-z0-9]+`).
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
pub const ID_CHARS: usize = 12;

/// A new random id of the given kind.
pub fn new_id(kind: IdKind) -> String {
    let mut id = String::with_capacity(3 + ID_CHARS);
    id.push_str(kind.prefix());
    id.push_str(&token());
    id
}

/// [`ID_CHARS`] random characters of the id alphabet: a name no other process picks.
pub fn token() -> String {
    let mut bits = random_u64();
    let mut out = String::with_capacity(ID_CHARS);
    for _ in 0..ID_CHARS {
        out.push(ALPHABET[(bits & 31) as usize] as char);
        bits >>= 5;
    }
    out
}

/// 64 random bits from the kernel, fetched 4 KiB at a time: a 100,000-line submission
/// needs 200,000 ids, and one syscall each is measurable.
fn random_u64() -> u64 {
    use std::cell::RefCell;
    thread_local! {
        static POOL: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let (buf, used) = &mut *pool;
        if *used + 8 > buf.len() {
            buf.resize(4096, 0);
            if getrandom::fill(buf).is_err() {
                // No kernel entropy source is a broken host; time and a counter, mixed,
                // still give ids unique within this process.
                for chunk in buf.chunks_mut(8) {
                    let mut b = [0u8; 8];
                    fallback_bytes(&mut b);
                    chunk.copy_from_slice(&b[..chunk.len()]);
                }
            }
            *used = 0;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[*used..*used + 8]);
        *used += 8;
        u64::from_le_bytes(b)
    })
}

fn fallback_bytes(out: &mut [u8; 8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = crate::time::Timestamp::now().0 as u64;
    let mixed = (t ^ (c.wrapping_mul(0x9E37_79B9_7F4A_7C15))).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    *out = mixed.to_le_bytes();
}

/// Why a typed id cannot be an id at all (before any lookup).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdSyntaxError {
    #[error("`{0}` is not an id: ids start with ps_, rs_, bt_ or sb_")]
    NoPrefix(String),
    #[error("`{text}` is not a {kind} id: expected {prefix} followed by lowercase letters and digits 2-7")]
    BadChars { text: String, kind: IdKind, prefix: &'static str },
    #[error("`{text}` is too long for a {kind} id ({prefix} + {ID_CHARS} characters)")]
    TooLong { text: String, kind: IdKind, prefix: &'static str },
}

/// Checks that `text` could be (a prefix of) an id and says of which kind.
pub fn parse_prefix(text: &str) -> Result<IdKind, IdSyntaxError> {
    let kind = IdKind::of(text).ok_or_else(|| IdSyntaxError::NoPrefix(text.to_string()))?;
    let rest = &text[3..]; // ok: IdKind::of matched one of the 3-byte ASCII prefixes
    if rest.len() > ID_CHARS {
        return Err(IdSyntaxError::TooLong { text: text.to_string(), kind, prefix: kind.prefix() });
    }
    if !rest.bytes().all(|b| ALPHABET.contains(&b)) {
        return Err(IdSyntaxError::BadChars { text: text.to_string(), kind, prefix: kind.prefix() });
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_have_the_contract_shape() {
        for kind in IdKind::ALL {
            let id = new_id(kind);
            assert_eq!(id.len(), 15, "{id}");
            assert!(id.starts_with(kind.prefix()));
            assert_eq!(parse_prefix(&id), Ok(kind));
        }
        assert_ne!(new_id(IdKind::Run), new_id(IdKind::Run));
    }

    #[test]
    fn bad_prefixes_are_explained() {
        assert!(matches!(parse_prefix("xx_abc"), Err(IdSyntaxError::NoPrefix(_))));
        assert!(matches!(parse_prefix("rs_ABC"), Err(IdSyntaxError::BadChars { .. })));
        assert!(matches!(parse_prefix("rs_abc1"), Err(IdSyntaxError::BadChars { .. })));
        assert!(matches!(parse_prefix("rs_aaaaaaaaaaaaa"), Err(IdSyntaxError::TooLong { .. })));
        assert_eq!(parse_prefix("rs_"), Ok(IdKind::Run));
        let msg = parse_prefix("rs_x!").unwrap_err().to_string();
        assert!(msg.contains("rs_x!") && msg.contains("run id"), "{msg}");
    }
}
