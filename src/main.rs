mod cli;

use cli::{Cli, Command};
use nexus_consensus::store::datadir;

/// mimalloc instead of glibc malloc: requests are allocated on the session threads and
/// freed on the Raft thread (and back), which glibc serves through locked arenas (~10% of
/// the node's CPU in a task benchmark, docs/benchmarks.md); and freed 16 MiB scrypt
/// buffers go back to the system instead of staying resident after a login burst.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line, with `serve --config FILE`'s settings merged in. Prints clap's
/// help, version and errors itself, and `serve --print-config`, then exits.
fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    use nexus_server::config_file;
    let command = Cli::command();
    let (matches, from_file) =
        match config_file::parse_with_file(&command, std::env::args_os().collect()) {
            Ok(parsed) => parsed,
            Err(e) => match e.downcast::<clap::Error>() {
                Ok(clap_error) => clap_error.exit(),
                Err(e) => {
                    eprintln!("nexus: {e:#}");
                    std::process::exit(2);
                }
            },
        };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Serve(args), Some(("serve", serve))) = (&cli.command, matches.subcommand()) {
        if args.print_config {
            let serve_command = command.find_subcommand("serve").expect("serve exists");
            print!("{}", config_file::print(serve_command, serve, &from_file));
            std::process::exit(0);
        }
    }
    cli
}

/// Raises the open-files soft limit to the hard one, as Go programs do at start: a node's
/// connections and a bench's clients are files, and a soft limit of 1024 is common while
/// the hard one allows far more.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() -> std::process::ExitCode {
    raise_open_files_limit();
    let cli = parse();
    match cli.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "nexus", &mut script);
            // A reader that stops early (`| head`) is not an error of ours.
            let _ = std::io::stdout().write_all(&script);
            std::process::ExitCode::SUCCESS
        }
        Command::Admin(nexus_admin::AdminCmd::Cluster(nexus_admin::ClusterCmd::Secret)) => {
            println!("{}", nexus_cluster::secret::generate());
            std::process::ExitCode::SUCCESS
        }
        // 1: the node refused, or the cluster is unhealthy (the error's line says why);
        // 2: no answer (connection, input).
        Command::Admin(cmd) => match nexus_admin::run(cli.connection, cmd) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nexus: {e:#}");
                let refused = matches!(
                    e.downcast_ref::<nexus_client::CallError>(),
                    Some(nexus_client::CallError::Rpc(_))
                ) || e.downcast_ref::<nexus_admin::Unhealthy>().is_some();
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
                    let too_new = matches!(
                        e.downcast_ref::<nexus_consensus::store::StoreError>(),
                        Some(nexus_consensus::store::StoreError::TooNew(_))
                    );
                    if e.downcast_ref::<datadir::Refusal>().is_some() || too_new {
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
