//! `underpass-edge`: hand the command line over to the library.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    underpass_edge::cli::main()
}
