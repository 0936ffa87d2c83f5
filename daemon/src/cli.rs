//! The `mantle` command line.

use std::collections::HashMap;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, Flags};
use crate::server::{self, StartError};
use crate::tenancy::Tenancy;

/// Mantle: durable workflow engine daemon.
#[derive(Debug, Parser)]
#[command(name = "mantle", version = crate::VERSION)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: gRPC and HTTP on one port.
    Serve(Flags),
    /// Apply database migrations and exit.
    Init(Flags),
    /// Write a consistent copy of the SQLite database while daemons serve (PostgreSQL: use
    /// `pg_dump -Fc`, see docs/backup.md).
    Backup {
        /// The file to write; it must not exist (a backup never overwrites one).
        #[arg(long, value_name = "PATH")]
        output: std::path::PathBuf,
        #[command(flatten)]
        flags: Flags,
    },
    /// Inspect database migrations.
    Migrate {
        #[command(subcommand)]
        command: MigrateCommand,
    },
    /// Manage operator keys directly in the database.
    AdminKey {
        #[command(subcommand)]
        command: AdminKeyCommand,
    },
    /// Encryption keys of secrets.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Validate workflow files offline (no daemon, no database): one FILE:LINE:COL line per problem.
    Validate {
        /// Workflow files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<std::path::PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
enum MigrateCommand {
    /// List applied and pending migrations, and those applied by a newer binary (unknown;
    /// exit code 65).
    Status(Flags),
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Print a new random encryption key (64 hex characters) for MANTLE_ENCRYPTION_KEY.
    GenerateKey,
    /// Re-encrypt every secret sealed with MANTLE_ENCRYPTION_KEY_PREVIOUS under
    /// MANTLE_ENCRYPTION_KEY, in batches; safe while daemons serve.
    RotateKey {
        /// Secrets per batch.
        #[arg(long, default_value_t = 100)]
        batch_size: u32,
        #[command(flatten)]
        flags: Flags,
    },
}

#[derive(Debug, Subcommand)]
enum AdminKeyCommand {
    /// Mint an operator key (scope tenants:admin) and print its token once.
    Create {
        /// A label for the key.
        #[arg(long, default_value = "operator")]
        name: String,
        #[command(flatten)]
        flags: Flags,
    },
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let flags = match &cli.command {
        Command::Version => {
            println!("mantle {}", crate::VERSION);
            return 0;
        }
        Command::Validate { files } => return validate_files(files),
        Command::Secrets {
            command: SecretsCommand::GenerateKey,
        } => {
            println!(
                "{}",
                crate::secrets::crypto::KeyRing::generate_hex().as_str()
            );
            return 0;
        }
        Command::Secrets {
            command: SecretsCommand::RotateKey { flags, .. },
        } => flags,
        Command::Serve(f) | Command::Init(f) | Command::Backup { flags: f, .. } => f,
        Command::Migrate {
            command: MigrateCommand::Status(f),
        } => f,
        Command::AdminKey {
            command: AdminKeyCommand::Create { flags, .. },
        } => flags,
    };
    let config = match config::load(&env, flags) {
        Ok(c) => c,
        Err(err) => return fail(&StartError::Config(err.0)),
    };
    crate::telemetry::init_logging(&config.log);
    // TLS for outbound requests uses ring, already built for the database driver.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => return fail(&StartError::Other(err.into())),
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(_) => server::serve(config).await,
            Command::Init(_) => init(&config).await,
            Command::Migrate { .. } => migrate_status(&config).await,
            Command::Backup { ref output, .. } => backup(&config, output).await,
            Command::AdminKey {
                command: AdminKeyCommand::Create { name, .. },
            } => admin_key_create(&config, &name).await,
            Command::Secrets {
                command: SecretsCommand::RotateKey { batch_size, .. },
            } => rotate_key(&config, batch_size).await,
            Command::Version | Command::Validate { .. } | Command::Secrets { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => 0,
        Err(err) => fail(&err),
    }
}

/// `mantle secrets rotate-key`: the same re-encryption as RotateEncryptionKey, run against
/// the database directly.
async fn rotate_key(config: &Config, batch_size: u32) -> Result<(), StartError> {
    let store = server::open_store(config, false).await?;
    store.migrate().await?;
    let ring = std::sync::Arc::new(server::key_ring(config, store.backend())?);
    crate::secrets::check_keys(store.as_ref(), &ring)
        .await
        .map_err(StartError::Config)?;
    let secrets = crate::secrets::Secrets::new(store, ring.clone());
    let operator = crate::auth::Caller {
        key_id: "cli:mantle secrets rotate-key".to_owned(),
        tenant: None,
        scopes: crate::auth::ScopeSet::new([crate::auth::Scope::TenantsAdmin]),
        operator: true,
    };
    let rotation = secrets
        .rotate(&operator, batch_size)
        .await
        .map_err(|e| StartError::Other(anyhow::anyhow!(e.to_string())))?;
    println!(
        "re-encrypted {} secret(s) with key {}; {} remaining",
        rotation.rotated,
        ring.current_id(),
        rotation.remaining
    );
    Ok(())
}

/// `mantle validate`: checks every file and exits 1 if any has a problem.
fn validate_files(files: &[std::path::PathBuf]) -> i32 {
    let mut failed = false;
    for path in files {
        let shown = path.display().to_string();
        let source = match std::fs::read_to_string(path) {
            Ok(s) => s,
            Err(err) => {
                println!("{shown}: cannot read the file: {err}");
                failed = true;
                continue;
            }
        };
        match crate::definitions::load(&source, &shown) {
            Ok(loaded) => {
                // Warnings do not fail the check (stderr, like the ok line; problems go to
                // stdout); secrets are a daemon's to check.
                for w in &loaded.warnings {
                    eprintln!("warning: {}", w.render(&shown));
                }
                eprintln!(
                    "{shown}: ok ({}, {} step{})",
                    loaded.spec.name,
                    loaded.spec.steps.len(),
                    if loaded.spec.steps.len() == 1 {
                        ""
                    } else {
                        "s"
                    }
                )
            }
            Err(crate::definitions::Error::Invalid { file, problems }) => {
                failed = true;
                for p in &problems {
                    println!("{}", p.render(&file));
                }
            }
            Err(other) => {
                failed = true;
                println!("{shown}: {other}");
            }
        }
    }
    i32::from(failed)
}

fn fail(err: &StartError) -> i32 {
    eprintln!("mantle: error: {err}");
    err.exit_code()
}

async fn init(config: &Config) -> Result<(), StartError> {
    let store = server::open_store(config, false).await?;
    store.migrate().await?;
    let status = store.migration_status().await?;
    eprintln!(
        "mantle: {} database is up to date ({} migrations applied)",
        store.backend().as_str(),
        status.iter().filter(|m| m.applied_at.is_some()).count()
    );
    Ok(())
}

/// `mantle migrate status`: the table of migrations; exit code 65 (with what to do) when
/// the database has migrations this binary does not know.
async fn migrate_status(config: &Config) -> Result<(), StartError> {
    let store = server::open_store(config, false).await?;
    let status = store.migration_status().await?;
    println!(
        "{:<8} {:<9} {:<32} DESCRIPTION",
        "VERSION", "STATE", "APPLIED AT"
    );
    for m in &status {
        let at = m.applied_at.map_or_else(
            || "-".to_owned(),
            |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
        println!(
            "{:<8} {:<9} {:<32} {}",
            m.version,
            m.state(),
            at,
            m.description
        );
    }
    Ok(crate::store::refuse_newer_schema(&status)?)
}

/// `mantle backup --output PATH`: a consistent copy of the SQLite database, beside a serving
/// daemon (it takes no lock the daemon holds).
async fn backup(config: &Config, output: &std::path::Path) -> Result<(), StartError> {
    let options = server::store_options(config, false);
    // Opening creates a missing database: a backup of nothing is refused first.
    if let Some(path) = crate::store::sqlite_path(&options)
        && !path.is_file()
    {
        return Err(StartError::Config(format!(
            "no SQLite database at {}: nothing to back up; check MANTLE_DATA_DIR and \
             MANTLE_DATABASE_URL",
            path.display()
        )));
    }
    let store = crate::store::open(&options).await?;
    let began = std::time::Instant::now();
    let result = store.backup(output).await;
    store.close().await;
    let bytes = result?;
    println!(
        "wrote {} ({bytes} bytes) in {:.3}s",
        output.display(),
        began.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn admin_key_create(config: &Config, name: &str) -> Result<(), StartError> {
    let store = server::open_store(config, false).await?;
    store.migrate().await?;
    let created = Tenancy::new(store, crate::connectors::NetworkPolicy::default())
        .bootstrap_operator_key(name)
        .await?;
    println!("{}", created.token);
    eprintln!(
        "mantle: created operator key {}; the token above is shown only once",
        created.key.id
    );
    Ok(())
}
