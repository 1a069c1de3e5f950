use clap::Parser;

/// mimalloc rather than the system allocator: a server with thousands of
/// mostly idle sessions and bursts of 19 MiB password hashes on blocking
/// threads kept hundreds of MiB in glibc's per-thread arenas after the
/// bursts; mimalloc gives freed pages back (measured in docs/BENCHMARKS.md,
/// IMAP IDLE memory).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = mailroom::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(mailroom::run(cli))
}
