//! `mptcp-loader`: see `mptcp_loader::cli`.

use std::{error::Error as _, process::ExitCode};

use clap::Parser as _;
use mptcp_loader::cli::{execute, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Info by default, so each installed connection is logged; RUST_LOG overrides.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the message, then each underlying cause.
            let mut line = format!("error: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !line.contains(&cause_text) {
                    line.push_str(": ");
                    line.push_str(&cause_text);
                }
                source = cause.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}
