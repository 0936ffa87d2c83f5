//! `mantlectl webhooks deliveries`.

use chrono::{DateTime, Utc};
use mantle_client::proto::{View, WebhookDelivery};
use mantle_client::{DeliveryFilter, timestamp_to_datetime};
use serde::Serialize;

use super::Context;
use crate::cli::{DeliveriesArgs, WebhooksCommand};
use crate::output::{self, Render, Table, serialize_time, text_cell, time_cell};

/// The most characters of an error a table shows.
const ERROR_CELL_CHARS: usize = 80;

/// A delivery as mantlectl prints it.
#[derive(Debug, Serialize)]
struct DeliveryView {
    id: String,
    tenant: String,
    execution_id: String,
    url: String,
    /// `pending`, `delivered` or `failed`.
    status: String,
    attempts: i32,
    /// The HTTP status of the last answer; null when there was none.
    last_http_status: Option<i32>,
    last_error: String,
    #[serde(serialize_with = "serialize_time")]
    create_time: Option<DateTime<Utc>>,
    /// While pending.
    #[serde(serialize_with = "serialize_time")]
    next_attempt_time: Option<DateTime<Utc>>,
    #[serde(serialize_with = "serialize_time")]
    delivered_time: Option<DateTime<Utc>>,
    /// The JSON body exactly as sent; only with --full.
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
}

impl From<WebhookDelivery> for DeliveryView {
    fn from(d: WebhookDelivery) -> Self {
        let time = |t: &Option<prost_types::Timestamp>| t.as_ref().and_then(timestamp_to_datetime);
        DeliveryView {
            create_time: time(&d.create_time),
            next_attempt_time: time(&d.next_attempt_time),
            delivered_time: time(&d.delivered_time),
            last_http_status: (d.last_http_status != 0).then_some(d.last_http_status),
            payload: (!d.payload.is_empty()).then_some(d.payload),
            id: d.id,
            tenant: d.tenant,
            execution_id: d.execution_id,
            url: d.url,
            status: d.status,
            attempts: d.attempts,
            last_error: d.last_error,
        }
    }
}

impl DeliveryView {
    /// When the next attempt is due (pending) or when it was delivered; `-` otherwise.
    fn when(&self) -> String {
        time_cell(self.delivered_time.or(self.next_attempt_time))
    }
}

/// `text`, cut to `max` characters with `…` at the end when longer.
fn shortened(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Several deliveries, newest first; a JSON/YAML list.
#[derive(Debug, Serialize)]
#[serde(transparent)]
struct DeliveryList(Vec<DeliveryView>);

impl Render for DeliveryList {
    fn table(&self) -> String {
        let mut table = Table::new(&[
            "ID",
            "TENANT",
            "EXECUTION",
            "STATUS",
            "ATTEMPTS",
            "HTTP",
            "NEXT/DELIVERED",
            "LAST ERROR",
        ]);
        for d in &self.0 {
            table.row(vec![
                d.id.clone(),
                text_cell(&d.tenant),
                d.execution_id.clone(),
                d.status.clone(),
                d.attempts.to_string(),
                d.last_http_status
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                d.when(),
                text_cell(&shortened(&d.last_error, ERROR_CELL_CHARS)),
            ]);
        }
        table.render()
    }
}

/// `mantlectl webhooks …`.
pub async fn run(ctx: &Context, command: WebhooksCommand) -> anyhow::Result<()> {
    match command {
        WebhooksCommand::Deliveries(args) => deliveries(ctx, &args).await,
    }
}

/// `mantlectl webhooks deliveries`: --tenant is the request's tenant (not
/// x-mantle-tenant), so an operator without one lists every tenant's deliveries.
async fn deliveries(ctx: &Context, args: &DeliveriesArgs) -> anyhow::Result<()> {
    let client = ctx.connect(false).await?;
    let filter = DeliveryFilter {
        tenant: ctx.tenant.clone(),
        status: args.status,
        execution_id: args.execution.clone().filter(|e| !e.is_empty()),
    };
    let view = if args.full { View::Full } else { View::Basic };
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let deliveries = client
        .list_webhook_deliveries(&filter, Some(limit), view)
        .await?;
    output::print(
        ctx.output,
        &DeliveryList(deliveries.into_iter().map(DeliveryView::from).collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputFormat, render};

    fn at(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn delivery(status: &str) -> WebhookDelivery {
        WebhookDelivery {
            id: "d1".into(),
            tenant: "acme".into(),
            execution_id: "e1".into(),
            url: "https://hooks.acme.example/mantle".into(),
            status: status.into(),
            attempts: 1,
            create_time: at(1_700_000_000),
            ..Default::default()
        }
    }

    #[test]
    fn deliveries_read_as_a_table() {
        let mut pending = delivery("pending");
        pending.last_http_status = 503;
        pending.last_error = format!("HTTP 503: {}", "x".repeat(200));
        pending.next_attempt_time = at(1_700_000_005);
        let mut delivered = delivery("delivered");
        delivered.id = "d2".into();
        delivered.last_http_status = 200;
        delivered.delivered_time = at(1_700_000_001);
        let mut failed = delivery("failed");
        failed.id = "d3".into();
        failed.last_error = "connection refused".into();
        let table = render(
            OutputFormat::Table,
            &DeliveryList(vec![pending.into(), delivered.into(), failed.into()]),
        )
        .unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "ID  TENANT  EXECUTION  STATUS     ATTEMPTS  HTTP  NEXT/DELIVERED        LAST ERROR"
        );
        assert!(
            lines[1].starts_with(
                "d1  acme    e1         pending    1         503   2023-11-14T22:13:25Z  HTTP 503: xx"
            ),
            "{table}"
        );
        assert!(lines[1].ends_with("x…"), "{table}");
        assert_eq!(
            lines[2],
            "d2  acme    e1         delivered  1         200   2023-11-14T22:13:21Z  -"
        );
        assert_eq!(
            lines[3],
            "d3  acme    e1         failed     1         -     -                     connection refused"
        );
    }

    #[test]
    fn payloads_appear_only_when_listed() {
        let basic = render(
            OutputFormat::Json,
            &DeliveryList(vec![delivery("pending").into()]),
        )
        .unwrap();
        let value: serde_json::Value = serde_json::from_str(&basic).unwrap();
        assert!(value[0].get("payload").is_none(), "{basic}");
        assert_eq!(value[0]["last_http_status"], serde_json::Value::Null);
        let mut full = delivery("delivered");
        full.payload = r#"{"status":"completed"}"#.into();
        let json = render(OutputFormat::Json, &DeliveryList(vec![full.into()])).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value[0]["payload"], r#"{"status":"completed"}"#);
    }

    #[test]
    fn long_errors_are_shortened() {
        assert_eq!(shortened("abc", 3), "abc");
        assert_eq!(shortened("abcd", 3), "ab…");
    }
}
