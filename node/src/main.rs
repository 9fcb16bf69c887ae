//! `bulwark`: the command-line interface and the cluster node.
//!
//! This crate owns the binary: argument parsing, reading files and standard input,
//! exit codes and human-facing output. It never makes a security decision itself;
//! every decision is delegated to `bulwark-capabilities` and `bulwark-runtime`.

mod agent_cli;
mod audit;
mod cluster_cli;
mod guard;
mod keys;
mod proposals;
mod sandbox;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for unusable input or usage errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a denied check.
pub const EXIT_DENIED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "bulwark",
    version,
    about = "A runtime for AI agents that stays safe when the model is compromised"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process; boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Generate an ed25519 private key (file mode 0600); prints the public key in hex.
    Keygen(keys::KeygenArgs),
    /// Work with existing keys.
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Mint, attenuate, inspect and check capability tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Verify and read the audit trail of a data directory.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Scan text for prompt injection; redact personal data and secrets.
    #[command(subcommand)]
    Guard(guard::GuardCommand),
    /// List proposals; approve, reject or cancel them with an operator key.
    #[command(subcommand)]
    Proposals(proposals::ProposalsCommand),
    /// Run Python, JavaScript or WebAssembly in the sandbox, with limits.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Run a cluster node until SIGINT or SIGTERM; prints `ready <id>` once it serves.
    Node(cluster_cli::NodeArgs),
    /// Ask a cluster how it stands.
    #[command(subcommand)]
    Cluster(cluster_cli::ClusterCommand),
    /// Revoke a token block on every live node of a cluster (signed by an operator);
    /// exits 0 once each has acknowledged.
    Revoke(cluster_cli::RevokeArgs),
    /// Spawn agents on the nodes of a cluster, give them tasks, list them.
    #[command(subcommand)]
    Agent(agent_cli::AgentCommand),
}

/// What a command concluded; errors are reported by `main`.
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit [`EXIT_DENIED`] with this reason on stderr.
    Denied(String),
    /// Exit with this code and this one-line reason on stderr.
    Exit(u8, String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(args) => keys::keygen(args),
        Command::Key(cmd) => keys::run(cmd),
        Command::Token(cmd) => token::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Guard(cmd) => guard::run(cmd),
        Command::Proposals(cmd) => proposals::run(cmd),
        Command::Sandbox(cmd) => sandbox::run(cmd),
        Command::Node(args) => cluster_cli::node(args),
        Command::Cluster(cmd) => cluster_cli::run(cmd),
        Command::Revoke(args) => cluster_cli::revoke(args),
        Command::Agent(cmd) => agent_cli::run(cmd),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Denied(reason)) => {
            eprintln!("denied: {reason}");
            ExitCode::from(EXIT_DENIED)
        }
        Ok(Outcome::Exit(code, reason)) => {
            eprintln!("{reason}");
            ExitCode::from(code)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}
