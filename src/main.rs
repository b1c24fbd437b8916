//! The `contabo-gateway` binary: parse the command line and dispatch.

use clap::Parser;

/// mimalloc instead of glibc's malloc: the proxy path allocates and frees small buffers on every
/// call from several threads, which glibc's per-thread arenas serve with more locking and trimming.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = contabo_gateway::cli::Cli::parse();
    contabo_gateway::cli::run(cli).unwrap_or_else(|message| {
        eprintln!("error: {message}");
        std::process::ExitCode::FAILURE
    })
}
