//! Durations as people write them: `500ms`, `30s`, `5m`, `1h`, `1h30m`.

use std::time::Duration;

/// Why a text is not a duration. The message names the text and says what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty duration; write e.g. 500ms, 30s, 5m or 1h")]
    Empty,
    /// It does not start with a number (or a unit follows a unit).
    #[error("{text:?} is not a duration; write e.g. 500ms, 30s, 5m or 1h")]
    NotADuration { text: String },
    #[error("{text:?} is too large")]
    TooLarge {
        text: String,
        source: std::num::ParseIntError,
    },
    #[error("{text:?} has no unit; write e.g. 500ms, 30s, 5m or 1h")]
    NoUnit { text: String },
    #[error("{text:?} has an unknown unit {unit:?}; use ms, s, m, h or d")]
    UnknownUnit { text: String, unit: String },
}

/// The message alone, for a caller that relays it as a problem's text.
impl From<Error> for String {
    fn from(err: Error) -> String {
        err.to_string()
    }
}

/// Parses a sequence of whole numbers with units `ms`, `s`, `m`, `h`, `d`, such as `1h30m`.
pub fn parse(text: &str) -> Result<Duration, Error> {
    let original = text;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(Error::Empty);
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(Error::NotADuration {
                text: original.to_owned(),
            });
        }
        let n: u64 = rest[..digits].parse().map_err(|source| Error::TooLarge {
            text: original.to_owned(),
            source,
        })?;
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
                return Err(Error::NoUnit {
                    text: original.to_owned(),
                });
            }
            _ => {
                return Err(Error::UnknownUnit {
                    text: original.to_owned(),
                    unit: unit.to_owned(),
                });
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
        assert!(matches!(parse("5"), Err(Error::NoUnit { .. })));
        assert!(matches!(parse("5x"), Err(Error::UnknownUnit { unit, .. }) if unit == "x"));
        assert!(matches!(parse("s"), Err(Error::NotADuration { .. })));
        assert_eq!(parse(""), Err(Error::Empty));
        assert!(matches!(parse("1.5s"), Err(Error::UnknownUnit { .. })));
    }

    /// The messages say what was written and what to write; an overflow keeps its cause.
    #[test]
    fn errors_name_the_text_and_keep_their_cause() {
        for (text, message) in [
            ("5", "\"5\" has no unit; write e.g. 500ms, 30s, 5m or 1h"),
            (
                "5x",
                "\"5x\" has an unknown unit \"x\"; use ms, s, m, h or d",
            ),
            (
                "s",
                "\"s\" is not a duration; write e.g. 500ms, 30s, 5m or 1h",
            ),
            (" ", "empty duration; write e.g. 500ms, 30s, 5m or 1h"),
        ] {
            assert_eq!(parse(text).unwrap_err().to_string(), message);
        }
        let err = parse("99999999999999999999s").unwrap_err();
        assert_eq!(err.to_string(), "\"99999999999999999999s\" is too large");
        let cause = std::error::Error::source(&err).expect("the integer error");
        assert!(cause.is::<std::num::ParseIntError>(), "{cause:?}");
        assert_eq!(String::from(err.clone()), err.to_string());
    }
}
