//! `underpass-edge`: parse the command line and hand over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use underpass_edge::cli::{run, Cli};

fn main() -> ExitCode {
    run(Cli::parse())
}
