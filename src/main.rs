use clap::Parser;
use nexus::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
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
