mod cli;

use clap::Parser;
use cli::{Cli, Command};
use nexus_consensus::store::datadir;

/// mimalloc instead of glibc malloc: requests are allocated on the session threads and
/// freed on the Raft thread (and back), which glibc serves through locked arenas (~10% of
/// the node's CPU in a task benchmark, docs/benchmarks.md); and freed 16 MiB scrypt
/// buffers go back to the system instead of staying resident after a login burst.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Admin(nexus_admin::AdminCmd::Cluster(nexus_admin::ClusterCmd::Secret)) => {
            println!("{}", nexus_cluster::secret::generate());
            std::process::ExitCode::SUCCESS
        }
        // 1: the node refused (the error's line says why); 2: no answer (connection, input).
        Command::Admin(cmd) => match nexus_admin::run(cli.connection, cmd) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nexus: {e:#}");
                let refused = matches!(
                    e.downcast_ref::<nexus_client::CallError>(),
                    Some(nexus_client::CallError::Rpc(_))
                );
                std::process::ExitCode::from(if refused { 1 } else { 2 })
            }
        },
        Command::Serve(args) => {
            nexus_server::telemetry::init(args.log_format, args.verbose);
            let result =
                actix_rt::System::new().block_on(nexus_server::server::run_until_signal(*args));
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("nexus: {e:#}");
                    if e.downcast_ref::<datadir::Refusal>().is_some() {
                        std::process::ExitCode::from(datadir::REFUSED_EXIT_CODE)
                    } else {
                        std::process::ExitCode::FAILURE
                    }
                }
            }
        }
        Command::Rebuild(args) => match datadir::rebuild(&args.data_dir) {
            Ok(aside) => {
                println!(
                    "moved {} to {} (delete it once the node is back). Start the node as \
                     before, with --join naming its peers: it joins as a new member, copies \
                     the state from them and replaces its old raft id.",
                    args.data_dir.display(),
                    aside.display()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nexus rebuild: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Restore(args) => {
            let addr = args.advertise.clone().unwrap_or_default();
            match nexus_server::recovery::restore_into(&args.data_dir, &args.file, addr) {
                Ok(r) => {
                    println!(
                        "restored {} (index {}, taken {} from cluster {}) into {}: a new \
                         cluster {} of one member. Start the node on this data dir; other \
                         nodes join it with --join.",
                        args.file.display(),
                        r.backup.index,
                        r.backup.taken_at,
                        r.backup.cluster,
                        args.data_dir.display(),
                        r.founded.cluster
                    );
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("nexus restore: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Bench(args) => match nexus_bench::run(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nexus bench: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
        // 0: no violation; 1: violations found; 2: the run itself failed.
        Command::Chaos(args) => match nexus_chaos::run(args) {
            Ok(true) => std::process::ExitCode::SUCCESS,
            Ok(false) => std::process::ExitCode::from(1),
            Err(e) => {
                eprintln!("nexus chaos: {e:#}");
                std::process::ExitCode::from(2)
            }
        },
    }
}
