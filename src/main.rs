use std::process::ExitCode;

use clap::Parser;
use tts_worker::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    match tts_worker::run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", tts_worker::report(&e));
            ExitCode::FAILURE
        }
    }
}
