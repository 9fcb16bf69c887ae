//! `bulwark token`: mint, attenuate, inspect, check and list revocation ids.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use bulwark_capabilities::{
    ArgValue, Args as ToolArgs, Attenuation, Constraint, KeyPair, MicroUsd, PublicKey, Request,
    Revocations, RootGrant, Tier, Token, TokenError,
};
use clap::{Args, Subcommand};

use crate::Outcome;

/// Exit code of `token check` when no decision was reached (a Datalog run limit on an
/// overloaded machine): retry. EX_TEMPFAIL in sysexits terms.
pub const EXIT_RETRY: u8 = 75;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint a root token signed by the cluster root key; prints it on stdout.
    Mint(MintArgs),
    /// Derive a narrower child token; prints it on stdout.
    Attenuate(AttenuateArgs),
    /// Show a token's chain of agents and its effective limits.
    Inspect(InspectArgs),
    /// Decide one request: exit 0 and `allow TIER`, exit 3 and the reason, or exit 75
    /// when no decision could be reached in time (retry).
    Check(CheckArgs),
    /// Print each block's revocation id (hex), root first.
    RevocationIds {
        /// Token file, or - for standard input.
        token: String,
    },
}

#[derive(Args)]
pub struct MintArgs {
    /// The cluster root private key.
    #[arg(long)]
    root_key: PathBuf,
    /// The tenant the agent works for.
    #[arg(long)]
    tenant: String,
    /// The root agent's id.
    #[arg(long)]
    agent: String,
    /// The root agent's holder public key (hex).
    #[arg(long)]
    holder: String,
    /// A tool and its tier: NAME=auto|auto+|propose|confirm|block. Repeat per tool.
    #[arg(long = "tool", value_name = "NAME=TIER")]
    tools: Vec<String>,
    /// Budget cap in dollars, e.g. 25 or 12.50.
    #[arg(long)]
    budget: String,
    /// Lifetime: 90s, 10m, 1h, 7d.
    #[arg(long)]
    ttl: String,
    /// How many times the token may be delegated down a chain.
    #[arg(long, default_value_t = 3)]
    max_depth: u32,
}

#[derive(Args)]
pub struct AttenuateArgs {
    /// Parent token file, or - for standard input.
    #[arg(long)]
    token: String,
    /// The cluster root public key (hex): the parent is verified before deriving.
    #[arg(long)]
    root_pub: String,
    /// The parent holder's private key: it signs the delegation.
    #[arg(long)]
    key: PathBuf,
    /// The child agent's id.
    #[arg(long)]
    agent: String,
    /// The child's holder public key (hex).
    #[arg(long)]
    holder: String,
    #[command(flatten)]
    narrow: Narrowing,
}

/// The flags that narrow a delegation (shared with `agent spawn`).
#[derive(Args)]
pub struct Narrowing {
    /// Keep only these tools (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only_tools: Option<Vec<String>>,
    /// A stricter tier for a tool: NAME=TIER. Repeatable.
    #[arg(long = "tier", value_name = "NAME=TIER")]
    tiers: Vec<String>,
    /// A smaller budget cap in dollars.
    #[arg(long)]
    budget: Option<String>,
    /// A shorter lifetime from now: 90s, 10m, 1h, 7d.
    #[arg(long)]
    ttl: Option<String>,
    /// A constraint on an argument: 'TOOL.ARG OP VALUE' with OP one of eq, ne,
    /// starts_with, not_starts_with, ends_with, in (a,b,c), le, lt, ge, gt. The argument
    /// must be present. A value with `@` makes it an address rule (one plain address,
    /// no lists or headers); le/lt/ge/gt take an integer or a decimal amount such as
    /// 100.50 (exact, non-negative). Write 'TOOL.ARG each OP VALUE' for a list
    /// argument and 'TOOL.ARG if_present OP VALUE' for an optional one. Repeatable.
    #[arg(long = "require", value_name = "'TOOL.ARG OP VALUE'")]
    requires: Vec<String>,
    /// Like --require, for a list argument: every element must satisfy the rule.
    /// Repeatable.
    #[arg(long = "require-each", value_name = "'TOOL.ARG OP VALUE'")]
    requires_each: Vec<String>,
    /// Like --require, but a call that omits the argument passes; one that passes it
    /// is checked. Repeatable.
    #[arg(long = "require-if-present", value_name = "'TOOL.ARG OP VALUE'")]
    requires_if_present: Vec<String>,
    /// An argument whose value must not come from untrusted content (an email, a web
    /// page, another agent): TOOL.ARG. Repeatable.
    #[arg(long = "trusted-arg", value_name = "TOOL.ARG")]
    trusted_args: Vec<String>,
    /// A cap on a sandboxed tool's limit: TOOL.LIMIT=VALUE with LIMIT one of
    /// memory_bytes, timeout_ms, fuel, output_bytes, disk_bytes, disk_files.
    /// Repeatable.
    #[arg(long = "sandbox-limit", value_name = "TOOL.LIMIT=VALUE")]
    sandbox_limits: Vec<String>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// Print JSON: {verified, tenant, chain, effective, revocation_ids, size_bytes}.
    #[arg(long)]
    json: bool,
    /// Verify against this root public key (hex); without it the output is what the
    /// token claims, marked unverified.
    #[arg(long)]
    root_pub: Option<String>,
    /// Token file, or - for standard input.
    token: String,
}

#[derive(Args)]
pub struct CheckArgs {
    /// The cluster root public key (hex).
    #[arg(long)]
    root_pub: String,
    /// Token file, or - for standard input.
    #[arg(long)]
    token: String,
    /// The tool to call.
    #[arg(long)]
    tool: String,
    /// An argument: K=V. Integers are integers; quote ("42") to force a string;
    /// [a,b] is a list.
    #[arg(long = "arg", value_name = "K=V")]
    args: Vec<String>,
    /// Decide as of this time (RFC 3339) instead of now.
    #[arg(long)]
    at: Option<String>,
    /// A file of revoked ids (hex), one per line.
    #[arg(long)]
    revoked: Option<PathBuf>,
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<Outcome> {
    match cmd {
        TokenCommand::Mint(a) => mint(a),
        TokenCommand::Attenuate(a) => attenuate(a),
        TokenCommand::Inspect(a) => inspect(a),
        TokenCommand::Check(a) => check(a),
        TokenCommand::RevocationIds { token } => {
            let bytes = Token::decode_base64_unverified(&read_input(&token)?)?;
            for id in Token::inspect_unverified(&bytes)?.revocation_ids {
                println!("{id}");
            }
            Ok(Outcome::Success)
        }
    }
}

fn mint(a: MintArgs) -> anyhow::Result<Outcome> {
    let root = KeyPair::load(&a.root_key)?;
    let mut grant = RootGrant::new(
        a.tenant,
        a.agent,
        public_key(&a.holder, "--holder")?,
        money(&a.budget)?,
        SystemTime::now() + ttl(&a.ttl)?,
        a.max_depth,
    );
    if a.tools.is_empty() {
        bail!("a token needs at least one --tool NAME=TIER");
    }
    for spec in &a.tools {
        let (name, tier) = tool_tier(spec)?;
        grant = grant.tool(name, tier);
    }
    let token = Token::mint(&root, grant)?;
    println!("{}", token.to_base64()?);
    Ok(Outcome::Success)
}

fn attenuate(a: AttenuateArgs) -> anyhow::Result<Outcome> {
    let root = public_key(&a.root_pub, "--root-pub")?;
    let parent = Token::from_base64(&read_input(&a.token)?, &root)
        .context("the parent token does not verify")?;
    let key = KeyPair::load(&a.key)?;
    let att = a.narrow.apply(Attenuation::new(
        a.agent,
        public_key(&a.holder, "--holder")?,
    ))?;
    let child = parent.attenuate(&key, att)?;
    println!("{}", child.to_base64()?);
    Ok(Outcome::Success)
}

impl Narrowing {
    /// `att` narrowed by every flag given.
    pub fn apply(&self, mut att: Attenuation) -> anyhow::Result<Attenuation> {
        if let Some(only) = &self.only_tools {
            att = att.only_tools(only.iter().cloned().collect::<BTreeSet<_>>());
        }
        for spec in &self.tiers {
            let (name, tier) = tool_tier(spec)?;
            att = att.tier(name, tier);
        }
        if let Some(b) = &self.budget {
            att = att.budget(money(b)?);
        }
        if let Some(t) = &self.ttl {
            // A shorter lifetime than the parent's; `attenuate` refuses a longer one.
            att = att.expires_at(SystemTime::now() + ttl(t)?);
        }
        for r in &self.requires {
            att = att.require(r.parse::<Constraint>()?);
        }
        for r in &self.requires_each {
            att = att.require(r.parse::<Constraint>()?.each());
        }
        for r in &self.requires_if_present {
            att = att.require(r.parse::<Constraint>()?.if_present());
        }
        for t in &self.trusted_args {
            let Some((tool, arg)) = t.split_once('.') else {
                bail!("--trusted-arg {t}: expected TOOL.ARG");
            };
            att = att.trusted_arg(tool, arg);
        }
        for l in &self.sandbox_limits {
            let parsed = l
                .split_once('=')
                .and_then(|(k, v)| Some((k.split_once('.')?, v.trim().parse::<u64>().ok()?)));
            let Some(((tool, limit), value)) = parsed else {
                bail!("--sandbox-limit {l}: expected TOOL.LIMIT=VALUE with a whole number");
            };
            att = att.sandbox_limit(tool, limit, value);
        }
        Ok(att)
    }
}

fn inspect(a: InspectArgs) -> anyhow::Result<Outcome> {
    let text = read_input(&a.token)?;
    let inspection = match &a.root_pub {
        Some(hex) => Token::from_base64(&text, &public_key(hex, "--root-pub")?)
            .context("the token does not verify")?
            .inspect(),
        None => Token::inspect_unverified(&Token::decode_base64_unverified(&text)?)?,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&inspection)?);
    } else {
        println!("{inspection}");
    }
    Ok(Outcome::Success)
}

fn check(a: CheckArgs) -> anyhow::Result<Outcome> {
    let root = public_key(&a.root_pub, "--root-pub")?;
    let text = read_input(&a.token)?;
    let revoked = match &a.revoked {
        Some(path) => Revocations::parse(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?,
        None => Revocations::new(),
    };
    let time = match &a.at {
        Some(at) => humantime::parse_rfc3339_weak(at)
            .with_context(|| format!("--at {at}: expected RFC 3339, e.g. 2026-11-22T10:00:00Z"))?,
        None => SystemTime::now(),
    };
    let mut args = ToolArgs::new();
    for kv in &a.args {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--arg {kv}: expected K=V"))?;
        args.insert(k.to_string(), ArgValue::parse_cli(v));
    }
    let token = match Token::from_base64(&text, &root) {
        Ok(t) => t,
        // Text that is not a token at all is unusable input; a token that does not
        // verify is a denial.
        Err(e @ (TokenError::Encoding(_) | TokenError::TooLarge { .. })) => return Err(e.into()),
        Err(e) => return Ok(Outcome::Denied(e.to_string())),
    };
    let request = Request {
        agent: token.agent().to_string(),
        tool: a.tool,
        args,
        time,
    };
    match token.authorize_datalog(&request, &revoked) {
        Ok(ok) => {
            println!("allow {}", ok.tier);
            println!("budget {}", ok.budget);
            Ok(Outcome::Success)
        }
        // No decision (a Datalog run limit under load): not a denial, try again.
        Err(undecided) if undecided.is_retryable() => {
            Ok(Outcome::Exit(EXIT_RETRY, undecided.to_string()))
        }
        Err(denial) => Ok(Outcome::Denied(denial.to_string())),
    }
}

/// Reads a token from a file, or from standard input for `-`.
fn read_input(source: &str) -> anyhow::Result<String> {
    const LIMIT: u64 = 64 * 1024;
    let mut text = String::new();
    if source == "-" {
        std::io::stdin()
            .take(LIMIT + 1)
            .read_to_string(&mut text)
            .context("reading the token from standard input")?;
    } else {
        std::fs::File::open(source)
            .and_then(|f| f.take(LIMIT + 1).read_to_string(&mut text))
            .with_context(|| format!("reading {source}"))?;
    }
    if text.len() as u64 > LIMIT {
        bail!("{source}: more than {LIMIT} bytes; that is not a token");
    }
    Ok(text)
}

fn public_key(hex: &str, flag: &str) -> anyhow::Result<PublicKey> {
    PublicKey::from_hex(hex).with_context(|| format!("{flag} {hex}"))
}

fn money(text: &str) -> anyhow::Result<MicroUsd> {
    Ok(text.parse::<MicroUsd>()?)
}

fn ttl(text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text)
        .with_context(|| format!("`{text}` is not a duration; use forms like 90s, 10m, 1h, 7d"))
}

fn tool_tier(spec: &str) -> anyhow::Result<(String, Tier)> {
    let (name, tier) = spec
        .split_once('=')
        .with_context(|| format!("`{spec}`: expected NAME=TIER, e.g. send_email=confirm"))?;
    Ok((name.to_string(), tier.parse()?))
}
