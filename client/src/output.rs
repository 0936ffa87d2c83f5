//! Rendering command results as aligned tables, JSON or YAML.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

/// `-o/--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns with a header.
    Table,
    /// Pretty-printed JSON; streams of events (`logs`) print one compact JSON object per
    /// line (NDJSON).
    Json,
    /// YAML; streams of events print one YAML document per event.
    Yaml,
}

/// Something a command prints: serializable for JSON/YAML, plus its table form.
pub trait Render: Serialize {
    /// The table form, ending with a newline (or empty).
    fn table(&self) -> String;
}

/// Writes `value` to stdout in `format`.
pub fn print<T: Render>(format: OutputFormat, value: &T) -> anyhow::Result<()> {
    let text = render(format, value)?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// `value` in `format`, ending with a newline.
pub fn render<T: Render>(format: OutputFormat, value: &T) -> anyhow::Result<String> {
    Ok(match format {
        OutputFormat::Table => value.table(),
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(value)?;
            text.push('\n');
            text
        }
        OutputFormat::Yaml => {
            let text = serde_saphyr::to_string(value)?;
            if text.ends_with('\n') {
                text
            } else {
                text + "\n"
            }
        }
    })
}

/// Columns separated by two spaces, each as wide as its widest cell, with a header row.
/// The last column is not padded, so lines carry no trailing spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row: one cell per column (checked in debug builds; missing cells
    /// render empty in release builds).
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len(), "row width");
        self.rows.push(cells);
    }

    /// The rendered table, one line per row, each ending with a newline.
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                let cell = sanitize(cell);
                line.push_str(&cell);
                if i + 1 < columns {
                    let pad = width - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `label: value` lines with the values aligned, for single objects.
pub fn key_values(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count() + 1)
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let label = format!("{key}:");
        let pad = width - label.chars().count() + 2;
        let line = format!("{label}{}{}", " ".repeat(pad), sanitize(value));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Control characters (newlines, tabs, escapes) would break alignment or the terminal.
fn sanitize(cell: &str) -> String {
    cell.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// RFC 3339 in UTC with a `Z` suffix and as many fractional digits as needed.
pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// RFC 3339 in UTC to the second, for tables.
pub fn rfc3339_seconds(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A table cell for an optional time: the time to the second, or `-`.
pub fn time_cell(time: Option<DateTime<Utc>>) -> String {
    time.map(rfc3339_seconds).unwrap_or_else(|| "-".to_owned())
}

/// A table cell for text that may be empty: the text, or `-`.
pub fn text_cell(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// A duration for tables: `350ms`, `12.3s`, `2m5s`, `1h0m12s`; negative spans count as 0.
pub fn format_duration(span: chrono::TimeDelta) -> String {
    let millis = span.num_milliseconds().max(0);
    if millis < 1_000 {
        return format!("{millis}ms");
    }
    if millis < 60_000 {
        return format!("{}.{}s", millis / 1_000, (millis % 1_000) / 100);
    }
    let seconds = millis / 1_000;
    let (hours, minutes, seconds) = (seconds / 3_600, (seconds % 3_600) / 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else {
        format!("{minutes}m{seconds}s")
    }
}

/// A table cell for the time between two optional instants: the duration, or `-` when
/// either is missing.
pub fn duration_cell(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> String {
    match (start, end) {
        (Some(start), Some(end)) => format_duration(end - start),
        _ => "-".to_owned(),
    }
}

/// Serializes an optional time as RFC 3339 (or null).
pub fn serialize_time<S: serde::Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(t) => serializer.serialize_str(&rfc3339(*t)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_under_the_header() {
        let mut t = Table::new(&["NAME", "DISPLAY NAME", "ID"]);
        t.row(vec!["default".into(), "-".into(), "1".into()]);
        t.row(vec!["a".into(), "Acme Incorporated".into(), "22".into()]);
        assert_eq!(
            t.render(),
            "NAME     DISPLAY NAME       ID\n\
             default  -                  1\n\
             a        Acme Incorporated  22\n"
        );
    }

    #[test]
    fn table_has_no_trailing_spaces_and_header_only_when_empty() {
        let mut t = Table::new(&["A", "B"]);
        assert_eq!(t.render(), "A  B\n");
        t.row(vec!["long value".into(), "".into()]);
        for line in t.render().lines() {
            assert_eq!(line, line.trim_end());
        }
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut t = Table::new(&["N", "X"]);
        t.row(vec!["ééé".into(), "1".into()]);
        t.row(vec!["abc".into(), "2".into()]);
        assert_eq!(t.render(), "N    X\nééé  1\nabc  2\n");
    }

    #[test]
    fn table_replaces_control_characters() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x\ny".into(), "z".into()]);
        assert_eq!(t.render(), "A    B\nx y  z\n");
    }

    #[test]
    fn key_values_align_values() {
        assert_eq!(
            key_values(&[("tenant", "acme".into()), ("key id", "abc".into())]),
            "tenant:  acme\nkey id:  abc\n"
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let t = DateTime::from_timestamp(1_700_000_000, 123_000_000).unwrap();
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_seconds(t), "2023-11-14T22:13:20Z");
        assert_eq!(time_cell(None), "-");
        assert_eq!(text_cell(""), "-");
        assert_eq!(text_cell("x"), "x");
    }

    #[test]
    fn durations_are_short() {
        let ms = chrono::TimeDelta::milliseconds;
        assert_eq!(format_duration(ms(0)), "0ms");
        assert_eq!(format_duration(ms(350)), "350ms");
        assert_eq!(format_duration(ms(12_345)), "12.3s");
        assert_eq!(format_duration(ms(125_000)), "2m5s");
        assert_eq!(format_duration(ms(3_612_000)), "1h0m12s");
        assert_eq!(format_duration(ms(-5)), "0ms");
        let t = DateTime::from_timestamp(1_700_000_000, 0);
        let later = DateTime::from_timestamp(1_700_000_001, 500_000_000);
        assert_eq!(duration_cell(t, later), "1.5s");
        assert_eq!(duration_cell(t, None), "-");
    }

    #[derive(Serialize)]
    struct Sample {
        name: String,
        #[serde(serialize_with = "serialize_time")]
        when: Option<DateTime<Utc>>,
    }

    impl Render for Sample {
        fn table(&self) -> String {
            key_values(&[("name", self.name.clone())])
        }
    }

    #[test]
    fn renders_json_yaml_and_table() {
        let s = Sample {
            name: "acme".into(),
            when: DateTime::from_timestamp(0, 0),
        };
        assert_eq!(
            render(OutputFormat::Json, &s).unwrap(),
            "{\n  \"name\": \"acme\",\n  \"when\": \"1970-01-01T00:00:00Z\"\n}\n"
        );
        let yaml = render(OutputFormat::Yaml, &s).unwrap();
        assert!(yaml.contains("name: acme\n"), "{yaml}");
        assert!(yaml.contains("1970-01-01T00:00:00Z"), "{yaml}");
        assert!(yaml.ends_with('\n'));
        assert_eq!(render(OutputFormat::Table, &s).unwrap(), "name:  acme\n");
    }
}
