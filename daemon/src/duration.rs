//! Durations as people write them: `500ms`, `30s`, `5m`, `1h`, `1h30m`.

use std::time::Duration;

/// Parses a sequence of whole numbers with units `ms`, `s`, `m`, `h`, `d`, such as `1h30m`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let original = text;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err("empty duration; write e.g. 500ms, 30s, 5m or 1h".to_owned());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{original:?} is not a duration; write e.g. 500ms, 30s, 5m or 1h"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{original:?} is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => {
                return Err(format!(
                    "{original:?} has no unit; write e.g. 500ms, 30s, 5m or 1h"
                ));
            }
            _ => {
                return Err(format!(
                    "{original:?} has an unknown unit {unit:?}; use ms, s, m, h or d"
                ));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Writes a duration the way [`parse`] reads it: `1h30m`, `2s`, `250ms`.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if rest >= size && (rest.is_multiple_of(1000) || size > 1000) {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if rest > 0 {
        out.push_str(&format!("{rest}ms"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_it_parses() {
        for text in ["2s", "250ms", "1h30m", "1d", "1m1s", "0s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn parses_units_and_sequences() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse("5").unwrap_err().contains("no unit"));
        assert!(parse("5x").unwrap_err().contains("unknown unit"));
        assert!(parse("s").is_err());
        assert!(parse("").is_err());
        assert!(parse("1.5s").is_err());
    }
}
