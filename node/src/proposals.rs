//! `bulwark proposals`: list, show, approve, reject and cancel proposals, signing with
//! an operator key, against a running runtime's dashboard (`--url`) or a stopped
//! runtime's data directory (`--data-dir`, where decisions are queued and applied —
//! verified — when the runtime next starts).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use bulwark_capabilities::{Approval, Decision, DecisionKind, KeyPair};
use bulwark_runtime::{Proposal, SignedDecision};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::Outcome;

#[derive(Args, Clone)]
pub struct Target {
    /// A stopped runtime's data directory.
    #[arg(long, conflicts_with_all = ["url", "nats"])]
    data_dir: Option<PathBuf>,
    /// A running runtime's dashboard, e.g. http://127.0.0.1:8080/.
    #[arg(long, conflicts_with = "nats")]
    url: Option<String>,
    /// A NATS server of a cluster: the proposals of every alive node (with --cluster).
    #[arg(long, requires = "cluster")]
    nats: Option<String>,
    /// The cluster's name (with --nats).
    #[arg(long, requires = "nats")]
    cluster: Option<String>,
    /// The dashboard's bearer token (or BULWARK_DASHBOARD_TOKEN).
    #[arg(long, env = "BULWARK_DASHBOARD_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
pub enum ProposalsCommand {
    /// The proposals, newest first (pending and cancellable ones unless --all).
    List {
        #[command(flatten)]
        target: Target,
        /// Every proposal, decided ones too.
        #[arg(long)]
        all: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// The pending proposals grouped by root agent, task and tool.
        #[arg(long)]
        groups: bool,
    },
    /// One proposal in full.
    Show {
        /// The proposal id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Approve a pending proposal: signs its id and the hash of the arguments shown.
    /// With `--group`, one decision over every pending proposal of a group (where the
    /// tool allows batches), each still signed over its own arguments.
    Approve {
        /// The proposal id.
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        id: Option<String>,
        /// A group id, as `list --groups` shows it.
        #[arg(long)]
        group: Option<String>,
        /// The operator's private key file.
        #[arg(long)]
        operator_key: PathBuf,
        /// How long the approval stays valid.
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[command(flatten)]
        target: Target,
    },
    /// Reject a pending proposal (or, with `--group`, every pending one of a group).
    Reject {
        /// The proposal id.
        #[arg(required_unless_present = "group", conflicts_with = "group")]
        id: Option<String>,
        /// A group id, as `list --groups` shows it.
        #[arg(long)]
        group: Option<String>,
        /// Why.
        #[arg(long)]
        reason: String,
        /// The operator's private key file.
        #[arg(long)]
        operator_key: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Cancel a committed PROPOSE action inside its rollback window.
    Cancel {
        /// The proposal id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
        /// The operator's private key file.
        #[arg(long)]
        operator_key: PathBuf,
        #[command(flatten)]
        target: Target,
    },
}

fn client(target: &Target) -> anyhow::Result<(reqwest::blocking::Client, String)> {
    let url = target
        .url
        .clone()
        .context("--url or --data-dir is required")?;
    let base = if url.ends_with('/') {
        url
    } else {
        format!("{url}/")
    };
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    Ok((http, base))
}

fn authed(
    req: reqwest::blocking::RequestBuilder,
    target: &Target,
) -> reqwest::blocking::RequestBuilder {
    match &target.token {
        Some(t) => req.bearer_auth(t),
        None => req,
    }
}

fn answer(resp: reqwest::blocking::Response) -> anyhow::Result<Value> {
    let status = resp.status();
    let body: Value = resp.json().unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "the dashboard refused ({status}): {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(body)
}

/// A client of the cluster named by `--nats` and `--cluster`, with the async
/// runtime that drives it.
fn cluster(
    target: &Target,
) -> anyhow::Result<
    Option<(
        tokio::runtime::Runtime,
        bulwark_node::cluster::client::ClusterClient,
    )>,
> {
    let (Some(nats), Some(cluster)) = (&target.nats, &target.cluster) else {
        return Ok(None);
    };
    let rt = crate::cluster_cli::tokio()?;
    let client = rt
        .block_on(async_nats::connect(nats.as_str()))
        .with_context(|| format!("cannot reach NATS at {nats}"))?;
    Ok(Some((
        rt,
        bulwark_node::cluster::client::ClusterClient::new(client, cluster),
    )))
}

fn fetch_all(target: &Target) -> anyhow::Result<Vec<Value>> {
    if let Some((rt, cluster)) = cluster(target)? {
        return Ok(rt.block_on(cluster.proposals())?);
    }
    if let Some(dir) = &target.data_dir {
        return bulwark_runtime::read_proposals(dir)?
            .iter()
            .map(|p| serde_json::to_value(p).map_err(Into::into))
            .collect();
    }
    let (http, base) = client(target)?;
    let v = answer(authed(http.get(format!("{base}api/proposals")), target).send()?)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn fetch(target: &Target, id: &str) -> anyhow::Result<Proposal> {
    let v = if target.data_dir.is_some() || target.nats.is_some() {
        fetch_all(target)?
            .into_iter()
            .find(|p| p["id"] == id)
            .with_context(|| format!("no proposal `{id}`"))?
    } else {
        let (http, base) = client(target)?;
        answer(authed(http.get(format!("{base}api/proposals/{id}")), target).send()?)?
    };
    serde_json::from_value(v).context("the proposal does not parse")
}

/// The pending proposals of `group`, oldest first.
fn group_members(target: &Target, group: &str) -> anyhow::Result<Vec<Proposal>> {
    let mut members: Vec<Proposal> = fetch_all(target)?
        .into_iter()
        .filter(|p| p["state"] == "pending" && p["group"] == group)
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .context("a proposal does not parse")?;
    if members.is_empty() {
        bail!("no pending proposals in group `{group}`");
    }
    members.sort_by_key(|p| p.created_ms);
    Ok(members)
}

fn send_group(
    target: &Target,
    group: &str,
    decisions: Vec<SignedDecision>,
) -> anyhow::Result<Outcome> {
    if target.nats.is_some() {
        // Over the cluster each decision goes to its proposal's node on its own.
        let mut outcome = Outcome::Success;
        for d in decisions {
            let id = match &d {
                SignedDecision::Approve(a) => a.proposal_id.clone(),
                SignedDecision::Reject(r) | SignedDecision::Cancel(r) => r.proposal_id.clone(),
            };
            if let refused @ Outcome::Denied(_) = send(target, &id, d)? {
                outcome = refused;
            }
        }
        return Ok(outcome);
    }
    if let Some(dir) = &target.data_dir {
        // Queued one by one: each is verified on its own when the runtime starts.
        for d in &decisions {
            bulwark_runtime::queue_decision(dir, d)?;
        }
        println!(
            "queued {} decisions for group {group}: the runtime verifies and applies them when it next starts on {}",
            decisions.len(),
            dir.display()
        );
        return Ok(Outcome::Success);
    }
    let (http, base) = client(target)?;
    let approve = matches!(decisions.first(), Some(SignedDecision::Approve(_)));
    let body: Vec<Value> = decisions
        .iter()
        .map(|d| match d {
            SignedDecision::Approve(a) => serde_json::to_value(a),
            SignedDecision::Reject(d) | SignedDecision::Cancel(d) => serde_json::to_value(d),
        })
        .collect::<Result<_, _>>()?;
    let action = if approve { "approve" } else { "reject" };
    let v = match post(
        target,
        &http,
        format!("{base}api/groups/{group}/{action}"),
        &Value::Array(body),
    )? {
        Ok(v) => v,
        Err(refused) => return Ok(refused),
    };
    for p in v["decided"].as_array().into_iter().flatten() {
        println!(
            "{}: {}",
            p["id"].as_str().unwrap_or("?"),
            p["state"].as_str().unwrap_or("?")
        );
    }
    for s in v["skipped"].as_array().into_iter().flatten() {
        println!(
            "skipped {}: {}",
            s[0].as_str().unwrap_or("?"),
            s[1].as_str().unwrap_or("?")
        );
    }
    Ok(Outcome::Success)
}

fn print_groups(list: &[Value], json: bool) {
    let mut groups: Vec<(String, Vec<&Value>)> = Vec::new();
    for p in list.iter().filter(|p| p["state"] == "pending") {
        let g = p["group"].as_str().unwrap_or("").to_string();
        match groups.iter_mut().find(|(k, _)| *k == g) {
            Some((_, v)) => v.push(p),
            None => groups.push((g, vec![p])),
        }
    }
    for (g, members) in groups {
        let first = members[0];
        let root = first["chain"][0]
            .as_str()
            .unwrap_or(first["agent"].as_str().unwrap_or(""));
        if json {
            println!(
                "{}",
                serde_json::json!({"group": g, "root_agent": root, "task": first["task"],
                    "tool": first["tool"], "batchable": first["batchable"],
                    "pending": members.iter().map(|p| &p["id"]).collect::<Vec<_>>()})
            );
        } else {
            println!(
                "{g:<16} {:<3} pending {:<18} by {:<16} batch: {:<3} task: {}",
                members.len(),
                first["tool"].as_str().unwrap_or(""),
                root,
                if first["batchable"] == true {
                    "yes"
                } else {
                    "no"
                },
                first["task"].as_str().unwrap_or("(direct calls)")
            );
        }
    }
}

/// Posts a signed decision; a refusal of the signature or state is `Err(Denied)`.
fn post(
    target: &Target,
    http: &reqwest::blocking::Client,
    url: String,
    body: &Value,
) -> anyhow::Result<Result<Value, Outcome>> {
    let resp = authed(http.post(url).json(body), target).send()?;
    let status = resp.status();
    let v: Value = resp.json().unwrap_or(Value::Null);
    if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::CONFLICT {
        return Ok(Err(Outcome::Denied(
            v["error"].as_str().unwrap_or("refused").to_string(),
        )));
    }
    if !status.is_success() {
        bail!(
            "the dashboard refused ({status}): {}",
            v["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(Ok(v))
}

fn line(p: &Value) -> String {
    format!(
        "{:<20} {:<10} {:<9} {:<20} {:<18} {}",
        p["id"].as_str().unwrap_or(""),
        p["state"].as_str().unwrap_or(""),
        p["tier"].as_str().unwrap_or(""),
        p["agent"].as_str().unwrap_or(""),
        p["tool"].as_str().unwrap_or(""),
        p["args"]
    ) + &p["node"]
        .as_str()
        .map(|n| format!("  (node {n})"))
        .unwrap_or_default()
}

fn send(target: &Target, id: &str, decision: SignedDecision) -> anyhow::Result<Outcome> {
    if let Some((rt, cluster)) = cluster(target)? {
        let node = rt
            .block_on(cluster.proposals())?
            .into_iter()
            .find(|p| p["id"] == id)
            .and_then(|p| p["node"].as_str().map(str::to_string))
            .with_context(|| format!("no alive node holds proposal `{id}`"))?;
        return match rt.block_on(cluster.decide(&node, id, &decision)) {
            Ok(v) => {
                println!("{id}: {} (node {node})", v["state"].as_str().unwrap_or("?"));
                Ok(Outcome::Success)
            }
            Err(bulwark_node::cluster::client::ClientError::Refused(why)) => {
                Ok(Outcome::Denied(why))
            }
            Err(e) => Err(e.into()),
        };
    }
    if let Some(dir) = &target.data_dir {
        bulwark_runtime::queue_decision(dir, &decision)?;
        println!(
            "queued for {id}: the runtime verifies and applies it when it next starts on {}",
            dir.display()
        );
        return Ok(Outcome::Success);
    }
    let (http, base) = client(target)?;
    let (action, body) = match &decision {
        SignedDecision::Approve(a) => ("approve", serde_json::to_value(a)?),
        SignedDecision::Reject(d) => ("reject", serde_json::to_value(d)?),
        SignedDecision::Cancel(d) => ("cancel", serde_json::to_value(d)?),
    };
    let v = match post(
        target,
        &http,
        format!("{base}api/proposals/{id}/{action}"),
        &body,
    )? {
        Ok(v) => v,
        Err(refused) => return Ok(refused),
    };
    println!("{id}: {}", v["state"].as_str().unwrap_or("?"));
    Ok(Outcome::Success)
}

pub fn run(cmd: ProposalsCommand) -> anyhow::Result<Outcome> {
    match cmd {
        ProposalsCommand::List {
            target,
            all,
            json,
            groups,
        } => {
            let mut list = fetch_all(&target)?;
            if groups {
                print_groups(&list, json);
                return Ok(Outcome::Success);
            }
            list.reverse();
            for p in list.iter().filter(|p| {
                all || p["state"] == "pending"
                    || (p["state"] == "committed" && !p["rollback_until_ms"].is_null())
            }) {
                if json {
                    println!("{p}");
                } else {
                    println!("{}", line(p));
                }
            }
            Ok(Outcome::Success)
        }
        ProposalsCommand::Show { id, target } => {
            let p = fetch(&target, &id)?;
            println!("{}", serde_json::to_string_pretty(&p)?);
            Ok(Outcome::Success)
        }
        ProposalsCommand::Approve {
            id,
            group,
            operator_key,
            ttl,
            target,
        } => {
            let key = KeyPair::load(&operator_key)?;
            let ttl = humantime::parse_duration(&ttl).with_context(|| format!("--ttl {ttl}"))?;
            let id = match (id, group) {
                (Some(id), _) => id,
                (None, Some(group)) => {
                    let members = group_members(&target, &group)?;
                    let decisions = members
                        .iter()
                        .map(|p| {
                            eprintln!("approving {} by {}: {} {}", p.id, p.agent, p.tool, p.args);
                            SignedDecision::Approve(Approval::sign(
                                &key,
                                &p.id,
                                &Proposal::approval_args(&p.args),
                                SystemTime::now() + ttl,
                            ))
                        })
                        .collect();
                    return send_group(&target, &group, decisions);
                }
                (None, None) => bail!("a proposal id or --group is required"),
            };
            let p = fetch(&target, &id)?;
            // The hash is computed here, from the arguments shown, never taken from the
            // server: an approval covers exactly what the operator saw.
            let approval = Approval::sign(
                &key,
                &p.id,
                &Proposal::approval_args(&p.args),
                SystemTime::now() + ttl,
            );
            eprintln!("approving {} by {}: {} {}", p.id, p.agent, p.tool, p.args);
            send(&target, &id, SignedDecision::Approve(approval))
        }
        ProposalsCommand::Reject {
            id,
            group,
            reason,
            operator_key,
            target,
        } => {
            let key = KeyPair::load(&operator_key)?;
            let id = match (id, group) {
                (Some(id), _) => id,
                (None, Some(group)) => {
                    let decisions = group_members(&target, &group)?
                        .iter()
                        .map(|p| {
                            SignedDecision::Reject(Decision::sign(
                                &key,
                                DecisionKind::Reject,
                                &p.id,
                                &reason,
                                SystemTime::now(),
                            ))
                        })
                        .collect();
                    return send_group(&target, &group, decisions);
                }
                (None, None) => bail!("a proposal id or --group is required"),
            };
            let d = Decision::sign(&key, DecisionKind::Reject, &id, &reason, SystemTime::now());
            send(&target, &id, SignedDecision::Reject(d))
        }
        ProposalsCommand::Cancel {
            id,
            reason,
            operator_key,
            target,
        } => {
            let key = KeyPair::load(&operator_key)?;
            let d = Decision::sign(&key, DecisionKind::Cancel, &id, &reason, SystemTime::now());
            send(&target, &id, SignedDecision::Cancel(d))
        }
    }
}
