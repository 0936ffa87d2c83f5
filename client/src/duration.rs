//! Human durations such as `30d`, `12h` or `1d12h`: API key lifetimes, wait timeouts.

use std::time::Duration;

use crate::Error;

/// Parses a duration written as one or more `<number><unit>` parts, with units `s`
/// (seconds), `m` (minutes), `h` (hours), `d` (days) and `w` (weeks): `90s`, `30d`,
/// `1d12h`. The result must be greater than zero.
pub fn parse_duration(input: &str) -> Result<Duration, Error> {
    let invalid = |reason: &str| Error::InvalidDuration {
        input: input.to_owned(),
        reason: reason.to_owned(),
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(invalid("must not be empty"));
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(invalid(
                "expected a number followed by a unit (s, m, h, d, w), for example 30d",
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| invalid("number is too large"))?;
        rest = &rest[digits..];
        let unit = rest
            .chars()
            .next()
            .ok_or_else(|| invalid("missing unit after number (use s, m, h, d or w)"))?;
        let seconds_per_unit: u64 = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(invalid("unknown unit (use s, m, h, d or w)")),
        };
        rest = &rest[unit.len_utf8()..];
        total = value
            .checked_mul(seconds_per_unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(|| invalid("duration is too long"))?;
    }
    if total == 0 {
        return Err(invalid("must be greater than zero"));
    }
    Ok(Duration::from_secs(total))
}

/// Writes a duration in whole seconds the way [`parse_duration`] reads it: `45s`, `1m5s`,
/// `2h`, `1d12h`; less than a second is `0s`.
pub fn format_duration(duration: Duration) -> String {
    let mut rest = duration.as_secs();
    if rest == 0 {
        return "0s".to_owned();
    }
    let mut text = String::new();
    for (unit, seconds) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        if rest >= seconds {
            text.push_str(&format!("{}{unit}", rest / seconds));
            rest %= seconds;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_format_as_they_parse() {
        assert_eq!(format_duration(Duration::from_millis(400)), "0s");
        assert_eq!(format_duration(Duration::from_secs(45)), "45s");
        assert_eq!(format_duration(Duration::from_secs(65)), "1m5s");
        assert_eq!(format_duration(Duration::from_secs(7_200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(129_600)), "1d12h");
        for text in ["45s", "1m5s", "2h", "1d12h", "3w"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), parsed);
        }
    }

    fn secs(s: &str) -> u64 {
        parse_duration(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .as_secs()
    }

    fn reason(s: &str) -> String {
        match parse_duration(s) {
            Ok(d) => panic!("{s} parsed as {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_single_units() {
        assert_eq!(secs("45s"), 45);
        assert_eq!(secs("90m"), 5_400);
        assert_eq!(secs("12h"), 43_200);
        assert_eq!(secs("30d"), 2_592_000);
        assert_eq!(secs("2w"), 1_209_600);
        assert_eq!(secs(" 1h "), 3_600);
    }

    #[test]
    fn parses_compound_durations() {
        assert_eq!(secs("1d12h"), 129_600);
        assert_eq!(secs("1h30m15s"), 5_415);
    }

    #[test]
    fn rejects_invalid_durations() {
        assert!(reason("").contains("must not be empty"));
        assert!(reason("30").contains("missing unit"));
        assert!(reason("d").contains("expected a number"));
        assert!(reason("10y").contains("unknown unit"));
        assert!(reason("1h 30m").contains("expected a number"));
        assert!(reason("-1h").contains("expected a number"));
        assert!(reason("0s").contains("greater than zero"));
        assert!(reason("99999999999999999999s").contains("too large"));
        assert!(reason("18446744073709551615w").contains("too long"));
    }

    #[test]
    fn error_names_the_input() {
        assert_eq!(
            reason("5x"),
            "invalid duration \"5x\": unknown unit (use s, m, h, d or w)"
        );
    }
}
