//! The `edgegate` binary: parses arguments and hands over to the library.

fn main() -> std::process::ExitCode {
    edgegate::cli::main()
}
