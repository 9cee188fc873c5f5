use clap::Parser;
use nexus::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            return_freed_memory();
            nexus::telemetry::init(args.log_format, args.verbose);
            let result = actix_rt::System::new().block_on(nexus::server::run_until_signal(*args));
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("nexus: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Bench(args) => match nexus::bench::run(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nexus bench: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        // 0: no violation; 1: violations found; 2: the run itself failed.
        Command::Chaos(args) => match nexus::chaos::run(args) {
            Ok(true) => std::process::ExitCode::SUCCESS,
            Ok(false) => std::process::ExitCode::from(1),
            Err(e) => {
                eprintln!("nexus chaos: {e:#}");
                std::process::ExitCode::from(2)
            }
        },
    }
}

/// glibc serves a large allocation from the heap once one of that size was freed (its mmap
/// threshold adapts upwards), and then keeps it: every login's 16 MiB scrypt buffer would
/// stay resident after a login burst. A fixed threshold keeps such buffers mmapped, so they
/// go back to the system when freed.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
