//! `mnist`: train, evaluate and predict with the Deep MNIST for Experts network.

use std::process::ExitCode;

use clap::Parser;
use mnist_cli::{Cli, Status, run};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(Status::Success) => ExitCode::SUCCESS,
        Ok(Status::PartialFailure) => ExitCode::from(1),
        Ok(Status::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
