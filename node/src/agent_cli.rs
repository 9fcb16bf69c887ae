//! `bulwark agent spawn|run|list`: agents on the nodes of a cluster, as a token
//! holder directs them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_capabilities::{KeyPair, Token};
use bulwark_node::cluster::client::{ClientError, ClusterClient};
use clap::{Args, Subcommand};

use crate::cluster_cli::{EXIT_UNREACHABLE, Where, connect_cli, tokio};
use crate::token::Narrowing;
use crate::{EXIT_USAGE, Outcome};

/// `bulwark agent ...`.
#[derive(Subcommand)]
pub enum AgentCommand {
    /// Spawn an agent on a node: the node generates its key pair, the parent token is
    /// attenuated to it here (signed with --key) and the node checks the pair.
    Spawn(Box<SpawnArgs>),
    /// Give an agent a task and print the run's outcome (only a holder of a token
    /// in the agent's chain may).
    Run(RunArgs),
    /// The agents of every alive node.
    List {
        #[command(flatten)]
        at: Where,
    },
}

#[derive(Args)]
pub struct SpawnArgs {
    #[command(flatten)]
    at: Where,
    /// The parent token file.
    #[arg(long)]
    token: PathBuf,
    /// The parent holder's private key: it signs the delegation and the request.
    #[arg(long)]
    key: PathBuf,
    /// The new agent's id (letters, digits, - and _).
    #[arg(long)]
    agent: String,
    /// The brain profile it runs with (one the node offers).
    #[arg(long)]
    brain: String,
    /// The node to place it on; without it, the alive node with the labels and the
    /// fewest agents.
    #[arg(long, conflicts_with = "labels")]
    node: Option<String>,
    /// A label the node must have: K=V. Repeatable.
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    #[command(flatten)]
    narrow: Narrowing,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    at: Where,
    /// The agent.
    #[arg(long)]
    agent: String,
    /// A token in the agent's chain (its parent's or an ancestor's).
    #[arg(long)]
    token: PathBuf,
    /// That token's holder key.
    #[arg(long)]
    key: PathBuf,
    /// The task.
    #[arg(long)]
    task: String,
    /// Longest to wait for the run, e.g. 90s or 10m.
    #[arg(long, default_value = "10m")]
    within: String,
}

/// Runs an `agent` command.
pub fn run(cmd: AgentCommand) -> anyhow::Result<Outcome> {
    match cmd {
        AgentCommand::Spawn(a) => spawn(*a),
        AgentCommand::Run(a) => run_task(a),
        AgentCommand::List { at } => list(at),
    }
}

fn usage(e: impl std::fmt::Display) -> Outcome {
    Outcome::Exit(EXIT_USAGE, format!("error: {e}"))
}

fn failed(e: ClientError) -> Outcome {
    match e {
        ClientError::Unreachable(_) => Outcome::Exit(EXIT_UNREACHABLE, format!("error: {e}")),
        ClientError::Refused(why) => Outcome::Denied(why),
        _ => usage(e),
    }
}

/// Connects, and verifies the holder's token with the cluster's root key.
async fn holder(
    at: &Where,
    token: &Path,
    key: &Path,
) -> Result<(ClusterClient, Token, KeyPair), Outcome> {
    let text =
        std::fs::read_to_string(token).map_err(|e| usage(format!("{}: {e}", token.display())))?;
    let key = KeyPair::load(key).map_err(usage)?;
    let cluster = ClusterClient::new(connect_cli(&at.nats).await?, &at.cluster);
    let root = cluster.root_key().await.map_err(failed)?;
    let token = Token::from_base64(text.trim(), &root)
        .map_err(|e| usage(format!("{}: {e}", token.display())))?;
    Ok((cluster, token, key))
}

fn spawn(a: SpawnArgs) -> anyhow::Result<Outcome> {
    let mut labels = Vec::new();
    for l in &a.labels {
        let Some((k, v)) = l.split_once('=') else {
            return Ok(usage(format!("--label {l}: expected K=V")));
        };
        labels.push((k.to_string(), v.to_string()));
    }
    tokio()?.block_on(async move {
        let (cluster, parent, key) = match holder(&a.at, &a.token, &a.key).await {
            Ok(h) => h,
            Err(o) => return Ok(o),
        };
        let node = match cluster.place(a.node.as_deref(), &labels).await {
            Ok(n) => n,
            Err(e) => return Ok(failed(e)),
        };
        let narrow = |att| a.narrow.apply(att).map_err(|e| format!("{e:#}"));
        match cluster
            .spawn(&node, &a.agent, &a.brain, (&parent, &key), narrow)
            .await
        {
            Ok(s) if a.at.json => println!("{}", serde_json::to_string(&s)?),
            Ok(s) => println!(
                "spawned {} on node {} (holder {})",
                s.agent, s.node, s.holder
            ),
            Err(e) => return Ok(failed(e)),
        }
        Ok(Outcome::Success)
    })
}

fn run_task(a: RunArgs) -> anyhow::Result<Outcome> {
    let within: Duration = match humantime::parse_duration(&a.within) {
        Ok(d) => d,
        Err(e) => return Ok(usage(format!("--within {}: {e}", a.within))),
    };
    tokio()?.block_on(async move {
        let (cluster, token, key) = match holder(&a.at, &a.token, &a.key).await {
            Ok(h) => h,
            Err(o) => return Ok(o),
        };
        let run = match cluster
            .agent(&a.agent, token, key)
            .run(&a.task, within)
            .await
        {
            Ok(r) => r,
            Err(e) => return Ok(failed(e)),
        };
        if a.at.json {
            println!("{}", serde_json::to_string(&run)?);
        } else {
            for act in &run.actions {
                let verdict = if act.allowed { "allowed" } else { "refused" };
                println!(
                    "{:<6} {:<20} {verdict:<8} {}",
                    act.kind, act.tool, act.reason
                );
            }
            match (&run.answer, &run.reason) {
                (Some(answer), _) => println!("answer: {answer}"),
                (None, reason) => println!(
                    "ended: {} {}",
                    run.status,
                    reason.as_deref().unwrap_or_default()
                ),
            }
        }
        Ok(Outcome::Success)
    })
}

fn list(at: Where) -> anyhow::Result<Outcome> {
    tokio()?.block_on(async move {
        let client = match connect_cli(&at.nats).await {
            Ok(c) => c,
            Err(o) => return Ok(o),
        };
        let agents = match ClusterClient::new(client, &at.cluster).agents().await {
            Ok(a) => a,
            Err(e) => return Ok(failed(e)),
        };
        if at.json {
            println!("{}", serde_json::json!({ "agents": agents }));
        } else {
            println!("{:<24} {:<16} state", "agent", "node");
            for a in &agents {
                println!("{:<24} {:<16} {}", a.agent, a.node, a.state);
            }
        }
        Ok(Outcome::Success)
    })
}
