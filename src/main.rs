//! The `runwire` binary: parse the command line and hand over to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = runwire::Cli::parse();
    match runwire::run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("runwire: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
