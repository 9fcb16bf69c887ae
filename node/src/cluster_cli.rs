//! `bulwark node`, `bulwark cluster` and `bulwark revoke`: running a node, asking the
//! cluster how it stands, and revoking a token on every node.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bulwark_node::cluster::config::NodeConfig;
use bulwark_node::cluster::membership::{NodeState, Status};
use bulwark_node::cluster::node::{Node, RevokeAck, broadcast_revocation, cluster_status};
use bulwark_node::cluster::revocation::SignedRevocation;
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

/// Where the cluster is, and how to print: shared by the cluster commands.
#[derive(Args)]
pub struct Where {
    /// A NATS server of the cluster.
    #[arg(long)]
    pub nats: String,
    /// The cluster's name.
    #[arg(long)]
    pub cluster: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `bulwark cluster ...`.
#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Every node heard from: alive, suspect or dead, with agents, tools and labels.
    Status {
        #[command(flatten)]
        at: Where,
    },
}

pub(crate) fn tokio() -> anyhow::Result<tokio::runtime::Runtime> {
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
    // Logs on stderr, and spans over OTLP when BULWARK_OTLP_ENDPOINT is set.
    let telemetry =
        bulwark_runtime::telemetry::init(&bulwark_runtime::telemetry::TelemetryConfig::from_env())?;
    let outcome = tokio()?.block_on(async move {
        let node = match Node::builder(config).start().await {
            Ok(n) => n,
            Err(e @ bulwark_node::cluster::node::NodeError::Nats(_)) => {
                return Ok(Outcome::Exit(EXIT_UNREACHABLE, format!("error: {e}")));
            }
            Err(e) => return Ok(Outcome::Exit(EXIT_USAGE, format!("error: {e}"))),
        };
        println!("ready {}", node.id());
        if let Some(login) = node.dashboard_login() {
            eprintln!("dashboard: {login}");
        }
        node.run_until(shutdown_signal()).await?;
        Ok(Outcome::Success)
    });
    telemetry.shutdown()?;
    outcome
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
        ClusterCommand::Status { at } => tokio()?.block_on(async move {
            let Where {
                nats,
                cluster,
                json,
            } = at;
            let client = match connect_cli(&nats).await {
                Ok(c) => c,
                Err(outcome) => return Ok(outcome),
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

/// `bulwark revoke`: a signed revocation to every live node of a cluster.
#[derive(Args)]
pub struct RevokeArgs {
    /// A NATS server of the cluster.
    #[arg(long)]
    nats: String,
    /// The cluster's name.
    #[arg(long)]
    cluster: String,
    /// The revocation id of the token block to revoke (hex, as `token inspect` shows).
    #[arg(long)]
    id: String,
    /// The operator's private key file.
    #[arg(long)]
    operator_key: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Revokes on every live node; exits 0 once each has acknowledged.
pub fn revoke(args: RevokeArgs) -> anyhow::Result<Outcome> {
    let id = match hex::decode(&args.id) {
        Ok(id) if !id.is_empty() => id,
        _ => {
            return Ok(Outcome::Exit(
                EXIT_USAGE,
                format!("error: --id `{}` is not a hex revocation id", args.id),
            ));
        }
    };
    let key = match bulwark_capabilities::KeyPair::load(&args.operator_key) {
        Ok(k) => k,
        Err(e) => return Ok(Outcome::Exit(EXIT_USAGE, format!("error: {e}"))),
    };
    let signed = SignedRevocation::sign(&key, &id, std::time::SystemTime::now());
    tokio()?.block_on(async move {
        let client = match connect_cli(&args.nats).await {
            Ok(c) => c,
            Err(outcome) => return Ok(outcome),
        };
        let status = match cluster_status(&client, &args.cluster).await {
            Ok(s) => s,
            Err(e) => return Ok(Outcome::Exit(EXIT_UNREACHABLE, format!("error: {e}"))),
        };
        let live: Vec<String> = status
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Alive)
            .map(|n| n.id.clone())
            .collect();
        let acks = broadcast_revocation(
            &client,
            &args.cluster,
            &signed,
            &live,
            Duration::from_secs(10),
        )
        .await?;
        let slowest = acks.iter().map(|(_, t)| *t).max().unwrap_or_default();
        let refused: Vec<&RevokeAck> = acks
            .iter()
            .map(|(a, _)| a)
            .filter(|a| a.error.is_some())
            .collect();
        let missing: Vec<&String> = live
            .iter()
            .filter(|n| !acks.iter().any(|(a, _)| &a.node == *n))
            .collect();
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "id": args.id,
                    "acknowledged": acks.iter().filter(|(a, _)| a.error.is_none()).map(|(a, t)| serde_json::json!({"node": a.node, "ms": t.as_millis()})).collect::<Vec<_>>(),
                    "refused": refused.iter().map(|a| serde_json::json!({"node": a.node, "reason": a.error})).collect::<Vec<_>>(),
                    "missing": missing,
                    "slowest_ms": slowest.as_millis(),
                })
            );
        } else {
            for (a, t) in &acks {
                match &a.error {
                    None => println!("{:<16} revoked in {} ms", a.node, t.as_millis()),
                    Some(e) => println!("{:<16} refused: {e}", a.node),
                }
            }
            for n in &missing {
                println!("{n:<16} did not acknowledge within 10 s");
            }
            println!("slowest: {} ms", slowest.as_millis());
        }
        if let Some(a) = refused.first() {
            return Ok(Outcome::Denied(format!(
                "node {} refused the revocation: {}",
                a.node,
                a.error.as_deref().unwrap_or_default()
            )));
        }
        if !missing.is_empty() {
            return Ok(Outcome::Exit(
                EXIT_UNREACHABLE,
                format!("error: {} live node(s) did not acknowledge", missing.len()),
            ));
        }
        Ok(Outcome::Success)
    })
}

pub(crate) async fn connect_cli(nats: &str) -> Result<async_nats::Client, Outcome> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        async_nats::ConnectOptions::new()
            .name("bulwark-cli")
            .connect(nats),
    )
    .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(Outcome::Exit(
            EXIT_UNREACHABLE,
            format!("error: cannot reach NATS at {nats}: {e}"),
        )),
        Err(_) => Err(Outcome::Exit(
            EXIT_UNREACHABLE,
            format!("error: cannot reach NATS at {nats} within 10 s"),
        )),
    }
}
