//! The `ditto` command-line program.

fn main() -> std::process::ExitCode {
    ditto::cli::main()
}
