//! `mantlectl health`.

use mantle_client::HealthStatus;
use serde::Serialize;

use super::{Context, EXIT_NOT_SERVING, Exit};
use crate::cli::HealthArgs;
use crate::output::{self, Render};

/// The answer of a health check.
#[derive(Debug, Serialize)]
struct HealthView {
    /// The service asked about; empty for the server as a whole.
    service: String,
    /// SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNKNOWN.
    status: &'static str,
}

impl Render for HealthView {
    fn table(&self) -> String {
        format!("{}\n", self.status)
    }
}

/// Prints the health status; exits with [`EXIT_NOT_SERVING`] unless SERVING.
pub async fn run(ctx: &Context, args: &HealthArgs) -> anyhow::Result<()> {
    let service = args.service.clone().unwrap_or_default();
    let client = ctx.connect_anonymous().await?;
    let status = client.health(&service).await?;
    output::print(
        ctx.output,
        &HealthView {
            service,
            status: status.as_str(),
        },
    )?;
    if status == HealthStatus::Serving {
        Ok(())
    } else {
        Err(Exit(EXIT_NOT_SERVING).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputFormat, render};

    #[test]
    fn table_is_just_the_status() {
        let view = HealthView {
            service: String::new(),
            status: "NOT_SERVING",
        };
        assert_eq!(render(OutputFormat::Table, &view).unwrap(), "NOT_SERVING\n");
        let json = render(OutputFormat::Json, &view).unwrap();
        assert!(json.contains("\"status\": \"NOT_SERVING\""), "{json}");
    }
}
