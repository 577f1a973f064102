//! "Did you mean" for unknown keys: the closest allowed key by edit distance.

/// The allowed key closest to `typed`, if it is close enough to be a likely typo.
pub fn closest<'a>(typed: &str, allowed: &[&'a str]) -> Option<&'a str> {
    let typed_lower = typed.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for &candidate in allowed {
        let d = distance(&typed_lower, candidate);
        // A third of the length, at least 1 and at most 3 edits: `promt` -> `prompt`,
        // `control_wieght` -> `control_weight`, but `xyz` suggests nothing.
        let limit = (candidate.len().max(typed.len()) / 3).clamp(1, 3);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().take(128).collect();
    let b: Vec<char> = b.chars().take(128).collect();
    let (n, m) = (a.len(), b.len());
    let mut d = vec![vec![0usize; m + 1]; n + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=n {
        for j in 1..=m {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[n][m]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_keys_only() {
        let keys = ["prompt", "visual_input", "control_overrides", "negative_prompt", "seed"];
        assert_eq!(closest("promt", &keys), Some("prompt"));
        assert_eq!(closest("Prompt", &keys), Some("prompt"));
        assert_eq!(closest("visual_inptu", &keys), Some("visual_input"));
        assert_eq!(closest("control_override", &keys), Some("control_overrides"));
        assert_eq!(closest("banana", &keys), None);
        assert_eq!(closest("sede", &keys), Some("seed"));
    }
}
