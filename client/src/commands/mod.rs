//! One module per noun; each command prints its data to stdout and returns.

pub mod actions;
pub mod audit;
pub mod definitions;
pub mod executions;
pub mod follow;
pub mod health;
pub mod keys;
pub mod run;
pub mod secrets;
pub mod tenants;
pub mod triggers;
pub mod version;
pub mod webhooks;
pub mod whoami;
pub mod workflows;

use std::sync::{Arc, OnceLock};

use mantle_client::{Address, Client, ClientOptions, TokenEnv, TokenSource, resolve_token};

use crate::cli::{Cli, Command};
use crate::output::OutputFormat;

/// Exit code for errors other than the ones below.
pub const EXIT_ERROR: u8 = 1;
/// Exit code when the server cannot be reached (connection failed or UNAVAILABLE).
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code of `health` when the answer is not SERVING.
pub const EXIT_NOT_SERVING: u8 = 4;
/// Exit code of `run`/`retry`/`triggers fire --wait|--follow` when `--timeout` passed
/// first.
pub const EXIT_WAIT_TIMEOUT: u8 = 5;

/// Ends mantlectl with an exit code, printing nothing more: the command has already
/// reported the outcome.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// What every command needs: where the daemon is, credentials, the output format.
#[derive(Debug, Clone)]
pub struct Context {
    /// Daemon address.
    pub address: Address,
    /// `--token` / MANTLE_TOKEN as given; resolved (with the token file) on connect.
    pub token: Option<String>,
    /// `--tenant` / MANTLE_TENANT.
    pub tenant: Option<String>,
    /// `-o/--output`.
    pub output: OutputFormat,
    /// Where the token sent came from, once one was resolved: named when the server
    /// refuses it.
    pub token_source: Arc<OnceLock<TokenSource>>,
}

impl Context {
    /// Connects with the resolved token. `send_tenant` adds x-mantle-tenant.
    pub async fn connect(&self, send_tenant: bool) -> anyhow::Result<Client> {
        let resolved = resolve_token(
            self.token.as_deref(),
            &self.address,
            &TokenEnv::from_process(),
        )?;
        let _ = self.token_source.set(resolved.source);
        self.connect_with(resolved.token, send_tenant).await
    }

    /// Connects without credentials (health checks need none).
    pub async fn connect_anonymous(&self) -> anyhow::Result<Client> {
        self.connect_with(None, false).await
    }

    async fn connect_with(
        &self,
        token: Option<String>,
        send_tenant: bool,
    ) -> anyhow::Result<Client> {
        let mut options = ClientOptions::new(self.address.clone());
        options.token = token;
        if send_tenant {
            options.tenant = self.tenant.clone();
        }
        Ok(Client::connect(options).await?)
    }
}

/// The token a refused call sent, and where it came from: added to the error of a call
/// the server refused as UNAUTHENTICATED or PERMISSION_DENIED.
#[derive(Debug)]
pub struct TokenUsed(pub TokenSource);

impl std::fmt::Display for TokenUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sent {}", self.0)
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Context {
        address: cli.address,
        token: cli.token,
        tenant: cli.tenant.filter(|t| !t.is_empty()),
        output: cli.output,
        token_source: Arc::default(),
    };
    dispatch(&ctx, cli.command).await.map_err(|err| {
        let refused = err
            .chain()
            .filter_map(|e| e.downcast_ref::<mantle_client::Error>())
            .any(|e| {
                matches!(
                    e.code(),
                    Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
                )
            });
        match ctx.token_source.get() {
            Some(source) if refused => err.context(TokenUsed(source.clone())),
            _ => err,
        }
    })
}

async fn dispatch(ctx: &Context, command: Command) -> anyhow::Result<()> {
    let ctx = ctx.clone();
    match command {
        Command::Health(args) => health::run(&ctx, &args).await,
        Command::Version => version::run(&ctx).await,
        Command::Whoami => whoami::run(&ctx).await,
        Command::Tenants(command) => tenants::run(&ctx, command).await,
        Command::Keys(command) => keys::run(&ctx, command).await,
        Command::Validate(args) => definitions::validate(&ctx, &args).await,
        Command::Plan(args) => definitions::plan(&ctx, &args).await,
        Command::Apply(args) => definitions::apply(&ctx, &args).await,
        Command::Workflows(command) => workflows::run(&ctx, command).await,
        Command::Run(args) => run::run(&ctx, &args).await,
        Command::Status { id } => executions::status(&ctx, &id).await,
        Command::Logs { id, follow } => executions::logs(&ctx, &id, follow).await,
        Command::Cancel { id } => executions::cancel(&ctx, &id).await,
        Command::Retry { id, waiting } => executions::retry(&ctx, &id, &waiting).await,
        Command::Executions(command) => executions::run(&ctx, command).await,
        Command::Secrets(command) => secrets::run(&ctx, command).await,
        Command::Actions(command) => actions::run(&ctx, command).await,
        Command::Audit(command) => audit::run(&ctx, command).await,
        Command::Webhooks(command) => webhooks::run(&ctx, command).await,
        Command::Triggers(command) => triggers::run(&ctx, command).await,
    }
}

/// The stderr message (if any) and exit code for a failed command.
pub fn report(err: &anyhow::Error, address: &Address) -> (Option<String>, u8) {
    if let Some(Exit(code)) = err.downcast_ref::<Exit>() {
        return (None, *code);
    }
    let client_error = err
        .chain()
        .find_map(|e| e.downcast_ref::<mantle_client::Error>());
    let mut message = match err.downcast_ref::<TokenUsed>() {
        // The refusal first, then the token it refused.
        Some(used) => {
            let cause: Vec<String> = err.chain().skip(1).map(ToString::to_string).collect();
            format!("mantlectl: error: {} ({used})", cause.join(": "))
        }
        None => format!("mantlectl: error: {err:#}"),
    };
    match client_error {
        Some(e @ mantle_client::Error::Rpc(_)) if e.is_unreachable() => {
            message.push_str(&format!(" (server {address})"));
            (Some(message), EXIT_UNREACHABLE)
        }
        Some(e) if e.is_unreachable() => (Some(message), EXIT_UNREACHABLE),
        Some(mantle_client::Error::WaitTimeout { .. }) => (Some(message), EXIT_WAIT_TIMEOUT),
        _ => (Some(message), EXIT_ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> Address {
        Address::parse("127.0.0.1:8080").unwrap()
    }

    #[test]
    fn rpc_errors_print_code_in_words() {
        let err = anyhow::Error::from(mantle_client::Error::from(
            tonic::Status::permission_denied("token lacks scope tenants:admin"),
        ));
        assert_eq!(
            report(&err, &addr()),
            (
                Some(
                    "mantlectl: error: permission denied: token lacks scope tenants:admin"
                        .to_owned()
                ),
                EXIT_ERROR
            )
        );
    }

    #[test]
    fn connection_failures_name_the_address_and_exit_3() {
        let err = anyhow::Error::from(mantle_client::Error::Connect {
            address: "http://127.0.0.1:8080".into(),
            reason: "tcp connect error: connection refused".into(),
        });
        assert_eq!(
            report(&err, &addr()),
            (
                Some(
                    "mantlectl: error: cannot connect to http://127.0.0.1:8080: tcp connect \
                     error: connection refused"
                        .to_owned()
                ),
                EXIT_UNREACHABLE
            )
        );
        let err = anyhow::Error::from(mantle_client::Error::from(tonic::Status::unavailable(
            "connection reset",
        )));
        assert_eq!(
            report(&err, &addr()),
            (
                Some(
                    "mantlectl: error: unavailable: connection reset (server http://127.0.0.1:8080)"
                        .to_owned()
                ),
                EXIT_UNREACHABLE
            )
        );
    }

    #[test]
    fn context_is_kept_and_client_errors_found_beneath_it() {
        let err = anyhow::Error::from(mantle_client::Error::from(tonic::Status::unavailable("x")))
            .context("reading server info");
        let (message, code) = report(&err, &addr());
        assert_eq!(code, EXIT_UNREACHABLE);
        assert!(
            message
                .unwrap()
                .starts_with("mantlectl: error: reading server info: unavailable: x")
        );
    }

    #[test]
    fn a_wait_that_times_out_exits_5() {
        let err = anyhow::Error::from(mantle_client::Error::WaitTimeout {
            id: "x1".into(),
            timeout: std::time::Duration::from_secs(90),
        });
        let (message, code) = report(&err, &addr());
        assert_eq!(code, EXIT_WAIT_TIMEOUT);
        assert_eq!(
            message.unwrap(),
            "mantlectl: error: execution x1 did not finish within 1m30s; it goes on (the wait \
             ended, not the execution)"
        );
    }

    #[test]
    fn a_refused_token_is_named_with_its_source() {
        let err = anyhow::Error::from(mantle_client::Error::from(tonic::Status::unauthenticated(
            "invalid, expired or revoked token",
        )))
        .context(TokenUsed(TokenSource::Env));
        assert_eq!(
            report(&err, &addr()),
            (
                Some(
                    "mantlectl: error: unauthenticated: invalid, expired or revoked token \
                     (sent the token in MANTLE_TOKEN)"
                        .to_owned()
                ),
                EXIT_ERROR
            )
        );
    }

    #[test]
    fn exit_marker_prints_nothing() {
        let err = anyhow::Error::from(Exit(EXIT_NOT_SERVING));
        assert_eq!(report(&err, &addr()), (None, EXIT_NOT_SERVING));
    }

    #[test]
    fn other_errors_exit_1() {
        let err = anyhow::anyhow!("something local went wrong");
        assert_eq!(
            report(&err, &addr()),
            (
                Some("mantlectl: error: something local went wrong".to_owned()),
                EXIT_ERROR
            )
        );
    }
}
