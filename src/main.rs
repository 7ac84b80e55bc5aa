use std::process::ExitCode;

use clap::Parser;
use tts_worker::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    match cli::run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", cli::report(&e));
            ExitCode::FAILURE
        }
    }
}
