//! `mantlectl actions list|describe`.

use anyhow::bail;
use mantle_client::proto::ActionInfo;
use serde::Serialize;
use serde_json::Value;

use super::Context;
use crate::cli::ActionsCommand;
use crate::output::{self, Render, Table};

/// An action as mantlectl prints it; the schema parsed, so JSON output nests it.
#[derive(Debug, Serialize)]
struct ActionView {
    name: String,
    description: String,
    /// `pure`, `effect` or `timer`.
    kind: String,
    credential_types: Vec<String>,
    params_schema: Value,
    output_schema: Value,
}

impl From<ActionInfo> for ActionView {
    fn from(a: ActionInfo) -> Self {
        ActionView {
            params_schema: serde_json::from_str(&a.params_schema_json).unwrap_or(Value::Null),
            output_schema: serde_json::from_str(&a.output_schema_json).unwrap_or(Value::Null),
            name: a.name,
            description: a.description,
            kind: a.kind,
            credential_types: a.credential_types,
        }
    }
}

impl ActionView {
    /// `(name, type, required, description)` of each param, as the schema declares them.
    fn params(&self) -> Vec<(String, String, bool, String)> {
        let required: Vec<&str> = self.params_schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(properties) = self.params_schema["properties"].as_object() else {
            return Vec::new();
        };
        properties
            .iter()
            .map(|(name, schema)| {
                (
                    name.clone(),
                    type_text(schema),
                    required.contains(&name.as_str()),
                    schema["description"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect()
    }

    /// The output's fields, as `{status, headers, body, url}`; `any` for an open output.
    fn output(&self) -> String {
        match self.output_schema["properties"].as_object() {
            Some(fields) if !fields.is_empty() => {
                let names: Vec<&str> = fields.keys().map(String::as_str).collect();
                format!("{{{}}}", names.join(", "))
            }
            _ if self.output_schema["additionalProperties"] == Value::Bool(false) => {
                "{}".to_owned()
            }
            _ => "any fields".to_owned(),
        }
    }

    fn credentials(&self) -> String {
        if self.credential_types.is_empty() {
            "-".to_owned()
        } else {
            self.credential_types.join(", ")
        }
    }
}

/// A param's type in words: `string`, `one of GET, POST`, `duration`, `status list`, `any`.
fn type_text(schema: &Value) -> String {
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
        return format!("one of {}", values.join(", "));
    }
    match (schema["type"].as_str(), schema["format"].as_str()) {
        (_, Some("duration")) => "duration".to_owned(),
        (_, Some("http-statuses")) => "status list".to_owned(),
        (Some(t), _) => t.to_owned(),
        (None, _) => "any".to_owned(),
    }
}

/// Every action: one row each.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct ActionList(Vec<ActionView>);

impl Render for ActionList {
    fn table(&self) -> String {
        let mut table = Table::new(&["NAME", "KIND", "CREDENTIALS", "DESCRIPTION"]);
        for a in &self.0 {
            table.row(vec![
                a.name.clone(),
                a.kind.clone(),
                a.credentials(),
                a.description.clone(),
            ]);
        }
        table.render()
    }
}

impl Render for ActionView {
    /// The description, the credentials, then a table of params.
    fn table(&self) -> String {
        let mut out = format!(
            "{} ({}): {}\ncredentials: {}\noutput: {}\n",
            self.name,
            self.kind,
            self.description,
            self.credentials(),
            self.output()
        );
        let params = self.params();
        if params.is_empty() {
            let open = self.params_schema["additionalProperties"] == Value::Bool(true);
            out.push_str(if open {
                "params: any (each becomes an output field)\n"
            } else {
                "params: none\n"
            });
            return out;
        }
        let mut table = Table::new(&["PARAM", "TYPE", "REQUIRED", "DESCRIPTION"]);
        for (name, ty, required, description) in params {
            table.row(vec![
                name,
                ty,
                if required { "yes" } else { "no" }.to_owned(),
                description,
            ]);
        }
        out.push_str(&table.render());
        out
    }
}

/// `mantlectl actions …`.
pub async fn run(ctx: &Context, command: ActionsCommand) -> anyhow::Result<()> {
    let client = ctx.connect(false).await?;
    let actions: Vec<ActionView> = client
        .list_actions()
        .await?
        .into_iter()
        .map(ActionView::from)
        .collect();
    match command {
        ActionsCommand::List => output::print(ctx.output, &ActionList(actions)),
        ActionsCommand::Describe { name } => {
            let names: Vec<String> = actions.iter().map(|a| a.name.clone()).collect();
            let Some(action) = actions.into_iter().find(|a| a.name == name) else {
                bail!("no action {name:?}; the actions are {}", names.join(", "));
            };
            output::print(ctx.output, &action)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> ActionView {
        ActionView {
            name: "http/request".into(),
            description: "Sends an HTTP request.".into(),
            kind: "effect".into(),
            credential_types: vec!["bearer".into(), "basic".into()],
            params_schema: serde_json::json!({
                "type": "object",
                "properties": {
                    "url": {"type": "string", "description": "absolute URL"},
                    "method": {"type": "string", "enum": ["GET", "POST"], "description": "verb"},
                    "timeout": {"type": "string", "format": "duration", "description": "limit"},
                    "ok_status": {"type": "array", "format": "http-statuses", "description": "ok"},
                    "tags": {"type": "array", "items": {"type": "string"}, "description": "t"},
                    "json": {"description": "a body"},
                },
                "required": ["url"],
            }),
            output_schema: serde_json::json!({
                "type": "object",
                "properties": {"status": {"type": "integer"}, "body": true},
            }),
        }
    }

    #[test]
    fn describe_prints_params_with_types_in_words() {
        let text = http().table();
        assert!(
            text.starts_with(
                "http/request (effect): Sends an HTTP request.\ncredentials: bearer, basic\n\
                 output: {body, status}\n"
            ),
            "{text}"
        );
        let row = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} in {text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(row("url"), "url string yes absolute URL");
        assert_eq!(row("method"), "method one of GET, POST no verb");
        assert_eq!(row("timeout"), "timeout duration no limit");
        assert_eq!(row("ok_status"), "ok_status status list no ok");
        assert_eq!(row("json"), "json any no a body");
        assert_eq!(row("tags"), "tags array no t");
    }
}
