//! The `mantlectl` command line.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::parser::ValueSource;
use clap::{ArgGroup, ArgMatches, Args, CommandFactory, Parser, Subcommand};
use mantle_client::proto::ExecutionStatus;
use mantle_client::{Address, DEFAULT_ADDRESS, DeliveryStatus};

use crate::output::OutputFormat;

const AFTER_HELP: &str = "\
Token: --token (or MANTLE_TOKEN). When neither is set, mantlectl reads the operator token
the daemon keeps in <data dir>/operator-token, where the data dir is MANTLE_DATA_DIR, else
$XDG_DATA_HOME/mantle, else ~/.local/share/mantle, and sends it only to the daemon that wrote
it (the file names its address). --token '' sends no token. A refused token is named by
its source.

Tenant: --tenant (or MANTLE_TENANT) names the tenant you work with. It is sent as
x-mantle-tenant metadata on tenant-scoped calls (whoami, validate, plan, apply, workflows, run,
status, logs, cancel, retry, executions, secrets, triggers), so an operator key acts on that tenant
instead of `default`. `keys create` and `keys list` manage that tenant's API keys;
without a tenant they manage operator keys (--operator forces this when MANTLE_TENANT is set).
`audit list` and `webhooks deliveries` list that tenant's events and deliveries; without a
tenant, an operator key lists every tenant's (a tenant key always sees only its own).
`tenants` commands name their tenant as an argument and ignore --tenant.

Output: data goes to stdout, messages and errors to stderr. Times are RFC 3339 in UTC; event
lines (run --follow, logs) start with the time of day in UTC. Statuses are lower-case
(completed, timed_out).

Exit codes:
  0  success
  1  error: the server refused the request, or a local problem (e.g. unreadable token file);
     run/retry/triggers fire --wait/--follow: the execution ended other than completed
  2  invalid command line
  3  the server could not be reached (connection failed or UNAVAILABLE)
  4  health: the server or service is not SERVING
  5  run/retry/triggers fire --wait/--follow: --timeout passed before the execution ended
     (it goes on)";

/// Command-line client for the Mantle workflow engine daemon.
#[derive(Debug, Parser)]
#[command(name = "mantlectl", version, after_long_help = AFTER_HELP)]
pub struct Cli {
    /// Daemon address: host:port, http://host:port or https://host:port (TLS with the
    /// system's root certificates).
    #[arg(
        long,
        global = true,
        env = "MANTLE_ADDRESS",
        default_value = DEFAULT_ADDRESS,
        value_name = "ADDR",
        value_parser = parse_address
    )]
    pub address: Address,

    /// Bearer token. Default: the local daemon's operator token file (see below).
    #[arg(
        long,
        global = true,
        env = "MANTLE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// Tenant to work with: sent as x-mantle-tenant on tenant-scoped calls; the tenant
    /// whose keys `keys` commands manage, and whose events and deliveries `audit list` and
    /// `webhooks deliveries` list.
    #[arg(long, global = true, env = "MANTLE_TENANT", value_name = "NAME")]
    pub tenant: Option<String>,

    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = OutputFormat::Table,
        value_name = "FORMAT"
    )]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the daemon's gRPC health; prints SERVING or NOT_SERVING (no token needed).
    Health(HealthArgs),
    /// Print the client's version and the server's version and database backend.
    Version,
    /// Show who the token authenticates as: tenant, scopes, operator, key id.
    Whoami,
    /// Manage tenants (needs an operator key).
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// Manage API keys (needs an operator key).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Check workflow files on the server without storing them.
    ///
    /// Prints each problem as FILE:LINE:COL: PATH: message to stdout, and FILE: ok (NAME,
    /// N steps) to stderr for valid files. Exits 1 if any file has problems.
    Validate(FilesArgs),
    /// Show what applying workflow files would change.
    ///
    /// Prints, per file, the version change and one line per added (+), changed (~) or
    /// removed (-) element, then a summary. Invalid files are reported as by `validate`
    /// and make mantlectl exit 1.
    Plan(FilesArgs),
    /// Store workflow files as new versions where their content changed.
    ///
    /// Prints the changes and the resulting version of each file. Invalid files are
    /// reported as by `validate` and make mantlectl exit 1.
    Apply(FilesArgs),
    /// Read and delete stored workflows.
    #[command(subcommand)]
    Workflows(WorkflowsCommand),
    /// Start an execution of a workflow, optionally applying its file first.
    ///
    /// NAME runs a stored workflow; FILE (ending in .yaml/.yml, or any existing file) is
    /// applied first (the apply summary goes to stderr) and the workflow it defines is run.
    /// Without --wait/--follow, prints the execution id (-o json/yaml: the execution).
    /// --wait and --follow print the final execution and exit 0 only if it completed.
    Run(RunArgs),
    /// Show an execution and every attempt of its steps.
    Status {
        /// Execution id.
        id: String,
    },
    /// Print an execution's event log, one line per event.
    ///
    /// Without --follow, prints the events recorded so far and exits. With -o json, each
    /// event is one compact JSON object on a line of its own (NDJSON); with -o yaml, one
    /// YAML document per event.
    Logs {
        /// Execution id.
        id: String,
        /// Keep printing events as they happen until the execution ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel an execution; its running steps are stopped. An execution that has
    /// already finished is left as it is (exit 0, saying so).
    Cancel {
        /// Execution id.
        id: String,
    },
    /// Continue a failed, cancelled or timed-out execution: completed steps keep their
    /// outputs, the others run again.
    ///
    /// Without --wait/--follow, prints the execution; with them, prints it once it ends
    /// again and exits 0 only if it completed.
    Retry {
        /// Execution id.
        id: String,
        #[command(flatten)]
        waiting: WaitArgs,
    },
    /// List executions.
    #[command(subcommand)]
    Executions(ExecutionsCommand),
    /// Manage the tenant's secrets: credentials steps name with `credential:`. Values go
    /// in and never come out: no command prints them.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// List the actions a step may name, or describe one's params.
    #[command(subcommand)]
    Actions(ActionsCommand),
    /// Read the audit log: who changed what, when, and with which result.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Watch webhook deliveries: the announcements of finished executions.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// List, pause, resume and fire the triggers workflow files declare (cron schedules,
    /// webhooks).
    #[command(subcommand)]
    Triggers(TriggersCommand),
}

/// `mantlectl triggers …`.
#[derive(Debug, Subcommand)]
pub enum TriggersCommand {
    /// List the tenant's triggers, by workflow: id, workflow, type, schedule and time zone
    /// (cron) or path (webhook), paused, next fire, and the last fire with its result.
    List {
        /// Only the triggers of this workflow.
        #[arg(long, value_name = "NAME")]
        workflow: Option<String>,
    },
    /// Pause a trigger: it starts no execution until resumed. Prints the trigger.
    Pause {
        /// Trigger id (from `triggers list`).
        id: String,
    },
    /// Resume a paused trigger. Prints the trigger.
    Resume {
        /// Trigger id (from `triggers list`).
        id: String,
    },
    /// Start one execution now, as the trigger would.
    ///
    /// Without --wait/--follow, prints the execution id (-o json/yaml: the execution).
    /// --wait and --follow print the final execution and exit 0 only if it completed.
    Fire {
        /// Trigger id (from `triggers list`).
        id: String,
        #[command(flatten)]
        waiting: WaitArgs,
    },
}

/// `mantlectl audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first: every authenticated mutating request, succeeded or
    /// refused (secret changes and key rotations when they succeed, with the secret's name).
    ///
    /// A tenant key sees its tenant's events; an operator key sees every event (the
    /// installation's too), or --tenant's. Filters combine: an event is listed when it
    /// matches every one given. Columns: time, tenant, actor, action, resource, result.
    List(AuditListArgs),
}

/// `mantlectl audit list`.
#[derive(Debug, Args)]
pub struct AuditListArgs {
    /// Only this actor's events (exact): an API key id (the hex part after `mntl_` in its
    /// token), env:MANTLE_API_TOKEN or file:NAME (a keys file key).
    #[arg(long, value_name = "ACTOR")]
    pub actor: Option<String>,

    /// Only this action: exact (secret.create,
    /// mantle.v1.ExecutionService/StartExecution), or a prefix when it ends with '*'
    /// (mantle.v1.SecretService/*, secret.*; quote it from the shell).
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,

    /// Only this result: OK, a gRPC status code name such as PERMISSION_DENIED or
    /// NOT_FOUND, or `refused` for anything but OK (case does not matter).
    #[arg(long, value_name = "RESULT")]
    pub result: Option<String>,

    /// Only events at or after SINCE: an RFC 3339 time (2025-01-31T09:00:00Z) or a
    /// duration ago (30m, 1h, 7d; units s, m, h, d, w).
    #[arg(long, value_name = "SINCE", value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,

    /// Show at most N events: one page of 50 by default; more pages are fetched only up
    /// to N.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

/// `mantlectl webhooks …`.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// List webhook deliveries, newest first, with their state, attempts, last HTTP status,
    /// next attempt (pending) or delivery time, and last error.
    ///
    /// A tenant key sees its tenant's deliveries; an operator key sees every tenant's, or
    /// --tenant's. Filters combine.
    Deliveries(DeliveriesArgs),
}

/// `mantlectl webhooks deliveries`.
#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    /// Only deliveries in this state: pending (waiting for its next attempt), delivered or
    /// failed (given up after 24 hours).
    #[arg(long, value_name = "STATUS", value_parser = parse_delivery_status)]
    pub status: Option<DeliveryStatus>,

    /// Only the deliveries of this execution.
    #[arg(long, value_name = "ID")]
    pub execution: Option<String>,

    /// With each delivery's payload, the JSON body exactly as sent (in -o json and -o
    /// yaml); a listing leaves it out by default.
    #[arg(long)]
    pub full: bool,

    /// Show at most N deliveries: one page of 50 by default; more pages are fetched only
    /// up to N.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
}

/// `mantlectl secrets …`.
#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Store a new secret and print its metadata.
    ///
    /// Types and their fields: bearer {token}; basic {username, password}; header {name,
    /// value}; openai {api_key, optional org_id, base_url}; anthropic {api_key,
    /// optional base_url}; postgres {url}; imap {host, username, password, optional port,
    /// tls}; generic: any fields.
    Create {
        /// Secret name: 1 to 63 lowercase letters, digits, '-' and '_', starting with a
        /// letter.
        name: String,
        /// generic, bearer, basic, header, openai, anthropic or postgres.
        #[arg(long = "type", value_name = "TYPE")]
        kind: String,
        #[command(flatten)]
        fields: SecretFieldsArgs,
    },
    /// Replace all of a secret's field values (its type stays) and print its metadata.
    Update {
        /// Secret name.
        name: String,
        #[command(flatten)]
        fields: SecretFieldsArgs,
    },
    /// Show a secret's metadata: type, field names, key id and times (never its values).
    Get {
        /// Secret name.
        name: String,
    },
    /// List the tenant's secrets (metadata only), by name.
    List,
    /// Delete a secret; steps naming it fail from then on.
    Delete {
        /// Secret name.
        name: String,
    },
    /// Re-encrypt every secret of every tenant still sealed with the daemon's
    /// MANTLE_ENCRYPTION_KEY_PREVIOUS under its MANTLE_ENCRYPTION_KEY (needs an operator
    /// key).
    RotateKey {
        /// Secrets re-encrypted per transaction; default: the server's (100).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
        batch_size: Option<u32>,
    },
}

/// Where a secret's field values come from: exactly one of --field (repeatable),
/// --from-file or --from-stdin.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct SecretFieldsArgs {
    /// A field value; repeat for several fields. The value is taken verbatim (it may
    /// contain '='). Prefer --from-file or --from-stdin: command lines can be seen by
    /// other users and end up in shell history.
    #[arg(long = "field", value_name = "KEY=VALUE", allow_hyphen_values = true)]
    pub field: Vec<String>,

    /// Read the fields from a file: a JSON or YAML object whose values are strings, or
    /// KEY=VALUE lines (blank lines and lines starting with '#' are ignored).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,

    /// Read the fields from standard input, in the same forms as --from-file.
    #[arg(long)]
    pub from_stdin: bool,
}

/// `mantlectl run NAME|FILE`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Workflow name, or a workflow file to apply and run.
    #[arg(value_name = "NAME|FILE")]
    pub target: String,

    /// Version to run; default: the latest (for a FILE: the version just applied).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    pub version: Option<i64>,

    /// An input value; repeat for several. The value is converted to the input's
    /// declared type: integer, number and boolean are parsed, object and array are JSON,
    /// anything else is a string. Overrides --inputs-file.
    #[arg(long = "input", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub inputs: Vec<(String, String)>,

    /// Inputs as a JSON or YAML object (by extension: .json is JSON, anything else YAML).
    #[arg(long, value_name = "FILE")]
    pub inputs_file: Option<PathBuf>,

    #[command(flatten)]
    pub waiting: WaitArgs,

    /// Makes the start idempotent: running again with the same key and the same request
    /// returns the execution the first run started (kept 24 hours); a different request
    /// with the key is refused.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// `--wait`, `--follow` and `--timeout` of `run`, `retry` and `triggers fire`.
#[derive(Debug, Clone, Default, Args)]
pub struct WaitArgs {
    /// Wait for the execution to end and print it; exit 1 unless it completed.
    #[arg(long, conflicts_with = "follow")]
    pub wait: bool,

    /// Like --wait, printing each step's progress and log lines to stderr as it happens
    /// (and, during a long step, what is still running every 15 s).
    #[arg(short, long)]
    pub follow: bool,

    /// With --wait or --follow: stop waiting after DURATION (e.g. 90s, 10m, 1h) and exit
    /// 5; the execution goes on. Default: wait as long as it takes, through restarts of
    /// the daemon.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

impl WaitArgs {
    /// Whether the command waits for the execution to end.
    pub fn waits(&self) -> bool {
        self.wait || self.follow
    }
}

/// `mantlectl executions …`.
#[derive(Debug, Subcommand)]
pub enum ExecutionsCommand {
    /// List executions, newest first.
    List {
        /// Only executions of this workflow.
        #[arg(long, value_name = "NAME")]
        workflow: Option<String>,
        /// Only executions in this state: pending, queued, running, completed, failed,
        /// cancelled or timed_out.
        #[arg(long, value_name = "STATUS", value_parser = parse_status)]
        status: Option<ExecutionStatus>,
        /// Show at most N executions.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        /// With each execution's inputs, outputs and trigger (in -o json and -o yaml); a
        /// listing leaves them out by default.
        #[arg(long)]
        full: bool,
    },
    /// Cancel every unfinished execution of a workflow and/or in a state, at once; prints
    /// how many were asked to stop (each ends as cancelled as its daemon stops it).
    /// `mantlectl cancel ID` cancels one.
    #[command(group = clap::ArgGroup::new("which").required(true).multiple(true))]
    Cancel {
        /// Only executions of this workflow.
        #[arg(long, value_name = "NAME", group = "which")]
        workflow: Option<String>,
        /// Only executions in this state: pending, queued or running.
        #[arg(long, value_name = "STATUS", value_parser = parse_status, group = "which")]
        status: Option<ExecutionStatus>,
    },
    /// Delete a finished execution, or every finished execution that ended before a time
    /// (of one workflow with --workflow), with their step attempts, events and webhook
    /// deliveries. Unfinished executions are never deleted: cancel them first.
    #[command(group = clap::ArgGroup::new("what").required(true))]
    Delete {
        /// Execution id.
        #[arg(group = "what")]
        id: Option<String>,
        /// Delete those that ended before BEFORE: an RFC 3339 time (2025-01-31T00:00:00Z)
        /// or a duration ago (30d).
        #[arg(long, value_name = "BEFORE", value_parser = parse_since, group = "what")]
        before: Option<DateTime<Utc>>,
        /// With --before: only executions of this workflow.
        #[arg(long, value_name = "NAME", requires = "before")]
        workflow: Option<String>,
    },
}

/// `mantlectl validate|plan|apply FILE…`.
#[derive(Debug, Args)]
pub struct FilesArgs {
    /// Workflow YAML files; each is checked on its own. With -o json/yaml, one file
    /// prints an object and several print a list.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// `mantlectl actions …`.
#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// List every action: name, kind (pure, effect, timer), credential types, description.
    List,
    /// Show an action's params (type, required, description) and credential types; with
    /// -o json/yaml, its params as JSON Schema.
    Describe {
        /// Action name, such as http/request.
        name: String,
    },
}

/// `mantlectl workflows …`.
#[derive(Debug, Subcommand)]
pub enum WorkflowsCommand {
    /// List the tenant's workflows.
    List,
    /// Show one version of a workflow (the latest by default).
    Get {
        /// Workflow name.
        name: String,
        /// Version to show; default: the latest.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
        version: Option<i64>,
        /// Print only the stored YAML, exactly as it was applied.
        #[arg(long)]
        source: bool,
    },
    /// List the versions of a workflow, newest first.
    Versions {
        /// Workflow name.
        name: String,
    },
    /// Delete a workflow; running executions continue, and applying it again continues
    /// its version numbers.
    Delete {
        /// Workflow name.
        name: String,
    },
    /// Make an earlier version's YAML the latest again, as a new version; new executions
    /// run it, running ones keep theirs. Prints what changed, as apply does.
    Rollback {
        /// Workflow name.
        name: String,
        /// The version to go back to.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
        to_version: i64,
    },
}

/// `mantlectl health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Service to check, e.g. mantle.v1.TenantService; default: the server as a whole.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
}

/// A tenant's limits as flags; 0 removes a numeric limit on update.
#[derive(Debug, Clone, Default, Args)]
pub struct TenantLimits {
    /// Most steps a workflow of the tenant may have (0: no limit of its own).
    #[arg(long, value_name = "N", group = "changes", value_parser = clap::value_parser!(i32).range(0..))]
    pub max_steps_per_workflow: Option<i32>,
    /// Longest an execution may run, in minutes (0: no limit of its own).
    #[arg(long, value_name = "N", group = "changes", value_parser = clap::value_parser!(i32).range(0..))]
    pub max_runtime_minutes: Option<i32>,
    /// Executions running at once across all daemons; more wait queued (0: no limit).
    #[arg(long, value_name = "N", group = "changes", value_parser = clap::value_parser!(i32).range(0..))]
    pub max_concurrent_executions: Option<i32>,
    /// Queued executions at most; more starts are refused (0: no limit).
    #[arg(long, value_name = "N", group = "changes", value_parser = clap::value_parser!(i32).range(0..))]
    pub max_queued_executions: Option<i32>,
    /// Mutating requests per minute (0: no limit).
    #[arg(long, value_name = "N", group = "changes", value_parser = clap::value_parser!(i32).range(0..))]
    pub rate_limit_per_minute: Option<i32>,
    /// A host http/request may reach: a name or *.domain (subdomains only); repeat for
    /// several. Replaces the list.
    #[arg(long = "allowed-domain", value_name = "HOST", group = "changes")]
    pub allowed_domains: Vec<String>,
    /// Announce every finished execution with a POST to this http(s) URL ("" stops).
    #[arg(long, value_name = "URL", group = "changes")]
    pub webhook_url: Option<String>,
    /// Name of the tenant's secret whose `key` field signs webhook deliveries ("" unsigned).
    #[arg(long, value_name = "SECRET", group = "changes")]
    pub webhook_secret: Option<String>,
    /// Most an execution may spend on model calls (ai/completion), in US dollars, e.g. 2.5
    /// (0: no cap).
    #[arg(long, value_name = "USD", group = "changes", value_parser = parse_usd)]
    pub max_cost_usd_per_execution: Option<f64>,
    /// Model tokens (input + output) the tenant may use per UTC day, across all executions
    /// (0: no cap).
    #[arg(long, value_name = "N", group = "changes", value_parser = clap::value_parser!(i64).range(0..))]
    pub max_tokens_per_day: Option<i64>,
    /// How long finished executions are kept after they end, e.g. 30d or 12h; then they
    /// are deleted (0: the installation's MANTLE_RETENTION_DAYS).
    #[arg(long, value_name = "DURATION", group = "changes", value_parser = parse_retention)]
    pub retention: Option<std::time::Duration>,
    /// The secret an ai/completion step uses when it names no credential, for a provider
    /// (openai or anthropic); repeat for several. On update it changes only the providers
    /// named; PROVIDER= (no secret) removes one. The secret need not exist yet.
    #[arg(
        long = "default-credential",
        value_name = "PROVIDER=SECRET",
        group = "changes",
        value_parser = parse_key_value
    )]
    pub default_credentials: Vec<(String, String)>,
}

/// `mantlectl tenants …`.
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant.
    Create {
        /// Tenant name: a DNS label (lowercase letters, digits and '-').
        name: String,
        /// Human-readable name.
        #[arg(long, value_name = "TEXT")]
        display_name: Option<String>,
        #[command(flatten)]
        limits: TenantLimits,
    },
    /// Show one tenant.
    Get {
        /// Tenant name.
        name: String,
    },
    /// List all tenants.
    List,
    /// Change a tenant.
    #[command(group(ArgGroup::new("changes").required(true).multiple(true)))]
    Update {
        /// Tenant name.
        name: String,
        /// New human-readable name; '' clears it.
        #[arg(long, value_name = "TEXT", group = "changes")]
        display_name: Option<String>,
        #[command(flatten)]
        limits: TenantLimits,
        /// Allow any public host again.
        #[arg(long, group = "changes", conflicts_with = "allowed_domains")]
        clear_allowed_domains: bool,
        /// Remove every default credential.
        #[arg(long, group = "changes", conflicts_with = "default_credentials")]
        clear_default_credentials: bool,
    },
    /// Delete a tenant and revoke its API keys.
    Delete {
        /// Tenant name.
        name: String,
    },
}

/// `mantlectl keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for --tenant (or an operator key) and print its token once.
    Create(KeysCreateArgs),
    /// List the API keys of --tenant (or operator keys).
    List(KeysListArgs),
    /// Revoke an API key.
    Revoke {
        /// Key id: the hex part after `mntl_` in the token.
        id: String,
    },
}

/// `mantlectl keys create`.
#[derive(Debug, Args)]
pub struct KeysCreateArgs {
    /// Scope to grant; repeat or separate with commas. Tenant keys: definitions:read,
    /// definitions:write, executions:read, executions:write, secrets:read, secrets:write or
    /// '*'. Operator keys: tenants:admin.
    #[arg(
        long = "scope",
        value_name = "SCOPE",
        required = true,
        value_delimiter = ','
    )]
    pub scopes: Vec<String>,

    /// Free-form label, e.g. ci or alice-laptop.
    #[arg(long, value_name = "LABEL")]
    pub name: Option<String>,

    /// Lifetime, e.g. 30d, 12h, 1d12h (units s, m, h, d, w). Default: never expires.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub expires_in: Option<Duration>,

    /// Create an operator key even when MANTLE_TENANT is set.
    #[arg(long)]
    pub operator: bool,
}

/// `mantlectl keys list`.
#[derive(Debug, Args)]
pub struct KeysListArgs {
    /// Include revoked keys.
    #[arg(long)]
    pub show_revoked: bool,

    /// List operator keys even when MANTLE_TENANT is set.
    #[arg(long)]
    pub operator: bool,
}

/// Checks what clap cannot: `--operator` contradicts a `--tenant` given on the command
/// line (a tenant from MANTLE_TENANT is simply overridden).
pub fn check_conflicts(cli: &Cli, matches: &ArgMatches) -> Result<(), clap::Error> {
    let waiting = match &cli.command {
        Command::Run(args) => Some(&args.waiting),
        Command::Retry { waiting, .. } => Some(waiting),
        Command::Triggers(TriggersCommand::Fire { waiting, .. }) => Some(waiting),
        _ => None,
    };
    if waiting.is_some_and(|w| w.timeout.is_some() && !w.waits()) {
        return Err(Cli::command().error(
            clap::error::ErrorKind::MissingRequiredArgument,
            "--timeout limits a wait: use it with --wait or --follow",
        ));
    }
    let operator = match &cli.command {
        Command::Keys(KeysCommand::Create(args)) => args.operator,
        Command::Keys(KeysCommand::List(args)) => args.operator,
        _ => false,
    };
    if operator && matches.value_source("tenant") == Some(ValueSource::CommandLine) {
        return Err(Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            "--operator cannot be used with --tenant",
        ));
    }
    Ok(())
}

fn parse_address(s: &str) -> Result<Address, String> {
    Address::parse(s).map_err(|e| e.to_string())
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err("expected KEY=VALUE".to_owned()),
    }
}

/// An amount of US dollars: a finite number, not negative.
fn parse_usd(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(usd) if usd.is_finite() && usd >= 0.0 => Ok(usd),
        _ => Err("expected an amount of US dollars, such as 2.5 (0: no cap)".to_owned()),
    }
}

fn parse_status(s: &str) -> Result<ExecutionStatus, String> {
    mantle_client::parse_execution_status(s).ok_or_else(|| {
        "expected pending, queued, running, completed, failed, cancelled or timed_out".to_owned()
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mantle_client::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_delivery_status(s: &str) -> Result<DeliveryStatus, String> {
    DeliveryStatus::parse(s).ok_or_else(|| "expected pending, delivered or failed".to_owned())
}

/// A retention: a duration in whole seconds, or 0.
fn parse_retention(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    let d = mantle_client::parse_duration(s).map_err(|e| e.to_string())?;
    if d.subsec_nanos() != 0 {
        return Err("whole seconds only (e.g. 30d, 12h, 90s)".to_owned());
    }
    Ok(d)
}

/// An RFC 3339 time, or a duration before now (`1h`: an hour ago).
fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    since_at(s, Utc::now())
}

fn since_at(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = mantle_client::parse_duration(s).map_err(|_| {
        "expected an RFC 3339 time (2025-01-31T09:00:00Z) or a duration ago (30m, 1h, 7d)"
            .to_owned()
    })?;
    chrono::TimeDelta::from_std(ago)
        .ok()
        .and_then(|ago| now.checked_sub_signed(ago))
        .ok_or_else(|| "the duration reaches too far back".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::FromArgMatches;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mantlectl").chain(args.iter().copied()))
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--scope",
            "executions:read,executions:write",
            "--scope",
            "*",
            "--expires-in",
            "30d",
            "-o",
            "json",
            "--address",
            "https://mantle.example.com",
        ])
        .unwrap();
        assert_eq!(cli.tenant.as_deref(), Some("acme"));
        assert_eq!(cli.output, OutputFormat::Json);
        assert!(cli.address.tls);
        let Command::Keys(KeysCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.scopes, ["executions:read", "executions:write", "*"]);
        assert_eq!(args.expires_in, Some(Duration::from_secs(30 * 86_400)));
    }

    #[test]
    fn invalid_values_are_usage_errors() {
        let err = parse(&["--address", "nohost", "version"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["keys", "create", "--scope", "*", "--expires-in", "3y"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["keys", "create"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn file_commands_need_files() {
        let err = parse(&["validate"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let cli = parse(&["apply", "a.yaml", "dir/b.yaml", "--tenant", "acme"]).unwrap();
        let Command::Apply(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            args.files,
            [PathBuf::from("a.yaml"), PathBuf::from("dir/b.yaml")]
        );
        assert_eq!(cli.tenant.as_deref(), Some("acme"));
    }

    #[test]
    fn workflow_versions_are_positive() {
        let cli = parse(&["workflows", "get", "hello", "--version", "2", "--source"]).unwrap();
        let Command::Workflows(WorkflowsCommand::Get {
            name,
            version,
            source,
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!((name.as_str(), version, source), ("hello", Some(2), true));
        let err = parse(&["workflows", "get", "hello", "--version", "0"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn update_needs_a_change() {
        let err = parse(&["tenants", "update", "acme"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let cli = parse(&["tenants", "update", "acme", "--display-name", ""]).unwrap();
        let Command::Tenants(TenantsCommand::Update { display_name, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(display_name.as_deref(), Some(""));
    }

    #[test]
    fn tenant_ai_settings_flags() {
        let cli = parse(&[
            "tenants",
            "update",
            "acme",
            "--max-cost-usd-per-execution",
            "2.5",
            "--max-tokens-per-day",
            "100000",
            "--default-credential",
            "openai=my-openai-key",
            "--default-credential",
            "anthropic=",
        ])
        .unwrap();
        let Command::Tenants(TenantsCommand::Update { limits, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(limits.max_cost_usd_per_execution, Some(2.5));
        assert_eq!(limits.max_tokens_per_day, Some(100_000));
        assert_eq!(
            limits.default_credentials,
            [
                ("openai".to_owned(), "my-openai-key".to_owned()),
                ("anthropic".to_owned(), String::new()),
            ]
        );
        for bad in [
            &["--max-cost-usd-per-execution", "-1"][..],
            &["--max-cost-usd-per-execution", "NaN"],
            &["--max-cost-usd-per-execution", "inf"],
            &["--max-tokens-per-day", "-1"],
            &["--default-credential", "openai"],
            &[
                "--default-credential",
                "openai=k",
                "--clear-default-credentials",
            ],
        ] {
            let args: Vec<&str> = ["tenants", "update", "acme"]
                .into_iter()
                .chain(bad.iter().copied())
                .collect();
            let err = parse(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}: {err}");
        }
        assert!(parse(&["tenants", "update", "acme", "--clear-default-credentials"]).is_ok());
    }

    fn conflicts(args: &[&str]) -> Result<(), clap::Error> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("mantlectl").chain(args.iter().copied()))
            .unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        check_conflicts(&cli, &matches)
    }

    #[test]
    fn operator_conflicts_with_a_command_line_tenant() {
        let err = conflicts(&["keys", "list", "--operator", "--tenant", "acme"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(err.exit_code(), 2);
        let err = conflicts(&[
            "--tenant",
            "acme",
            "keys",
            "create",
            "--scope",
            "*",
            "--operator",
        ]);
        assert!(err.is_err());
        assert!(conflicts(&["keys", "list", "--operator"]).is_ok());
        assert!(conflicts(&["keys", "list", "--tenant", "acme"]).is_ok());
        assert!(conflicts(&["--tenant", "acme", "whoami"]).is_ok());
    }

    #[test]
    fn run_takes_inputs_and_one_wait_mode() {
        let cli = parse(&[
            "run",
            "flows/hello.yaml",
            "--input",
            "who=a=b",
            "--input",
            "n=",
            "--follow",
            "--version",
            "3",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.target, "flows/hello.yaml");
        assert_eq!(
            args.inputs,
            [
                ("who".to_owned(), "a=b".to_owned()),
                ("n".to_owned(), String::new())
            ]
        );
        assert!(args.waiting.follow && !args.waiting.wait);
        assert_eq!(args.version, Some(3));
        let err = parse(&["run", "hello", "--wait", "--follow"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let cli = parse(&["run", "hello", "--wait", "--timeout", "1m30s"]).unwrap();
        let Command::Run(args) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.waiting.timeout, Some(Duration::from_secs(90)));
        let err = parse(&["run", "hello", "--input", "novalue"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["run", "hello", "--input", "=x"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn a_timeout_needs_a_wait() {
        let err = conflicts(&["run", "hello", "--timeout", "10s"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--wait or --follow"), "{err}");
        assert!(conflicts(&["run", "hello", "--follow", "--timeout", "10s"]).is_ok());
        let err = conflicts(&["retry", "0190", "--timeout", "10s"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(conflicts(&["retry", "0190", "--wait", "--timeout", "10s"]).is_ok());
        let err = parse(&["retry", "0190", "--wait", "--follow"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn secrets_take_exactly_one_source_of_fields() {
        let cli = parse(&[
            "secrets",
            "create",
            "api",
            "--type",
            "bearer",
            "--field",
            "token=-x=y",
            "--field",
            "b=",
        ])
        .unwrap();
        let Command::Secrets(SecretsCommand::Create { name, kind, fields }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!((name.as_str(), kind.as_str()), ("api", "bearer"));
        assert_eq!(fields.field, ["token=-x=y", "b="]);
        assert!(fields.from_file.is_none() && !fields.from_stdin);

        let cli = parse(&["secrets", "update", "api", "--from-stdin"]).unwrap();
        let Command::Secrets(SecretsCommand::Update { fields, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert!(fields.from_stdin && fields.field.is_empty());

        let err = parse(&["secrets", "create", "api", "--type", "bearer"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = parse(&["secrets", "create", "api", "--field", "token=x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = parse(&[
            "secrets",
            "update",
            "api",
            "--field",
            "token=x",
            "--from-file",
            "f.json",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = parse(&[
            "secrets",
            "update",
            "api",
            "--type",
            "bearer",
            "--from-stdin",
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), 2, "update takes no --type");
    }

    #[test]
    fn secrets_usage_errors_do_not_echo_values() {
        // A conflict names the flags, never the value given with them.
        let err = parse(&[
            "secrets",
            "update",
            "api",
            "--field",
            "token=hunter2-secret",
            "--from-stdin",
        ])
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2-secret"), "{err}");
    }

    #[test]
    fn rotate_key_batch_size_is_positive() {
        let cli = parse(&["secrets", "rotate-key", "--batch-size", "50"]).unwrap();
        let Command::Secrets(SecretsCommand::RotateKey { batch_size }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(batch_size, Some(50));
        let err = parse(&["secrets", "rotate-key", "--batch-size", "0"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn audit_list_takes_filters_and_a_limit_of_50_by_default() {
        let cli = parse(&[
            "audit",
            "list",
            "--actor",
            "ab12",
            "--action",
            "secret.*",
            "--result",
            "refused",
            "--since",
            "2025-01-31T10:00:00+01:00",
        ])
        .unwrap();
        let Command::Audit(AuditCommand::List(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.actor.as_deref(), Some("ab12"));
        assert_eq!(args.action.as_deref(), Some("secret.*"));
        assert_eq!(args.result.as_deref(), Some("refused"));
        assert_eq!(
            args.since,
            DateTime::parse_from_rfc3339("2025-01-31T09:00:00Z")
                .ok()
                .map(|t| t.with_timezone(&Utc))
        );
        assert_eq!(args.limit, 50);
        let err = parse(&["audit", "list", "--since", "yesterday"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--since"), "{err}");
        let err = parse(&["audit", "list", "--limit", "0"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        let now = DateTime::parse_from_rfc3339("2025-01-31T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| since_at(s, now).map(|t| t.to_rfc3339());
        assert_eq!(at("1h").unwrap(), "2025-01-31T08:00:00+00:00");
        assert_eq!(at("7d").unwrap(), "2025-01-24T09:00:00+00:00");
        assert_eq!(at("1h30m").unwrap(), "2025-01-31T07:30:00+00:00");
        assert_eq!(
            at("2024-12-24T18:00:00.5Z").unwrap(),
            "2024-12-24T18:00:00.500+00:00"
        );
        assert!(at("0s").is_err());
        assert!(at("2024-12-24").is_err());
        assert!(at("99999999999w").is_err());
    }

    #[test]
    fn webhook_deliveries_parse_status_names() {
        let cli = parse(&[
            "webhooks",
            "deliveries",
            "--status",
            "Delivered",
            "--execution",
            "0190",
            "--full",
        ])
        .unwrap();
        let Command::Webhooks(WebhooksCommand::Deliveries(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.status, Some(DeliveryStatus::Delivered));
        assert_eq!(args.execution.as_deref(), Some("0190"));
        assert!(args.full);
        assert_eq!(args.limit, 50);
        let err = parse(&["webhooks", "deliveries", "--status", "sent"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--status"), "{err}");
    }

    #[test]
    fn triggers_take_ids_and_fire_waits_like_run() {
        let cli = parse(&["triggers", "list", "--workflow", "report"]).unwrap();
        let Command::Triggers(TriggersCommand::List { workflow }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(workflow.as_deref(), Some("report"));
        let cli = parse(&["triggers", "list"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Triggers(TriggersCommand::List { workflow: None })
        ));
        let cli = parse(&["triggers", "pause", "0190"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Triggers(TriggersCommand::Pause { id }) if id == "0190"
        ));
        let err = parse(&["triggers", "resume"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let cli = parse(&["triggers", "fire", "0190", "--follow", "--timeout", "1m"]).unwrap();
        let Command::Triggers(TriggersCommand::Fire { id, waiting }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(id, "0190");
        assert!(waiting.follow && !waiting.wait);
        assert_eq!(waiting.timeout, Some(Duration::from_secs(60)));
        let err = parse(&["triggers", "fire", "0190", "--wait", "--follow"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let err = conflicts(&["triggers", "fire", "0190", "--timeout", "10s"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(conflicts(&["triggers", "fire", "0190", "--wait", "--timeout", "10s"]).is_ok());
    }

    #[test]
    fn executions_list_parses_status_names() {
        let cli = parse(&[
            "executions",
            "list",
            "--status",
            "timed_out",
            "--limit",
            "5",
        ])
        .unwrap();
        let Command::Executions(ExecutionsCommand::List { status, limit, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(status, Some(ExecutionStatus::TimedOut));
        assert_eq!(limit, Some(5));
        let err = parse(&["executions", "list", "--status", "done"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = parse(&["executions", "list", "--limit", "0"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
