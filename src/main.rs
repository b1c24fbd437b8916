//! The `contabo-gateway` binary: parse the command line and dispatch.

use clap::Parser;

fn main() {
    let cli = contabo_gateway::cli::Cli::parse();
    if let Err(message) = contabo_gateway::cli::run(cli) {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}
