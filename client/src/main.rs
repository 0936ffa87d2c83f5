//! `mantlectl`: command-line client for the Mantle daemon. See `mantlectl --help`.

mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let matches = cli::Cli::command().get_matches();
    let cli = cli::Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = cli::check_conflicts(&cli, &matches) {
        e.exit();
    }
    let address = cli.address.clone();
    match commands::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let (message, code) = commands::report(&err, &address);
            if let Some(message) = message {
                eprintln!("{message}");
            }
            ExitCode::from(code)
        }
    }
}
