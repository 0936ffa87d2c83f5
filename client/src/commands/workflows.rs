//! `mantlectl workflows list|get|versions|delete`.

use std::io::Write;

use chrono::{DateTime, Utc};
use mantle_client::proto::{Definition, DefinitionSummary, DefinitionVersion};
use mantle_client::timestamp_to_datetime;
use serde::Serialize;

use super::Context;
use crate::cli::WorkflowsCommand;
use crate::output::{self, Render, Table, key_values, serialize_time, text_cell, time_cell};

/// How many hex digits of a content hash tables show.
const SHORT_HASH: usize = 12;

/// One stored version of a workflow as mantlectl prints it.
#[derive(Debug, Serialize)]
pub struct DefinitionView {
    pub name: String,
    pub version: i64,
    pub content_hash: String,
    pub description: String,
    /// The YAML as applied; left out where it would only repeat the file (apply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The normalized definition: `spec_json` parsed (its text if it is not JSON, null
    /// if empty).
    pub spec: serde_json::Value,
    #[serde(serialize_with = "serialize_time")]
    pub create_time: Option<DateTime<Utc>>,
}

impl From<Definition> for DefinitionView {
    fn from(d: Definition) -> Self {
        DefinitionView {
            spec: parse_spec(d.spec_json),
            create_time: d.create_time.as_ref().and_then(timestamp_to_datetime),
            name: d.name,
            version: d.version,
            content_hash: d.content_hash,
            description: d.description,
            source: Some(d.source),
        }
    }
}

fn parse_spec(spec_json: String) -> serde_json::Value {
    if spec_json.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&spec_json).unwrap_or(serde_json::Value::String(spec_json))
}

impl DefinitionView {
    /// The number of steps in the spec, when it has a `steps` list.
    fn step_count(&self) -> Option<usize> {
        self.spec.get("steps")?.as_array().map(Vec::len)
    }
}

impl Render for DefinitionView {
    fn table(&self) -> String {
        key_values(&[
            ("name", self.name.clone()),
            ("version", self.version.to_string()),
            ("description", text_cell(first_line(&self.description))),
            ("content hash", self.content_hash.clone()),
            (
                "steps",
                self.step_count()
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ),
            ("created", time_cell(self.create_time)),
        ])
    }
}

/// A workflow in a listing.
#[derive(Debug, Serialize)]
struct SummaryView {
    name: String,
    latest_version: i64,
    description: String,
    #[serde(serialize_with = "serialize_time")]
    create_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    update_time: Option<DateTime<Utc>>,
}

impl From<DefinitionSummary> for SummaryView {
    fn from(s: DefinitionSummary) -> Self {
        SummaryView {
            create_time: s.create_time.as_ref().and_then(timestamp_to_datetime),
            update_time: s.update_time.as_ref().and_then(timestamp_to_datetime),
            name: s.name,
            latest_version: s.latest_version,
            description: s.description,
        }
    }
}

/// Several workflows; a JSON/YAML list.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct SummaryList(Vec<SummaryView>);

impl Render for SummaryList {
    fn table(&self) -> String {
        let mut table = Table::new(&["NAME", "LATEST VERSION", "DESCRIPTION", "UPDATED"]);
        for s in &self.0 {
            table.row(vec![
                s.name.clone(),
                s.latest_version.to_string(),
                text_cell(first_line(&s.description)),
                time_cell(s.update_time),
            ]);
        }
        table.render()
    }
}

/// A version in a listing.
#[derive(Debug, Serialize)]
struct VersionView {
    version: i64,
    content_hash: String,
    #[serde(serialize_with = "serialize_time")]
    create_time: Option<DateTime<Utc>>,
}

impl From<DefinitionVersion> for VersionView {
    fn from(v: DefinitionVersion) -> Self {
        VersionView {
            create_time: v.create_time.as_ref().and_then(timestamp_to_datetime),
            version: v.version,
            content_hash: v.content_hash,
        }
    }
}

/// The versions of a workflow; a JSON/YAML list.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct VersionList(Vec<VersionView>);

impl Render for VersionList {
    fn table(&self) -> String {
        let mut table = Table::new(&["VERSION", "HASH", "CREATED"]);
        for v in &self.0 {
            table.row(vec![
                v.version.to_string(),
                text_cell(&v.content_hash.chars().take(SHORT_HASH).collect::<String>()),
                time_cell(v.create_time),
            ]);
        }
        table.render()
    }
}

/// The first line of a possibly multi-line text, for table cells.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim_end()
}

/// Runs a `workflows` subcommand on the caller's tenant (--tenant is sent as
/// x-mantle-tenant).
pub async fn run(ctx: &Context, command: WorkflowsCommand) -> anyhow::Result<()> {
    let client = ctx.connect(true).await?;
    match command {
        WorkflowsCommand::List => {
            let definitions = client.list_definitions().await?;
            output::print(
                ctx.output,
                &SummaryList(definitions.into_iter().map(SummaryView::from).collect()),
            )
        }
        WorkflowsCommand::Get {
            name,
            version,
            source,
        } => {
            let definition = client.get_definition(&name, version.unwrap_or(0)).await?;
            if source {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(definition.source.as_bytes())?;
                stdout.flush()?;
                return Ok(());
            }
            output::print(ctx.output, &DefinitionView::from(definition))
        }
        WorkflowsCommand::Versions { name } => {
            let versions = client.list_definition_versions(&name).await?;
            output::print(
                ctx.output,
                &VersionList(versions.into_iter().map(VersionView::from).collect()),
            )
        }
        WorkflowsCommand::Delete { name } => {
            client.delete_definition(&name).await?;
            eprintln!("deleted workflow {name}");
            Ok(())
        }
        WorkflowsCommand::Rollback { name, to_version } => {
            let response = client.rollback_definition(&name, to_version).await?;
            output::print(
                ctx.output,
                &crate::commands::definitions::ApplyView::from(response),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputFormat, render};

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn definition() -> Definition {
        Definition {
            name: "hello".into(),
            version: 2,
            content_hash: "0123456789abcdef0123".into(),
            description: "Greets someone.\nSecond line.".into(),
            source: "name: hello\n# comment\n".into(),
            spec_json: r#"{"name":"hello","steps":[{"name":"greet"}]}"#.into(),
            create_time: at(1_700_000_000),
        }
    }

    #[test]
    fn get_table_lists_fields() {
        assert_eq!(
            render(OutputFormat::Table, &DefinitionView::from(definition())).unwrap(),
            "name:          hello\n\
             version:       2\n\
             description:   Greets someone.\n\
             content hash:  0123456789abcdef0123\n\
             steps:         1\n\
             created:       2023-11-14T22:13:20Z\n"
        );
    }

    #[test]
    fn get_json_has_source_and_parsed_spec() {
        let json = render(OutputFormat::Json, &DefinitionView::from(definition())).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["source"], "name: hello\n# comment\n");
        assert_eq!(value["spec"]["steps"][0]["name"], "greet");
        assert_eq!(value["version"], 2);
        assert_eq!(value["create_time"], "2023-11-14T22:13:20Z");

        let mut view = DefinitionView::from(definition());
        view.source = None;
        let json = render(OutputFormat::Json, &view).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(value.get("source").is_none(), "{json}");
    }

    #[test]
    fn spec_that_is_not_json_is_kept_as_text() {
        assert_eq!(parse_spec(String::new()), serde_json::Value::Null);
        assert_eq!(parse_spec("{oops".into()), serde_json::json!("{oops"));
    }

    #[test]
    fn list_table_shows_latest_version_and_first_description_line() {
        let list = SummaryList(vec![
            DefinitionSummary {
                name: "hello".into(),
                latest_version: 3,
                description: "Greets.\nMore.".into(),
                create_time: at(1_600_000_000),
                update_time: at(1_700_000_000),
            }
            .into(),
            DefinitionSummary {
                name: "nightly-report".into(),
                latest_version: 1,
                ..Default::default()
            }
            .into(),
        ]);
        assert_eq!(
            render(OutputFormat::Table, &list).unwrap(),
            "NAME            LATEST VERSION  DESCRIPTION  UPDATED\n\
             hello           3               Greets.      2023-11-14T22:13:20Z\n\
             nightly-report  1               -            -\n"
        );
    }

    #[test]
    fn versions_table_shortens_hashes() {
        let list = VersionList(vec![
            DefinitionVersion {
                version: 2,
                content_hash: "ffffffffffffffffffff".into(),
                create_time: at(1_700_000_000),
            }
            .into(),
            DefinitionVersion {
                version: 1,
                content_hash: "abc".into(),
                create_time: None,
            }
            .into(),
        ]);
        assert_eq!(
            render(OutputFormat::Table, &list).unwrap(),
            "VERSION  HASH          CREATED\n\
             2        ffffffffffff  2023-11-14T22:13:20Z\n\
             1        abc           -\n"
        );
        let json = render(OutputFormat::Json, &list).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value[0]["content_hash"], "ffffffffffffffffffff");
    }
}
