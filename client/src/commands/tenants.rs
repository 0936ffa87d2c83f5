//! `mantlectl tenants create|get|list|update|delete`.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use mantle_client::proto::Tenant;
use mantle_client::timestamp_to_datetime;
use serde::Serialize;

use super::Context;
use crate::cli::{TenantLimits, TenantsCommand};
use crate::output::{self, Render, Table, serialize_time, text_cell, time_cell};

/// A tenant as mantlectl prints it.
#[derive(Debug, Serialize)]
struct TenantView {
    name: String,
    id: String,
    display_name: String,
    #[serde(serialize_with = "serialize_time")]
    create_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    update_time: Option<DateTime<Utc>>,
    /// 0 and empty: no limit of the tenant's own.
    max_steps_per_workflow: i32,
    max_runtime_minutes: i32,
    allowed_domains: Vec<String>,
    rate_limit_per_minute: i32,
    max_concurrent_executions: i32,
    max_queued_executions: i32,
    webhook_url: String,
    webhook_secret: String,
    /// US dollars; 0: no cap.
    max_cost_usd_per_execution: f64,
    max_tokens_per_day: i64,
    /// Provider → secret name.
    default_credentials: BTreeMap<String, String>,
    /// How long finished executions are kept, in seconds; 0: the installation's default.
    retention_seconds: i64,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        let settings = t.settings.clone().unwrap_or_default();
        TenantView {
            max_steps_per_workflow: settings.max_steps_per_workflow,
            max_runtime_minutes: settings.max_runtime_minutes,
            allowed_domains: settings.allowed_domains,
            rate_limit_per_minute: settings.rate_limit_per_minute,
            max_concurrent_executions: settings.max_concurrent_executions,
            max_queued_executions: settings.max_queued_executions,
            webhook_url: settings.webhook_url,
            webhook_secret: settings.webhook_secret,
            max_cost_usd_per_execution: settings.max_cost_usd_per_execution,
            max_tokens_per_day: settings.max_tokens_per_day,
            default_credentials: settings.default_credentials.into_iter().collect(),
            retention_seconds: settings.retention.map_or(0, |d| d.seconds),
            create_time: t.create_time.as_ref().and_then(timestamp_to_datetime),
            update_time: t.update_time.as_ref().and_then(timestamp_to_datetime),
            name: t.name,
            id: t.id,
            display_name: t.display_name,
        }
    }
}

/// Several tenants; a JSON/YAML list.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct TenantList(Vec<TenantView>);

fn tenant_table<'a>(tenants: impl IntoIterator<Item = &'a TenantView>) -> String {
    let mut table = Table::new(&["NAME", "DISPLAY NAME", "ID", "LIMITS", "CREATED", "UPDATED"]);
    for t in tenants {
        let mut limits = Vec::new();
        if t.max_steps_per_workflow > 0 {
            limits.push(format!("steps≤{}", t.max_steps_per_workflow));
        }
        if t.max_runtime_minutes > 0 {
            limits.push(format!("runtime≤{}m", t.max_runtime_minutes));
        }
        if t.max_concurrent_executions > 0 {
            limits.push(format!("concurrent≤{}", t.max_concurrent_executions));
        }
        if t.rate_limit_per_minute > 0 {
            limits.push(format!("rate≤{}/min", t.rate_limit_per_minute));
        }
        if !t.allowed_domains.is_empty() {
            limits.push(format!("domains={}", t.allowed_domains.join(",")));
        }
        if t.max_cost_usd_per_execution > 0.0 {
            limits.push(format!("cost≤${}/execution", t.max_cost_usd_per_execution));
        }
        if t.max_tokens_per_day > 0 {
            limits.push(format!("tokens≤{}/day", t.max_tokens_per_day));
        }
        if t.retention_seconds > 0 {
            limits.push(format!(
                "retention={}",
                mantle_client::format_duration(std::time::Duration::from_secs(
                    t.retention_seconds.unsigned_abs()
                ))
            ));
        }
        if !t.default_credentials.is_empty() {
            let credentials: Vec<String> = t
                .default_credentials
                .iter()
                .map(|(provider, secret)| format!("{provider}:{secret}"))
                .collect();
            limits.push(format!("credentials={}", credentials.join(",")));
        }
        table.row(vec![
            t.name.clone(),
            text_cell(&t.display_name),
            t.id.clone(),
            text_cell(&limits.join(" ")),
            time_cell(t.create_time),
            time_cell(t.update_time),
        ]);
    }
    table.render()
}

impl Render for TenantView {
    fn table(&self) -> String {
        tenant_table([self])
    }
}

impl Render for TenantList {
    fn table(&self) -> String {
        tenant_table(&self.0)
    }
}

/// The settings the flags give; flags not given are 0 or empty (see the update mask). The
/// default credentials are `current` (the tenant's, on update) changed by the flags.
fn settings_of(
    limits: &TenantLimits,
    current: HashMap<String, String>,
) -> mantle_client::proto::TenantSettings {
    mantle_client::proto::TenantSettings {
        max_steps_per_workflow: limits.max_steps_per_workflow.unwrap_or(0),
        max_runtime_minutes: limits.max_runtime_minutes.unwrap_or(0),
        allowed_domains: limits.allowed_domains.clone(),
        rate_limit_per_minute: limits.rate_limit_per_minute.unwrap_or(0),
        max_concurrent_executions: limits.max_concurrent_executions.unwrap_or(0),
        max_queued_executions: limits.max_queued_executions.unwrap_or(0),
        webhook_url: limits.webhook_url.clone().unwrap_or_default(),
        webhook_secret: limits.webhook_secret.clone().unwrap_or_default(),
        max_cost_usd_per_execution: limits.max_cost_usd_per_execution.unwrap_or(0.0),
        max_tokens_per_day: limits.max_tokens_per_day.unwrap_or(0),
        default_credentials: with_credentials(current, &limits.default_credentials),
        retention: limits.retention.map(|d| prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: 0,
        }),
    }
}

/// `credentials` changed by `--default-credential PROVIDER=SECRET` flags: each sets its
/// provider's secret, or removes it when SECRET is empty.
fn with_credentials(
    mut credentials: HashMap<String, String>,
    changes: &[(String, String)],
) -> HashMap<String, String> {
    for (provider, secret) in changes {
        if secret.is_empty() {
            credentials.remove(provider);
        } else {
            credentials.insert(provider.clone(), secret.clone());
        }
    }
    credentials
}

/// Runs a `tenants` subcommand. The tenant is named in the request, so no
/// x-mantle-tenant metadata is sent.
pub async fn run(ctx: &Context, command: TenantsCommand) -> anyhow::Result<()> {
    let client = ctx.connect(false).await?;
    match command {
        TenantsCommand::Create {
            name,
            display_name,
            limits,
        } => {
            let settings = settings_of(&limits, HashMap::new());
            let tenant = client
                .create_tenant_with_settings(
                    &name,
                    display_name.as_deref().unwrap_or_default(),
                    settings,
                )
                .await?;
            output::print(ctx.output, &TenantView::from(tenant))
        }
        TenantsCommand::Get { name } => {
            let tenant = client.get_tenant(&name).await?;
            output::print(ctx.output, &TenantView::from(tenant))
        }
        TenantsCommand::List => {
            let tenants = client.list_tenants().await?;
            output::print(
                ctx.output,
                &TenantList(tenants.into_iter().map(TenantView::from).collect()),
            )
        }
        TenantsCommand::Update {
            name,
            display_name,
            limits,
            clear_allowed_domains,
            clear_default_credentials,
        } => {
            let mut mask = Vec::new();
            if limits.max_steps_per_workflow.is_some() {
                mask.push("max_steps_per_workflow".to_owned());
            }
            if limits.max_runtime_minutes.is_some() {
                mask.push("max_runtime_minutes".to_owned());
            }
            if limits.rate_limit_per_minute.is_some() {
                mask.push("rate_limit_per_minute".to_owned());
            }
            if limits.max_concurrent_executions.is_some() {
                mask.push("max_concurrent_executions".to_owned());
            }
            if limits.max_queued_executions.is_some() {
                mask.push("max_queued_executions".to_owned());
            }
            if limits.webhook_url.is_some() {
                mask.push("webhook_url".to_owned());
            }
            if limits.webhook_secret.is_some() {
                mask.push("webhook_secret".to_owned());
            }
            if !limits.allowed_domains.is_empty() || clear_allowed_domains {
                mask.push("allowed_domains".to_owned());
            }
            if limits.max_cost_usd_per_execution.is_some() {
                mask.push("max_cost_usd_per_execution".to_owned());
            }
            if limits.max_tokens_per_day.is_some() {
                mask.push("max_tokens_per_day".to_owned());
            }
            if limits.retention.is_some() {
                mask.push("retention".to_owned());
            }
            // The map is replaced whole: the flags change the tenant's current one. (Two
            // updates of its credentials at once may lose one of them.)
            let current = if limits.default_credentials.is_empty() {
                HashMap::new()
            } else {
                let tenant = client.get_tenant(&name).await?;
                tenant.settings.unwrap_or_default().default_credentials
            };
            if !limits.default_credentials.is_empty() || clear_default_credentials {
                mask.push("default_credentials".to_owned());
            }
            let settings = settings_of(&limits, current);
            let tenant = client
                .update_tenant_settings(&name, display_name.as_deref(), settings, mask)
                .await?;
            output::print(ctx.output, &TenantView::from(tenant))
        }
        TenantsCommand::Delete { name } => {
            client.delete_tenant(&name).await?;
            eprintln!("deleted tenant {name}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputFormat, render};

    fn tenant(name: &str, display_name: &str) -> Tenant {
        Tenant {
            name: name.into(),
            id: "0196-ab".into(),
            display_name: display_name.into(),
            settings: None,
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            update_time: None,
        }
    }

    #[test]
    fn list_renders_as_table() {
        let mut limited = tenant("acme", "Acme Inc.");
        limited.settings = Some(mantle_client::proto::TenantSettings {
            max_steps_per_workflow: 10,
            rate_limit_per_minute: 60,
            allowed_domains: vec!["*.acme.example".into()],
            ..Default::default()
        });
        let list = TenantList(vec![limited.into(), tenant("default", "").into()]);
        assert_eq!(
            render(OutputFormat::Table, &list).unwrap(),
            "NAME     DISPLAY NAME  ID       LIMITS                                       CREATED               UPDATED\n\
             acme     Acme Inc.     0196-ab  steps≤10 rate≤60/min domains=*.acme.example  2023-11-14T22:13:20Z  -\n\
             default  -             0196-ab  -                                            2023-11-14T22:13:20Z  -\n"
        );
    }

    #[test]
    fn json_keeps_empty_fields_and_nulls() {
        let json = render(OutputFormat::Json, &TenantView::from(tenant("acme", ""))).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["name"], "acme");
        assert_eq!(value["display_name"], "");
        assert_eq!(value["create_time"], "2023-11-14T22:13:20Z");
        assert!(value["update_time"].is_null());
    }

    #[test]
    fn ai_settings_render() {
        let mut t = tenant("acme", "");
        t.settings = Some(mantle_client::proto::TenantSettings {
            max_cost_usd_per_execution: 2.5,
            max_tokens_per_day: 100_000,
            default_credentials: [
                ("openai".to_owned(), "my-openai-key".to_owned()),
                ("anthropic".to_owned(), "claude".to_owned()),
            ]
            .into(),
            ..Default::default()
        });
        let view = TenantView::from(t);
        let table = render(OutputFormat::Table, &view).unwrap();
        assert!(
            table.contains(
                "cost≤$2.5/execution tokens≤100000/day credentials=anthropic:claude,openai:my-openai-key"
            ),
            "{table}"
        );
        let json = render(OutputFormat::Json, &view).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["max_cost_usd_per_execution"], 2.5);
        assert_eq!(value["max_tokens_per_day"], 100_000);
        assert_eq!(
            value["default_credentials"],
            serde_json::json!({"anthropic": "claude", "openai": "my-openai-key"})
        );
    }

    #[test]
    fn credential_flags_change_the_current_map() {
        let current: HashMap<String, String> = [
            ("openai".to_owned(), "old".to_owned()),
            ("anthropic".to_owned(), "claude".to_owned()),
        ]
        .into();
        let changes = [
            ("openai".to_owned(), "new".to_owned()),
            ("anthropic".to_owned(), String::new()),
        ];
        assert_eq!(
            with_credentials(current, &changes),
            HashMap::from([("openai".to_owned(), "new".to_owned())])
        );
        // Removing from nothing (as on create) leaves nothing.
        assert!(with_credentials(HashMap::new(), &changes[1..]).is_empty());
    }

    #[test]
    fn list_json_is_an_array() {
        let list = TenantList(vec![tenant("acme", "").into()]);
        let json = render(OutputFormat::Json, &list).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value.as_array().map(Vec::len), Some(1));
    }
}
