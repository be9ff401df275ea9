//! Which seeds a scenario runs for: `SIM_SEEDS` or a small default set.

/// Seeds used when `SIM_SEEDS` is not set: few, so `cargo test --workspace` stays fast.
pub const DEFAULT_SEEDS: [u64; 3] = [1, 2, 3];

/// The seeds every scenario runs for.
///
/// `SIM_SEEDS` holds a half-open range (`1000..1100`), a list (`7,42`) or one seed (`7`);
/// unset or empty, [`DEFAULT_SEEDS`] are used.
///
/// # Panics
///
/// When `SIM_SEEDS` is set but cannot be parsed: a typo must not silently run nothing.
///
/// ```
/// std::env::set_var("SIM_SEEDS", "5..8");
/// assert_eq!(p2p_sim_tests::seeds_from_env(), vec![5, 6, 7]);
/// ```
pub fn seeds_from_env() -> Vec<u64> {
    match std::env::var("SIM_SEEDS") {
        Ok(s) if !s.trim().is_empty() => parse_seeds(&s)
            .unwrap_or_else(|e| panic!("SIM_SEEDS={s:?}: {e} (expected `1000..1100` or `7,42`)")),
        _ => DEFAULT_SEEDS.to_vec(),
    }
}

/// Parses a seed spec: `a..b` (half-open), `a..=b`, or a comma-separated list.
pub fn parse_seeds(spec: &str) -> Result<Vec<u64>, String> {
    let spec = spec.trim();
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|e| format!("`{}` is not a seed: {e}", s.trim()))
    };
    if let Some((a, b)) = spec.split_once("..=") {
        let (a, b) = (num(a)?, num(b)?);
        return if a <= b {
            Ok((a..=b).collect())
        } else {
            Err(format!("empty range {a}..={b}"))
        };
    }
    if let Some((a, b)) = spec.split_once("..") {
        let (a, b) = (num(a)?, num(b)?);
        return if a < b {
            Ok((a..b).collect())
        } else {
            Err(format!("empty range {a}..{b}"))
        };
    }
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(num)
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| {
            if v.is_empty() {
                Err("no seed".into())
            } else {
                Ok(v)
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ranges_and_lists() {
        assert_eq!(parse_seeds("3..6"), Ok(vec![3, 4, 5]));
        assert_eq!(parse_seeds("3..=5"), Ok(vec![3, 4, 5]));
        assert_eq!(parse_seeds("7,42"), Ok(vec![7, 42]));
        assert_eq!(parse_seeds(" 9 "), Ok(vec![9]));
        assert!(parse_seeds("5..5").is_err());
        assert!(parse_seeds("x").is_err());
        assert!(parse_seeds(",").is_err());
    }
}
