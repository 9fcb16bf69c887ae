//! `bulwark node` and `bulwark cluster`: running a node, and asking the cluster how it
//! stands.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bulwark_node::cluster::config::NodeConfig;
use bulwark_node::cluster::membership::Status;
use bulwark_node::cluster::node::{Node, cluster_status};
use clap::{Args, Subcommand};

use crate::{EXIT_USAGE, Outcome};

/// Exit code when the cluster cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 4;

/// `bulwark node`.
#[derive(Args)]
pub struct NodeArgs {
    /// The node's configuration (TOML).
    #[arg(long)]
    config: PathBuf,
}

/// `bulwark cluster ...`.
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Every node heard from: alive, suspect or dead, with agents, tools and labels.
    Status {
        /// A NATS server of the cluster.
        #[arg(long)]
        nats: String,
        /// The cluster's name.
        #[arg(long)]
        cluster: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn tokio() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs a node until SIGINT or SIGTERM.
pub fn node(args: NodeArgs) -> anyhow::Result<Outcome> {
    let config = match NodeConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => return Ok(Outcome::Exit(EXIT_USAGE, format!("error: {e}"))),
    };
    tokio()?.block_on(async move {
        let node = match Node::builder(config).start().await {
            Ok(n) => n,
            Err(e @ bulwark_node::cluster::node::NodeError::Nats(_)) => {
                return Ok(Outcome::Exit(EXIT_UNREACHABLE, format!("error: {e}")));
            }
            Err(e) => return Ok(Outcome::Exit(EXIT_USAGE, format!("error: {e}"))),
        };
        println!("ready {}", node.id());
        node.run_until(shutdown_signal()).await?;
        Ok(Outcome::Success)
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        // Without signal handlers the node runs until it is killed.
        _ => std::future::pending().await,
    }
}

/// Runs a `cluster` command.
pub fn run(cmd: ClusterCommand) -> anyhow::Result<Outcome> {
    match cmd {
        ClusterCommand::Status {
            nats,
            cluster,
            json,
        } => tokio()?.block_on(async move {
            let client = match tokio::time::timeout(
                Duration::from_secs(10),
                async_nats::ConnectOptions::new()
                    .name("bulwark-cli")
                    .connect(nats.as_str()),
            )
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return Ok(Outcome::Exit(
                        EXIT_UNREACHABLE,
                        format!("error: cannot reach NATS at {nats}: {e}"),
                    ));
                }
                Err(_) => {
                    return Ok(Outcome::Exit(
                        EXIT_UNREACHABLE,
                        format!("error: cannot reach NATS at {nats} within 10 s"),
                    ));
                }
            };
            let status = match cluster_status(&client, &cluster).await {
                Ok(s) => s,
                Err(e) => return Ok(Outcome::Exit(EXIT_UNREACHABLE, format!("error: {e}"))),
            };
            print_status(&status, json)?;
            Ok(Outcome::Success)
        }),
    }
}

fn print_status(status: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(status)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:>6} {:>10}  tools / labels",
        "node", "state", "agents", "last seen"
    );
    for n in &status.nodes {
        let state = serde_json::to_value(n.state)?;
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<16} {:<8} {:>6} {:>8}ms  {} / {}",
            n.id,
            state.as_str().unwrap_or("?"),
            n.agents,
            n.last_seen_ms,
            n.tools.join(","),
            labels.join(",")
        );
    }
    Ok(())
}
