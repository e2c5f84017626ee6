//! The `tokengate` binary: parse the command line, run, print one error line, exit.

use clap::Parser;
use tokengate::cli::{self, Cli};

fn main() {
    // clap exits 2 on a usage error (0 for --help / --version) by itself.
    let args = Cli::parse();
    std::process::exit(match try_main(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tokengate: {e:#}");
            1
        }
    });
}

fn try_main(args: Cli) -> anyhow::Result<()> {
    cli::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(cli::run(args))
}
