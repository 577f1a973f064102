//! Typed reads of JSON values that record a [`Problem`] instead of stopping, so one pass
//! over a line reports every bad key in it.

use super::{suggest, Level, Problem};
use serde_json::{Map, Value};

/// Problems found in one line (or one run-spec file).
pub(crate) struct Problems {
    pub line: Option<u64>,
    pub list: Vec<Problem>,
}

impl Problems {
    pub fn new(line: Option<u64>) -> Problems {
        Problems { line, list: Vec::new() }
    }

    pub fn push(&mut self, key: impl std::fmt::Display, message: impl Into<String>) {
        self.list.push(Problem { line: self.line, key: Some(key.to_string()), message: message.into() });
    }

    pub fn push_general(&mut self, message: impl Into<String>) {
        self.list.push(Problem { line: self.line, key: None, message: message.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

/// A key path such as `control_overrides.depth.control_weight`, kept as parts and joined
/// only when a problem is reported: valid lines, the common case, allocate nothing for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key<'a> {
    parts: [&'a str; 3],
    len: usize,
}

impl<'a> Key<'a> {
    /// This path with `part` appended (parts beyond three are dropped; we nest two deep).
    pub fn then(self, part: &'a str) -> Key<'a> {
        let mut k = self;
        if !part.is_empty() && k.len < 3 {
            k.parts[k.len] = part;
            k.len += 1;
        }
        k
    }
}

impl<'a> From<&'a str> for Key<'a> {
    fn from(s: &'a str) -> Key<'a> {
        Key { parts: ["", "", ""], len: 0 }.then(s)
    }
}

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, part) in self.parts[..self.len].iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(part)?;
        }
        Ok(())
    }
}

/// `obj[key]`. A job line's objects hold a handful of keys: comparing them is cheaper than
/// hashing `key` (serde_json's map hashes with SipHash), a dozen times per line. Larger maps
/// are looked up by hash.
pub(crate) fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if obj.len() <= 8 {
        obj.iter().find_map(|(k, v)| (k == key).then_some(v))
    } else {
        obj.get(key)
    }
}

/// A short description of what was found, for "expected X, got Y".
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let mut short: String = s.chars().take(40).collect();
            if short.len() < s.len() {
                short.push_str("...");
            }
            format!("the string {short:?}")
        }
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Reports every key of `obj` not in `allowed`, with a suggestion where one is close.
pub(crate) fn check_keys(obj: &Map<String, Value>, allowed: &[&str], prefix: Key<'_>, p: &mut Problems) {
    for key in obj.keys() {
        if !allowed.contains(&key.as_str()) {
            let hint = match suggest::closest(key, allowed) {
                Some(s) => format!("unknown key; did you mean `{s}`?"),
                None => format!("unknown key; expected one of: {}", allowed.join(", ")),
            };
            p.push(prefix.then(key), hint);
        }
    }
}

pub(crate) fn object<'a, 'k>(v: &'a Value, key: impl Into<Key<'k>>, p: &mut Problems) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        other => {
            p.push(key.into(), format!("expected an object, got {}", describe(other)));
            None
        }
    }
}

/// A string of 1..=max characters (or 0..=max when `allow_empty`).
pub(crate) fn text<'k>(v: &Value, key: impl Into<Key<'k>>, max_chars: usize, allow_empty: bool, p: &mut Problems) -> Option<String> {
    match v {
        Value::String(s) => {
            let n = s.chars().count();
            if n == 0 && !allow_empty {
                p.push(key.into(), "expected a non-empty string");
                None
            } else if n > max_chars {
                p.push(key.into(), format!("expected at most {max_chars} characters, got {n}"));
                None
            } else if s.contains('\0') {
                p.push(key.into(), "expected text without NUL characters");
                None
            } else {
                Some(s.clone())
            }
        }
        other => {
            p.push(key.into(), format!("expected a string, got {}", describe(other)));
            None
        }
    }
}

/// A number in `[lo, hi]` (or `(lo, hi]` when `lo_open`).
pub(crate) fn number<'k>(v: &Value, key: impl Into<Key<'k>>, lo: f64, hi: f64, lo_open: bool, p: &mut Problems) -> Option<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() && (if lo_open { x > lo } else { x >= lo }) && x <= hi => Some(x),
        _ => {
            let range = if lo_open { format!("({lo}, {hi}]") } else { format!("[{lo}, {hi}]") };
            p.push(key.into(), format!("expected a number in {range}, got {}", describe(v)));
            None
        }
    }
}

/// An integer in `[lo, hi]`.
pub(crate) fn integer<'k>(v: &Value, key: impl Into<Key<'k>>, lo: i64, hi: i64, p: &mut Problems) -> Option<i64> {
    let as_int = match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_u64().map(|_| i64::MAX)).or_else(|| {
            // 3.0 is an integer written as a float; 3.5 is not.
            n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15).map(|f| f as i64)
        }),
        _ => None,
    };
    match as_int {
        Some(i) if (lo..=hi).contains(&i) => Some(i),
        _ => {
            p.push(key.into(), format!("expected an integer in [{lo}, {hi}], got {}", describe(v)));
            None
        }
    }
}

pub(crate) fn level<'k>(v: &Value, key: impl Into<Key<'k>>, p: &mut Problems) -> Option<Level> {
    match v.as_str().and_then(Level::parse) {
        Some(l) => Some(l),
        None => {
            p.push(key.into(), format!("expected one of {}, got {}", Level::NAMES.join(", "), describe(v)));
            None
        }
    }
}

/// `[A-Za-z0-9._-]{1,64}`: safe as a file name and in a folder name.
pub(crate) fn name<'k>(v: &Value, key: impl Into<Key<'k>>, p: &mut Problems) -> Option<String> {
    let key = key.into();
    let s = text(v, key, 64, false, p)?;
    if is_safe_name(&s) {
        Some(s)
    } else {
        p.push(key, format!("expected 1 to 64 of A-Z a-z 0-9 . _ -, got {}", describe(v)));
        None
    }
}

pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s != "." && s != ".." && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}
