//! `mantlectl keys create|list|revoke`.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use mantle_client::proto::ApiKey;
use mantle_client::{NewApiKey, timestamp_to_datetime};
use serde::Serialize;

use super::Context;
use crate::cli::KeysCommand;
use crate::output::{self, OutputFormat, Render, Table, serialize_time, text_cell, time_cell};

/// An API key as mantlectl prints it (never with its token).
#[derive(Debug, Serialize)]
struct ApiKeyView {
    id: String,
    /// Empty for operator keys.
    tenant: String,
    name: String,
    scopes: Vec<String>,
    #[serde(serialize_with = "serialize_time")]
    create_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    expire_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    revoke_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    last_use_time: Option<DateTime<Utc>>,
}

impl From<ApiKey> for ApiKeyView {
    fn from(k: ApiKey) -> Self {
        let time = |t: &Option<prost_types::Timestamp>| t.as_ref().and_then(timestamp_to_datetime);
        ApiKeyView {
            create_time: time(&k.create_time),
            expire_time: time(&k.expire_time),
            revoke_time: time(&k.revoke_time),
            last_use_time: time(&k.last_use_time),
            id: k.id,
            tenant: k.tenant,
            name: k.name,
            scopes: k.scopes,
        }
    }
}

impl ApiKeyView {
    /// `revoked`, `expired` or `active` at `now`.
    fn status(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoke_time.is_some() {
            "revoked"
        } else if self.expire_time.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

/// Several keys; a JSON/YAML list.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct ApiKeyList(Vec<ApiKeyView>);

/// A new key and its token, which the server returns only once.
#[derive(Debug, Serialize)]
struct CreatedKeyView {
    #[serde(flatten)]
    key: ApiKeyView,
    token: String,
}

fn key_table<'a>(keys: impl IntoIterator<Item = &'a ApiKeyView>, now: DateTime<Utc>) -> String {
    let mut table = Table::new(&[
        "ID",
        "TENANT",
        "NAME",
        "SCOPES",
        "STATUS",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ]);
    for k in keys {
        table.row(vec![
            k.id.clone(),
            tenant_cell(&k.tenant),
            text_cell(&k.name),
            text_cell(&k.scopes.join(",")),
            k.status(now).to_owned(),
            time_cell(k.create_time),
            k.expire_time
                .map(output::rfc3339_seconds)
                .unwrap_or_else(|| "never".to_owned()),
            time_cell(k.last_use_time),
        ]);
    }
    table.render()
}

fn tenant_cell(tenant: &str) -> String {
    if tenant.is_empty() {
        "(operator)".to_owned()
    } else {
        tenant.to_owned()
    }
}

impl Render for ApiKeyView {
    fn table(&self) -> String {
        key_table([self], Utc::now())
    }
}

impl Render for ApiKeyList {
    fn table(&self) -> String {
        key_table(&self.0, Utc::now())
    }
}

impl Render for CreatedKeyView {
    /// Only the token, so `TOKEN=$(mantlectl keys create …)` works; the rest goes to stderr.
    fn table(&self) -> String {
        format!("{}\n", self.token)
    }
}

/// Runs a `keys` subcommand. `tenant` is the tenant whose keys are managed (from
/// --tenant / MANTLE_TENANT); `None` or `--operator` means operator keys.
pub async fn run(ctx: &Context, command: KeysCommand) -> anyhow::Result<()> {
    let client = ctx.connect(false).await?;
    let key_tenant = |operator: bool| {
        if operator {
            String::new()
        } else {
            ctx.tenant.clone().unwrap_or_default()
        }
    };
    match command {
        KeysCommand::Create(args) => {
            let expire_time = match args.expires_in {
                Some(lifetime) => {
                    let lifetime =
                        chrono::Duration::from_std(lifetime).context("--expires-in is too long")?;
                    Some(
                        Utc::now()
                            .checked_add_signed(lifetime)
                            .context("--expires-in is too long")?,
                    )
                }
                None => None,
            };
            let request = NewApiKey {
                tenant: key_tenant(args.operator),
                name: args.name.unwrap_or_default(),
                scopes: args.scopes,
                expire_time,
            };
            let created = client.create_api_key(&request).await?;
            let view = CreatedKeyView {
                key: created.api_key.unwrap_or_default().into(),
                token: created.token,
            };
            if ctx.output == OutputFormat::Table {
                eprintln!("{}", summary(&view.key));
            }
            output::print(ctx.output, &view)?;
            eprintln!("note: store this token now; it will not be shown again");
            Ok(())
        }
        KeysCommand::List(args) => {
            let keys = client
                .list_api_keys(&key_tenant(args.operator), args.show_revoked)
                .await?;
            output::print(
                ctx.output,
                &ApiKeyList(keys.into_iter().map(ApiKeyView::from).collect()),
            )
        }
        KeysCommand::Revoke { id } => {
            let key = client.revoke_api_key(&id).await?;
            output::print(ctx.output, &ApiKeyView::from(key))
        }
    }
}

/// One line describing a new key, for stderr.
fn summary(key: &ApiKeyView) -> String {
    let owner = if key.tenant.is_empty() {
        "operator key".to_owned()
    } else {
        format!("key for tenant {}", key.tenant)
    };
    let expires = key
        .expire_time
        .map(output::rfc3339_seconds)
        .unwrap_or_else(|| "never".to_owned());
    format!(
        "created {owner} {} (scopes: {}; expires: {expires})",
        key.id,
        key.scopes.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::render;

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn key(tenant: &str) -> ApiKey {
        ApiKey {
            id: "0123456789abcdef".into(),
            tenant: tenant.into(),
            name: "ci".into(),
            scopes: vec!["executions:read".into(), "executions:write".into()],
            create_time: at(1_700_000_000),
            expire_time: None,
            revoke_time: None,
            last_use_time: None,
        }
    }

    #[test]
    fn status_reflects_revocation_and_expiry() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut k = key("acme");
        assert_eq!(ApiKeyView::from(k.clone()).status(now), "active");
        k.expire_time = at(1_800_000_000);
        assert_eq!(ApiKeyView::from(k.clone()).status(now), "expired");
        k.expire_time = at(1_900_000_000);
        assert_eq!(ApiKeyView::from(k.clone()).status(now), "active");
        k.revoke_time = at(1_750_000_000);
        assert_eq!(ApiKeyView::from(k).status(now), "revoked");
    }

    #[test]
    fn table_marks_operator_keys_and_never_expiring_keys() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let keys = [ApiKeyView::from(key(""))];
        assert_eq!(
            key_table(&keys, now),
            "ID                TENANT      NAME  SCOPES                            STATUS  \
             CREATED               EXPIRES  LAST USED\n\
             0123456789abcdef  (operator)  ci    executions:read,executions:write  active  \
             2023-11-14T22:13:20Z  never    -\n"
        );
    }

    #[test]
    fn created_key_json_has_key_fields_and_token() {
        let view = CreatedKeyView {
            key: key("acme").into(),
            token: "mntl_0123456789abcdef_secret".into(),
        };
        let json = render(OutputFormat::Json, &view).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["id"], "0123456789abcdef");
        assert_eq!(value["tenant"], "acme");
        assert_eq!(value["token"], "mntl_0123456789abcdef_secret");
        assert_eq!(value["scopes"][1], "executions:write");
        assert!(value["expire_time"].is_null());
        let yaml = render(OutputFormat::Yaml, &view).unwrap();
        assert!(
            yaml.contains("token: mntl_0123456789abcdef_secret"),
            "{yaml}"
        );
        assert!(yaml.contains("id: 0123456789abcdef"), "{yaml}");
    }

    #[test]
    fn created_key_table_is_only_the_token() {
        let view = CreatedKeyView {
            key: key("acme").into(),
            token: "mntl_x_y".into(),
        };
        assert_eq!(render(OutputFormat::Table, &view).unwrap(), "mntl_x_y\n");
    }

    #[test]
    fn summary_names_owner_scopes_and_expiry() {
        assert_eq!(
            summary(&key("").into()),
            "created operator key 0123456789abcdef (scopes: executions:read,executions:write; \
             expires: never)"
        );
        let mut k = key("acme");
        k.expire_time = at(1_700_000_000);
        assert_eq!(
            summary(&k.into()),
            "created key for tenant acme 0123456789abcdef (scopes: \
             executions:read,executions:write; expires: 2023-11-14T22:13:20Z)"
        );
    }
}
