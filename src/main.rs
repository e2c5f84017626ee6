//! The `tokengate` binary: parse the command line, run, print one error line, exit.

use clap::Parser;
use tokengate::cli::{self, Cli};

/// mimalloc: the proxy allocates small, short-lived buffers per request (header maps, bytes);
/// measured faster than glibc malloc on that pattern (benches/load.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // clap exits 2 on a usage error (0 for --help / --version) by itself.
    let args = Cli::parse();
    let result = try_main(args);
    // Batched access-log lines go out before the exit (and before the error line).
    tokengate::logsink::STDERR.flush();
    std::process::exit(match result {
        Ok(()) => 0,
        Err(e) => {
            // The error may quote text from the API (a refused value): printed escaped too.
            eprintln!("tokengate: {}", cli::printable(&format!("{e:#}")));
            cli::exit_code(&e)
        }
    });
}

fn try_main(args: Cli) -> anyhow::Result<()> {
    cli::init_tracing();
    runtime()?.block_on(cli::run(args))
}

/// On one CPU (a container limited to one core, or `taskset` as nginx's single worker gets)
/// the single-threaded scheduler does the same work without the work-stealing machinery;
/// otherwise one worker per available CPU. `TOKIO_WORKER_THREADS` still overrides the count.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let one_cpu = std::env::var_os("TOKIO_WORKER_THREADS").is_none() && cpus == 1;
    if one_cpu {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    }
}
