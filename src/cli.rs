//! The `nexus` command line: the server, the operator's tools and the admin commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "nexus",
    version = nexus_server::build_info::VERSION_LINE,
    about = "Nexus-rs: a clustered JSON-RPC message broker (Nexus API 1.9)"
)]
pub struct Cli {
    /// Where the admin commands connect (ignored by serve, bench and chaos).
    #[command(flatten)]
    pub connection: nexus_admin::Connection,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(Box<nexus_server::config::ServeArgs>),
    /// Load a running node over WebSocket and report throughput and latency.
    Bench(nexus_bench::BenchArgs),
    /// Start a cluster, drive a workload while injecting faults, check the history.
    Chaos(nexus_chaos::ChaosArgs),
    /// Prepare a stopped cluster member whose storage is damaged to rebuild from its peers:
    /// its data dir is moved aside (kept, never deleted) and, started again as before, the
    /// node joins as a new member that replaces its old raft id.
    Rebuild(RebuildArgs),
    /// Seeds an empty data dir from a backup (`nexus backup`): started on it, the node is
    /// the only member of a new cluster, with a new identity, that other nodes join.
    Restore(RestoreArgs),
    /// Prints a shell completion script: `source <(nexus completions bash)`, or put it
    /// where your shell loads completions from (zsh: a file `_nexus` in $fpath).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Admin(nexus_admin::AdminCmd),
}

#[derive(Debug, Clone, Args)]
pub struct RebuildArgs {
    /// The stopped node's data dir.
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// The new node's data dir: it must be empty or not exist.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The cluster address the node will advertise (its --advertise, else its --cluster).
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "standalone")]
    pub advertise: Option<String>,
    /// The node will run standalone (no --cluster): it needs no address.
    #[arg(long, conflicts_with = "advertise")]
    pub standalone: bool,
}
