//! The `underpass` binary: see `underpass_connector::cli`.

fn main() -> std::process::ExitCode {
    underpass_connector::cli::main()
}
