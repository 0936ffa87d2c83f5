//! `mantlectl version`.

use serde::Serialize;

use super::Context;
use crate::output::{self, Render, key_values};

/// Client and server versions.
#[derive(Debug, Serialize)]
struct VersionView {
    client_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<String>,
}

impl Render for VersionView {
    fn table(&self) -> String {
        let mut pairs = vec![("client version", self.client_version.to_owned())];
        if let Some(v) = &self.server_version {
            pairs.push(("server version", v.clone()));
        }
        if let Some(db) = &self.database {
            pairs.push(("database", db.clone()));
        }
        key_values(&pairs)
    }
}

/// Prints the client version, then asks the server for its own. When the server cannot
/// be asked, the client version is still printed and the error returned.
pub async fn run(ctx: &Context) -> anyhow::Result<()> {
    let info = async { Ok::<_, anyhow::Error>(ctx.connect(false).await?.server_info().await?) };
    let (view, result) = match info.await {
        Ok(info) => (
            VersionView {
                client_version: mantle_client::VERSION,
                server_version: Some(info.version),
                database: Some(info.database),
            },
            Ok(()),
        ),
        Err(err) => (
            VersionView {
                client_version: mantle_client::VERSION,
                server_version: None,
                database: None,
            },
            Err(err),
        ),
    };
    output::print(ctx.output, &view)?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{OutputFormat, render};

    #[test]
    fn shows_only_the_client_without_a_server() {
        let view = VersionView {
            client_version: "0.1.0",
            server_version: None,
            database: None,
        };
        assert_eq!(
            render(OutputFormat::Table, &view).unwrap(),
            "client version:  0.1.0\n"
        );
        assert_eq!(
            render(OutputFormat::Json, &view).unwrap(),
            "{\n  \"client_version\": \"0.1.0\"\n}\n"
        );
    }

    #[test]
    fn shows_server_and_database() {
        let view = VersionView {
            client_version: "0.1.0",
            server_version: Some("0.2.0".into()),
            database: Some("sqlite".into()),
        };
        assert_eq!(
            render(OutputFormat::Table, &view).unwrap(),
            "client version:  0.1.0\nserver version:  0.2.0\ndatabase:        sqlite\n"
        );
    }
}
