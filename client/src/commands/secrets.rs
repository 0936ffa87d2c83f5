//! `mantlectl secrets create|update|get|list|delete|rotate-key`.
//!
//! Field values are read from the command line, a file or stdin and sent to the daemon;
//! nothing here prints them, and no error message quotes them (they name the field or the
//! line instead).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use mantle_client::proto::{RotateEncryptionKeyResponse, Secret};
use mantle_client::timestamp_to_datetime;
use serde::Serialize;

use super::Context;
use crate::cli::{SecretFieldsArgs, SecretsCommand};
use crate::output::{self, Render, Table, key_values, serialize_time, text_cell, time_cell};

/// A secret's metadata as mantlectl prints it (the API never returns values).
#[derive(Debug, Serialize)]
struct SecretView {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    field_names: Vec<String>,
    key_id: String,
    #[serde(serialize_with = "serialize_time")]
    create_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    update_time: Option<DateTime<Utc>>,
}

impl From<Secret> for SecretView {
    fn from(s: Secret) -> Self {
        SecretView {
            create_time: s.create_time.as_ref().and_then(timestamp_to_datetime),
            update_time: s.update_time.as_ref().and_then(timestamp_to_datetime),
            name: s.name,
            kind: s.r#type,
            field_names: s.field_names,
            key_id: s.key_id,
        }
    }
}

/// Several secrets; a JSON/YAML list.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct SecretList(Vec<SecretView>);

fn secret_table<'a>(secrets: impl IntoIterator<Item = &'a SecretView>) -> String {
    let mut table = Table::new(&["NAME", "TYPE", "FIELDS", "KEY ID", "CREATED", "UPDATED"]);
    for s in secrets {
        table.row(vec![
            s.name.clone(),
            s.kind.clone(),
            text_cell(&s.field_names.join(",")),
            text_cell(&s.key_id),
            time_cell(s.create_time),
            time_cell(s.update_time),
        ]);
    }
    table.render()
}

impl Render for SecretView {
    fn table(&self) -> String {
        secret_table([self])
    }
}

impl Render for SecretList {
    fn table(&self) -> String {
        secret_table(&self.0)
    }
}

/// The outcome of a key rotation.
#[derive(Debug, Serialize)]
struct RotationView {
    key_id: String,
    rotated: i64,
    remaining: i64,
}

impl From<RotateEncryptionKeyResponse> for RotationView {
    fn from(r: RotateEncryptionKeyResponse) -> Self {
        RotationView {
            key_id: r.key_id,
            rotated: r.rotated,
            remaining: r.remaining,
        }
    }
}

impl Render for RotationView {
    fn table(&self) -> String {
        key_values(&[
            ("key id", self.key_id.clone()),
            ("re-encrypted", self.rotated.to_string()),
            ("remaining", self.remaining.to_string()),
        ])
    }
}

/// Runs a `secrets` subcommand. Secrets belong to the tenant, so x-mantle-tenant is sent
/// (except for rotate-key, which covers every tenant).
pub async fn run(ctx: &Context, command: SecretsCommand) -> anyhow::Result<()> {
    match command {
        SecretsCommand::Create { name, kind, fields } => {
            let fields = read_fields(&fields, &mut std::io::stdin().lock())?;
            let client = ctx.connect(true).await?;
            let secret = client.create_secret(&name, &kind, &fields).await?;
            output::print(ctx.output, &SecretView::from(secret))
        }
        SecretsCommand::Update { name, fields } => {
            let fields = read_fields(&fields, &mut std::io::stdin().lock())?;
            let client = ctx.connect(true).await?;
            let secret = client.update_secret(&name, &fields).await?;
            output::print(ctx.output, &SecretView::from(secret))
        }
        SecretsCommand::Get { name } => {
            let client = ctx.connect(true).await?;
            let secret = client.get_secret(&name).await?;
            output::print(ctx.output, &SecretView::from(secret))
        }
        SecretsCommand::List => {
            let client = ctx.connect(true).await?;
            let secrets = client.list_secrets().await?;
            output::print(
                ctx.output,
                &SecretList(secrets.into_iter().map(SecretView::from).collect()),
            )
        }
        SecretsCommand::Delete { name } => {
            let client = ctx.connect(true).await?;
            client.delete_secret(&name).await?;
            eprintln!("deleted secret {name}");
            Ok(())
        }
        SecretsCommand::RotateKey { batch_size } => {
            let client = ctx.connect(false).await?;
            let rotation = client
                .rotate_encryption_key(batch_size.unwrap_or(0))
                .await?;
            output::print(ctx.output, &RotationView::from(rotation))
        }
    }
}

/// The fields named by `--field`, `--from-file` or `--from-stdin` (read from `stdin`).
fn read_fields(
    args: &SecretFieldsArgs,
    stdin: &mut dyn Read,
) -> anyhow::Result<BTreeMap<String, String>> {
    if let Some(path) = &args.from_file {
        let text = read_file(path)?;
        return parse_fields_text(&text).with_context(|| path.display().to_string());
    }
    if args.from_stdin {
        let mut bytes = Vec::new();
        stdin
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("standard input: not UTF-8 text"))?;
        return parse_fields_text(&text).context("standard input");
    }
    parse_field_args(&args.field)
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))
}

/// Whether `name` can be a field name (the daemon's rule: 1 to 63 letters, digits, '_'
/// and '-').
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Adds a field, refusing a name given twice. Errors name the field, never the value.
fn insert(fields: &mut BTreeMap<String, String>, key: &str, value: String) -> anyhow::Result<()> {
    if fields.insert(key.to_owned(), value).is_some() {
        bail!("field {key:?} is given more than once");
    }
    Ok(())
}

/// `--field KEY=VALUE` arguments. The value is everything after the first `=`, verbatim.
pub fn parse_field_args(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    for (i, arg) in args.iter().enumerate() {
        let Some((key, value)) = arg.split_once('=') else {
            bail!(
                "--field number {}: expected KEY=VALUE (the value is not shown)",
                i + 1
            );
        };
        if !is_field_name(key) {
            bail!(
                "--field number {}: expected KEY=VALUE with KEY made of letters, digits, '_' and '-'",
                i + 1
            );
        }
        insert(&mut fields, key, value.to_owned())?;
    }
    if fields.is_empty() {
        bail!("no fields given");
    }
    Ok(fields)
}

/// The text of `--from-file`/`--from-stdin`: KEY=VALUE lines when the first line that is
/// not blank or a `#` comment has the form `KEY=…`; otherwise a JSON or YAML object whose
/// values are strings.
pub fn parse_fields_text(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'));
    let Some(first) = first else {
        bail!("no fields: the input is empty");
    };
    let is_key_value = first
        .split_once('=')
        .is_some_and(|(key, _)| is_field_name(key));
    if is_key_value {
        parse_key_value_lines(text)
    } else {
        parse_object(text)
    }
}

fn parse_key_value_lines(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut fields = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim_start();
        if trimmed.trim_end().is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match trimmed.split_once('=') {
            Some((key, value)) if is_field_name(key) => {
                insert(&mut fields, key, value.to_owned())?;
            }
            _ => bail!(
                "line {}: expected KEY=VALUE with KEY made of letters, digits, '_' and '-' (the line is not shown)",
                i + 1
            ),
        }
    }
    Ok(fields)
}

fn parse_object(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let looks_like_json = text.trim_start().starts_with('{');
    let value: serde_json::Value = if looks_like_json {
        // serde_json's messages carry a position, never the text.
        serde_json::from_str(text).map_err(|e| {
            anyhow::anyhow!("not valid JSON (line {}, column {})", e.line(), e.column())
        })?
    } else {
        // serde-saphyr's messages may quote the input: report only the position.
        serde_saphyr::from_str(text).map_err(|e| match e.location() {
            Some(at) => anyhow::anyhow!(
                "not valid YAML (line {}, column {}), nor KEY=VALUE lines",
                at.line(),
                at.column()
            ),
            None => anyhow::anyhow!("not valid YAML, nor KEY=VALUE lines"),
        })?
    };
    let serde_json::Value::Object(map) = value else {
        bail!("expected a JSON or YAML object of field names to string values, or KEY=VALUE lines");
    };
    let mut fields = BTreeMap::new();
    for (key, value) in map {
        match value {
            serde_json::Value::String(s) => insert(&mut fields, &key, s)?,
            other => bail!(
                "field {key:?}: expected a string, found {} (quote it)",
                kind_of(&other)
            ),
        }
    }
    if fields.is_empty() {
        bail!("no fields: the object is empty");
    }
    Ok(fields)
}

/// The JSON kind of a value, for messages that must not show the value itself.
fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputFormat, render};
    use std::path::PathBuf;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn args(field: &[&str], from_file: Option<PathBuf>, from_stdin: bool) -> SecretFieldsArgs {
        SecretFieldsArgs {
            field: field.iter().map(|s| (*s).to_owned()).collect(),
            from_file,
            from_stdin,
        }
    }

    /// Asserts that an error's whole chain does not contain `secret`.
    fn assert_hidden(err: &anyhow::Error, secret: &str) {
        let text = format!("{err:#} {err:?}");
        assert!(!text.contains(secret), "the error shows the value: {text}");
    }

    #[test]
    fn field_args_keep_values_verbatim() {
        let fields = parse_field_args(&[
            "token=abc=def".to_owned(),
            "empty=".to_owned(),
            "spaced= a b ".to_owned(),
        ])
        .unwrap();
        assert_eq!(
            fields,
            map(&[("token", "abc=def"), ("empty", ""), ("spaced", " a b ")])
        );
    }

    #[test]
    fn field_arg_errors_name_the_argument_not_the_value() {
        let err =
            parse_field_args(&["token=ok".to_owned(), "s3cr3t-value".to_owned()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--field number 2: expected KEY=VALUE (the value is not shown)"
        );
        assert_hidden(&err, "s3cr3t-value");
        let err = parse_field_args(&["=s3cr3t-value".to_owned()]).unwrap_err();
        assert_hidden(&err, "s3cr3t-value");
        let err = parse_field_args(&["bad key=s3cr3t-value".to_owned()]).unwrap_err();
        assert!(err.to_string().starts_with("--field number 1:"), "{err}");
        assert_hidden(&err, "s3cr3t-value");
        let err =
            parse_field_args(&["a=s3cr3t-one".to_owned(), "a=s3cr3t-two".to_owned()]).unwrap_err();
        assert_eq!(err.to_string(), "field \"a\" is given more than once");
        assert_hidden(&err, "s3cr3t");
        assert!(parse_field_args(&[]).is_err());
    }

    #[test]
    fn text_as_json_object() {
        let fields =
            parse_fields_text("{\"username\": \"alice\", \"password\": \"p=w: #x\"}\n").unwrap();
        assert_eq!(
            fields,
            map(&[("username", "alice"), ("password", "p=w: #x")])
        );
    }

    #[test]
    fn text_as_yaml_object() {
        let fields = parse_fields_text(
            "# the db\nurl: \"postgres://u:p@db/app\"\nnote: 'a=b'\nmulti: |\n  line1\n  line2\n",
        )
        .unwrap();
        assert_eq!(
            fields,
            map(&[
                ("url", "postgres://u:p@db/app"),
                ("note", "a=b"),
                ("multi", "line1\nline2\n")
            ])
        );
    }

    #[test]
    fn text_as_key_value_lines() {
        let text = "\u{feff}# comment\r\n\r\ntoken=abc=def\r\n  name = x\n";
        // `name = x`: the key before '=' is "name " (with a space), not a field name.
        let err = parse_fields_text(text).unwrap_err();
        assert!(err.to_string().starts_with("line 4:"), "{err}");
        let fields = parse_fields_text("# c\ntoken=abc=def\r\nempty=\n\nother= spaced \n").unwrap();
        assert_eq!(
            fields,
            map(&[("token", "abc=def"), ("empty", ""), ("other", " spaced ")])
        );
    }

    #[test]
    fn text_errors_do_not_show_values() {
        // A scalar where a string belongs: named, with a hint, without the value.
        let err = parse_fields_text("password: 987654321\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "field \"password\": expected a string, found a number (quote it)"
        );
        assert_hidden(&err, "987654321");
        let err = parse_fields_text("{\"token\": true}").unwrap_err();
        assert!(err.to_string().contains("found a boolean"), "{err}");
        // Broken JSON: a position only.
        let err = parse_fields_text("{\"token\": \"s3cr3t-value\",,}").unwrap_err();
        assert!(
            err.to_string().starts_with("not valid JSON (line 1"),
            "{err}"
        );
        assert_hidden(&err, "s3cr3t-value");
        // Broken YAML: a position only, even though the parser could quote the line.
        let err = parse_fields_text("token: \"s3cr3t-value\n  other: [x\n").unwrap_err();
        assert!(err.to_string().starts_with("not valid YAML"), "{err}");
        assert_hidden(&err, "s3cr3t-value");
        // Neither form: a lone word is a YAML string, not an object.
        let err = parse_fields_text("s3cr3t-value\n").unwrap_err();
        assert_hidden(&err, "s3cr3t-value");
        // A KEY=VALUE file with a bad line further down.
        let err = parse_fields_text("token=s3cr3t-value\ns3cr3t-other\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 2: expected KEY=VALUE with KEY made of letters, digits, '_' and '-' (the line is not shown)"
        );
        assert_hidden(&err, "s3cr3t");
        let err = parse_fields_text("a=s3cr3t-1\na=s3cr3t-2\n").unwrap_err();
        assert_hidden(&err, "s3cr3t");
        assert!(parse_fields_text(" \n# only a comment\n").is_err());
        assert!(parse_fields_text("{}").is_err());
        assert!(parse_fields_text("[\"a\"]").is_err());
    }

    #[test]
    fn fields_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.yaml");
        std::fs::write(&path, "username: alice\npassword: \"0123\"\n").unwrap();
        let fields =
            read_fields(&args(&[], Some(path.clone()), false), &mut std::io::empty()).unwrap();
        assert_eq!(fields, map(&[("username", "alice"), ("password", "0123")]));

        std::fs::write(&path, "password: 0123\n").unwrap();
        let err =
            read_fields(&args(&[], Some(path.clone()), false), &mut std::io::empty()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.starts_with(&path.display().to_string()), "{text}");
        assert!(
            text.contains("field \"password\": expected a string"),
            "{text}"
        );

        let missing = dir.path().join("missing.json");
        let err = read_fields(&args(&[], Some(missing), false), &mut std::io::empty()).unwrap_err();
        assert!(format!("{err:#}").starts_with("cannot read "), "{err:#}");

        std::fs::write(&path, [0xff, 0xfe, b'a', b'=', 0x80]).unwrap();
        let err = read_fields(&args(&[], Some(path), false), &mut std::io::empty()).unwrap_err();
        assert!(format!("{err:#}").ends_with("not UTF-8 text"), "{err:#}");
    }

    #[test]
    fn fields_from_stdin() {
        let mut input: &[u8] = b"token=from-stdin\n";
        let fields = read_fields(&args(&[], None, true), &mut input).unwrap();
        assert_eq!(fields, map(&[("token", "from-stdin")]));

        let mut input: &[u8] = b"{\"name\": \"X-Api-Key\", \"value\": \"v\"}";
        let fields = read_fields(&args(&[], None, true), &mut input).unwrap();
        assert_eq!(fields, map(&[("name", "X-Api-Key"), ("value", "v")]));

        let mut input: &[u8] = b"";
        let err = read_fields(&args(&[], None, true), &mut input).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "standard input: no fields: the input is empty"
        );

        let mut input: &[u8] = b"token=x";
        let fields = read_fields(&args(&["k=v"], None, false), &mut input).unwrap();
        assert_eq!(
            fields,
            map(&[("k", "v")]),
            "stdin is read only with --from-stdin"
        );
    }

    fn secret() -> Secret {
        Secret {
            name: "github".into(),
            r#type: "basic".into(),
            field_names: vec!["password".into(), "username".into()],
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            update_time: None,
            key_id: "0a1b2c3d4e5f6071".into(),
        }
    }

    #[test]
    fn secrets_render_metadata_only() {
        let table = render(OutputFormat::Table, &SecretView::from(secret())).unwrap();
        assert_eq!(
            table,
            "NAME    TYPE   FIELDS             KEY ID            CREATED               UPDATED\n\
             github  basic  password,username  0a1b2c3d4e5f6071  2023-11-14T22:13:20Z  -\n"
        );
        let json = render(
            OutputFormat::Json,
            &SecretList(vec![SecretView::from(secret())]),
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!([{
                "name": "github",
                "type": "basic",
                "field_names": ["password", "username"],
                "key_id": "0a1b2c3d4e5f6071",
                "create_time": "2023-11-14T22:13:20Z",
                "update_time": null,
            }])
        );
    }

    #[test]
    fn rotation_renders_counts() {
        let view = RotationView::from(RotateEncryptionKeyResponse {
            key_id: "abc".into(),
            rotated: 3,
            remaining: 0,
        });
        assert_eq!(
            render(OutputFormat::Table, &view).unwrap(),
            "key id:        abc\nre-encrypted:  3\nremaining:     0\n"
        );
    }
}
