//! `mantlectl whoami`.

use mantle_client::proto::Caller;
use serde::Serialize;

use super::Context;
use crate::output::{self, Render, key_values, text_cell};

/// The identity the server authenticated the request as.
#[derive(Debug, Serialize)]
struct CallerView {
    tenant: String,
    scopes: Vec<String>,
    operator: bool,
    key_id: String,
}

impl From<Caller> for CallerView {
    fn from(c: Caller) -> Self {
        CallerView {
            tenant: c.tenant,
            scopes: c.scopes,
            operator: c.operator,
            key_id: c.key_id,
        }
    }
}

impl Render for CallerView {
    fn table(&self) -> String {
        key_values(&[
            ("tenant", text_cell(&self.tenant)),
            ("scopes", text_cell(&self.scopes.join(", "))),
            (
                "operator",
                if self.operator { "yes" } else { "no" }.to_owned(),
            ),
            ("key id", text_cell(&self.key_id)),
        ])
    }
}

/// Prints the caller as GetServerInfo reports it, with --tenant sent as x-mantle-tenant.
pub async fn run(ctx: &Context) -> anyhow::Result<()> {
    let info = ctx.connect(true).await?.server_info().await?;
    let caller = info.caller.unwrap_or_default();
    output::print(ctx.output, &CallerView::from(caller))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputFormat, render};

    #[test]
    fn table_lists_caller_fields() {
        let view = CallerView::from(Caller {
            tenant: String::new(),
            scopes: vec!["tenants:admin".into()],
            operator: true,
            key_id: "file:operator-token".into(),
        });
        assert_eq!(
            render(OutputFormat::Table, &view).unwrap(),
            "tenant:    -\n\
             scopes:    tenants:admin\n\
             operator:  yes\n\
             key id:    file:operator-token\n"
        );
        let json = render(OutputFormat::Json, &view).unwrap();
        assert!(json.contains("\"operator\": true"), "{json}");
        assert!(
            json.contains("\"key_id\": \"file:operator-token\""),
            "{json}"
        );
    }
}
