//! The `edgegate` binary: parses arguments and hands over to the library.

// Measured (loadtest/RESULTS.md): glibc malloc cost ~3.4 µs of user CPU per
// proxied request; mimalloc's per-thread free lists suit Pingora's many
// small, short-lived allocations (user CPU 13.3 -> 9.9 µs/request).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    edgegate::cli::main()
}
