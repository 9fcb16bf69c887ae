//! Authorization of one request against a verified token.
//!
//! Two paths give the same decision: [`Token::authorize_datalog`] runs the token's
//! Datalog in biscuit's authorizer (the reference), and [`Token::authorize`] walks the
//! verified block specs directly (the fast path a long-lived agent uses on every call).
//! Property tests hold them equal. Both fail closed.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use biscuit_auth::builder::{self, Term};
use biscuit_auth::error::{FailedCheck, Logic, MatchedPolicy, RunLimit, Token as BiscuitError};
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits};

use crate::args::{Args, Constraint, Kind};
use crate::error::ParseError;
use crate::spec::{BlockCheck, rfc3339, term, unix_secs};
use crate::{MicroUsd, Tier, Token};

/// One tool call as the capability layer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The agent making the call; must be the agent the token was delegated to.
    pub agent: String,
    /// The tool.
    pub tool: String,
    /// Its arguments.
    pub args: Args,
    /// When the call is made.
    pub time: SystemTime,
}

/// What an allowed request may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Authorized {
    /// The effective tier: the strictest along the chain.
    pub tier: Tier,
    /// The effective budget cap: the smallest along the chain.
    pub budget: MicroUsd,
}

/// Why a request is denied, in words a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Denial {
    /// The request names another agent than the token's holder agent.
    #[error("the token belongs to agent `{holder_agent}`, not `{requested}`")]
    WrongAgent {
        /// The token's agent.
        holder_agent: String,
        /// The agent in the request.
        requested: String,
    },
    /// A block of the chain was revoked.
    #[error(
        "the token was revoked: the delegation to `{agent}` (block {block}) is on the revocation list"
    )]
    Revoked {
        /// The agent of the revoked block.
        agent: String,
        /// The block index.
        block: usize,
    },
    /// The root token does not grant the tool.
    #[error("tool `{tool}` is not granted to tenant `{tenant}` by the root token")]
    NotGranted {
        /// The tool.
        tool: String,
        /// The tenant.
        tenant: String,
    },
    /// A delegation left the tool out.
    #[error("tool `{tool}` was withheld when the token was delegated to `{agent}`")]
    Withheld {
        /// The tool.
        tool: String,
        /// The agent whose delegation withheld it.
        agent: String,
    },
    /// Past an expiry in the chain.
    #[error("the token expired at {expired_at} (set for `{agent}`); the request is at {at}")]
    Expired {
        /// The agent whose block set the expiry.
        agent: String,
        /// The expiry, RFC 3339.
        expired_at: String,
        /// The request time, RFC 3339.
        at: String,
    },
    /// An argument constraint is not met.
    #[error("{} (set when delegating to `{agent}`); got {actual}", constraint.describe())]
    Constraint {
        /// The constraint (boxed: denials stay small on the allowed path).
        constraint: Box<Constraint>,
        /// The agent whose delegation set it.
        agent: String,
        /// What the request had, or `nothing`.
        actual: String,
    },
    /// The tool is at tier block.
    #[error("tool `{tool}` is at tier block: it never runs")]
    Blocked {
        /// The tool.
        tool: String,
    },
    /// The request was not signed by the token's holder key.
    #[error("the request is not signed by the token's holder key {holder}")]
    NotHolder {
        /// The expected holder, hex.
        holder: String,
    },
    /// The request's timestamp is outside the accepted window.
    #[error(
        "the request timestamp {at} is outside the accepted window of ±{window_secs}s around {now}"
    )]
    Stale {
        /// The request's timestamp, RFC 3339.
        at: String,
        /// The verifier's time, RFC 3339.
        now: String,
        /// The window.
        window_secs: u64,
    },
    /// The request's nonce was seen before.
    #[error("the request nonce was already used: a replay")]
    Replayed,
    /// The replay guard is full; requests are refused until old nonces age out.
    #[error("too many recent requests to check for replays; try again shortly")]
    ReplayCacheFull,
    /// The token's policy could not be evaluated (a malformed evaluation): denied.
    #[error("the token's policy could not be evaluated: {0}")]
    Evaluation(String),
    /// No decision was reached: evaluating the policy ran into a Datalog run limit
    /// (time, facts or iterations), e.g. on an overloaded machine. This is not a
    /// verdict on the request; it may be retried ([`Denial::is_retryable`]).
    #[error(
        "no decision: evaluating the policy exceeded the Datalog {limit} limit; this is not a denial of the request, retry it"
    )]
    LimitReached {
        /// The limit that was reached.
        limit: DatalogLimit,
    },
}

impl Denial {
    /// Whether the same request may succeed when retried: true only when no decision
    /// was reached ([`Denial::LimitReached`]); every real denial stays a denial.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Denial::LimitReached { .. })
    }
}

/// Bounds on one Datalog evaluation. Biscuit's own default allows 1 ms, which a busy
/// machine exceeds on honest requests; every evaluation in Bulwark sets these
/// explicitly instead, and reaching one is reported as [`Denial::LimitReached`] (or
/// the caller's equivalent), never as a denial or a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatalogLimits {
    /// Most facts the evaluation may hold.
    pub max_facts: u64,
    /// Most rounds of rule application.
    pub max_iterations: u64,
    /// Longest wall-clock time the evaluation may take.
    pub max_time: Duration,
}

impl DatalogLimits {
    /// The limits of every evaluation: 8192 facts (a token of at most
    /// [`crate::MAX_TOKEN_BYTES`] holds far fewer), 100 iterations (Bulwark's blocks
    /// carry no rules; operators' watchdog rules get room to derive), and 500 ms, two
    /// orders of magnitude above an honest evaluation on a loaded machine.
    pub const DEFAULT: DatalogLimits = DatalogLimits {
        max_facts: 8192,
        max_iterations: 100,
        max_time: Duration::from_millis(500),
    };

    /// The limits as biscuit's authorizer takes them.
    pub fn to_biscuit(self) -> AuthorizerLimits {
        AuthorizerLimits {
            max_facts: self.max_facts,
            max_iterations: self.max_iterations,
            max_time: self.max_time,
        }
    }

    /// The limit a biscuit error reports reaching, if it is a run-limit error.
    pub fn reached(self, error: &BiscuitError) -> Option<DatalogLimit> {
        match error {
            BiscuitError::RunLimit(RunLimit::Timeout) => Some(DatalogLimit::Time(self.max_time)),
            BiscuitError::RunLimit(RunLimit::TooManyFacts) => {
                Some(DatalogLimit::Facts(self.max_facts))
            }
            BiscuitError::RunLimit(RunLimit::TooManyIterations) => {
                Some(DatalogLimit::Iterations(self.max_iterations))
            }
            _ => None,
        }
    }

    /// The default limits with room for the facts of `request`'s arguments, so an
    /// honest request of any size never reaches the facts limit.
    fn for_request(request: &Request) -> Self {
        let per_arg = 2 * Kind::ALL.len() as u64;
        DatalogLimits {
            max_facts: Self::DEFAULT
                .max_facts
                .saturating_add(per_arg.saturating_mul(request.args.len() as u64)),
            ..Self::DEFAULT
        }
    }
}

impl Default for DatalogLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which Datalog run limit an evaluation reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatalogLimit {
    /// The time limit.
    Time(Duration),
    /// The facts limit.
    Facts(u64),
    /// The iterations limit.
    Iterations(u64),
}

impl fmt::Display for DatalogLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatalogLimit::Time(t) => write!(f, "time ({} ms)", t.as_millis()),
            DatalogLimit::Facts(n) => write!(f, "facts ({n})"),
            DatalogLimit::Iterations(n) => write!(f, "iterations ({n})"),
        }
    }
}

/// A set of revoked block ids.
#[derive(Clone, Debug, Default)]
pub struct Revocations(HashSet<Vec<u8>>);

impl Revocations {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a revocation id.
    pub fn insert(&mut self, id: Vec<u8>) {
        self.0.insert(id);
    }

    /// Whether `id` is revoked.
    pub fn contains(&self, id: &[u8]) -> bool {
        self.0.contains(id)
    }

    /// Number of revoked ids.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses one hex id per line; blank lines and `#` comments are ignored.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut set = Revocations::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = hex::decode(line).map_err(|_| ParseError::RevocationId {
                line: n + 1,
                text: line.chars().take(140).collect(),
            })?;
            set.insert(id);
        }
        Ok(set)
    }
}

impl Token {
    /// Authorizes `request` with the compiled policy of this verified token.
    pub fn authorize(
        &self,
        request: &Request,
        revoked: &Revocations,
    ) -> Result<Authorized, Denial> {
        self.precheck(request, revoked)?;
        if !self.root.tools.contains_key(&request.tool) {
            return Err(self.not_granted(request));
        }
        let now = unix_secs(request.time);
        if now > self.root.expires_at {
            return Err(self.expired(0, self.root.expires_at, request));
        }
        for (i, d) in self.delegations.iter().enumerate() {
            for check in d.checks() {
                let failed = match check {
                    BlockCheck::OnlyTools(only) => !only.contains(&request.tool),
                    BlockCheck::Expires(at) => now > at,
                    BlockCheck::Constraint(c) => c.tool == request.tool && !c.allows(&request.args),
                };
                if failed {
                    return Err(self.check_denial(i + 1, check, request));
                }
            }
        }
        let tier = self
            .delegations
            .iter()
            .filter_map(|d| d.tiers.get(&request.tool))
            .fold(self.root.tools[&request.tool], |a, b| a.max(*b));
        self.finish(request, tier, self.effective.budget)
    }

    /// Authorizes `request` by running the token's Datalog in biscuit's authorizer.
    /// Slower than [`Token::authorize`], and the reference it is tested against. Runs
    /// under [`DatalogLimits::DEFAULT`] (with room for the request's facts).
    pub fn authorize_datalog(
        &self,
        request: &Request,
        revoked: &Revocations,
    ) -> Result<Authorized, Denial> {
        self.authorize_datalog_with(request, revoked, DatalogLimits::for_request(request))
    }

    /// [`Token::authorize_datalog`] under explicit limits. Reaching one gives
    /// [`Denial::LimitReached`]: no decision, retryable.
    pub fn authorize_datalog_with(
        &self,
        request: &Request,
        revoked: &Revocations,
        limits: DatalogLimits,
    ) -> Result<Authorized, Denial> {
        self.precheck(request, revoked)?;
        let eval = |e: BiscuitError| match limits.reached(&e) {
            Some(limit) => Denial::LimitReached { limit },
            None => Denial::Evaluation(e.to_string()),
        };
        let mut b = AuthorizerBuilder::new()
            .set_limits(limits.to_biscuit())
            .fact(builder::fact("time", &[builder::date(&request.time)]))
            .and_then(|b| {
                b.fact(builder::fact(
                    "operation",
                    &[builder::string(&request.tool)],
                ))
            })
            .map_err(eval)?;
        // Each argument under every view a constraint may read it through (the same
        // views the compiled matcher uses), and the set of names passed.
        let mut names = BTreeSet::new();
        for (name, value) in &request.args {
            names.insert(builder::string(name));
            for kind in Kind::ALL {
                if let Some(v) = kind.view(value) {
                    b = b
                        .fact(builder::fact(
                            kind.scalar_predicate(),
                            &[builder::string(name), term(&v)],
                        ))
                        .map_err(eval)?;
                }
                if let Some(items) = kind.view_list(value) {
                    b = b
                        .fact(builder::fact(
                            kind.list_predicate(),
                            &[
                                builder::string(name),
                                Term::Array(items.iter().map(term).collect()),
                            ],
                        ))
                        .map_err(eval)?;
                }
            }
        }
        b = b
            .fact(builder::fact("args", &[builder::set(names)]))
            .map_err(eval)?;
        let mut authorizer = b
            .policy("allow if operation($op), tool($op, $tier)")
            .and_then(|b| b.policy("deny if true"))
            .and_then(|b| b.build(&self.biscuit))
            .map_err(eval)?;
        match authorizer.authorize() {
            Ok(_) => {}
            Err(BiscuitError::FailedLogic(logic)) => return Err(self.explain(logic, request)),
            Err(other) => return Err(eval(other)),
        }
        let tiers: Vec<(i64,)> = authorizer
            .query_all("t($n) <- operation($op), tool($op, $n)")
            .and_then(|mut t: Vec<(i64,)>| {
                let floors: Vec<(i64,)> =
                    authorizer.query_all("t($n) <- operation($op), tier_floor($op, $n)")?;
                t.extend(floors);
                Ok(t)
            })
            .map_err(eval)?;
        let tier = tiers
            .into_iter()
            .filter_map(|(n,)| Tier::from_level(n))
            .max()
            .ok_or_else(|| Denial::Evaluation("no tier for an allowed tool".into()))?;
        let budgets: Vec<(i64,)> = authorizer.query_all("b($x) <- budget($x)").map_err(eval)?;
        let budget = budgets
            .into_iter()
            .map(|(x,)| MicroUsd::from_datalog(x))
            .collect::<Option<Vec<_>>>()
            .and_then(|v| v.into_iter().min())
            .ok_or_else(|| Denial::Evaluation("no valid budget".into()))?;
        self.finish(request, tier, budget)
    }

    /// Checks shared by both paths, before any policy: agent and revocation.
    fn precheck(&self, request: &Request, revoked: &Revocations) -> Result<(), Denial> {
        if request.agent != self.agent() {
            return Err(Denial::WrongAgent {
                holder_agent: self.agent().to_string(),
                requested: request.agent.clone(),
            });
        }
        if !revoked.is_empty()
            && let Some(block) = self
                .revocation_ids
                .iter()
                .position(|id| revoked.contains(id))
        {
            return Err(Denial::Revoked {
                agent: self.agent_of_block(block).to_string(),
                block,
            });
        }
        Ok(())
    }

    fn finish(
        &self,
        request: &Request,
        tier: Tier,
        budget: MicroUsd,
    ) -> Result<Authorized, Denial> {
        if tier == Tier::Block {
            return Err(Denial::Blocked {
                tool: request.tool.clone(),
            });
        }
        Ok(Authorized { tier, budget })
    }

    fn agent_of_block(&self, block: usize) -> &str {
        match block {
            0 => &self.root.agent,
            i => self.delegations.get(i - 1).map_or("?", |d| &d.agent),
        }
    }

    fn not_granted(&self, request: &Request) -> Denial {
        Denial::NotGranted {
            tool: request.tool.clone(),
            tenant: self.root.tenant.clone(),
        }
    }

    fn expired(&self, block: usize, at: u64, request: &Request) -> Denial {
        Denial::Expired {
            agent: self.agent_of_block(block).to_string(),
            expired_at: rfc3339(at),
            at: rfc3339(unix_secs(request.time)),
        }
    }

    fn check_denial(&self, block: usize, check: BlockCheck<'_>, request: &Request) -> Denial {
        match check {
            BlockCheck::OnlyTools(_) => Denial::Withheld {
                tool: request.tool.clone(),
                agent: self.agent_of_block(block).to_string(),
            },
            BlockCheck::Expires(at) => self.expired(block, at, request),
            BlockCheck::Constraint(c) => Denial::Constraint {
                constraint: Box::new(c.clone()),
                agent: self.agent_of_block(block).to_string(),
                actual: request
                    .args
                    .get(&c.arg)
                    .map_or_else(|| "nothing".to_string(), ToString::to_string),
            },
        }
    }

    /// Maps biscuit's failure to the same denial the compiled path gives: a tool the
    /// root lacks first, else the first failed check in block order.
    fn explain(&self, logic: Logic, request: &Request) -> Denial {
        let (denied_by_policy, checks) = match logic {
            Logic::Unauthorized { policy, checks } => {
                (matches!(policy, MatchedPolicy::Deny(_)), checks)
            }
            Logic::NoMatchingPolicy { checks } => (true, checks),
            other => return Denial::Evaluation(other.to_string()),
        };
        if denied_by_policy {
            return self.not_granted(request);
        }
        let first = checks
            .iter()
            .filter_map(|c| match c {
                FailedCheck::Block(b) => Some((b.block_id as usize, b.check_id as usize)),
                FailedCheck::Authorizer(_) => None,
            })
            .min();
        match first {
            Some((0, _)) => self.expired(0, self.root.expires_at, request),
            Some((block, check)) => self
                .delegations
                .get(block - 1)
                .and_then(|d| d.checks().nth(check))
                .map_or_else(
                    || Denial::Evaluation(format!("check {check} of block {block} failed")),
                    |c| self.check_denial(block, c, request),
                ),
            None => Denial::Evaluation("a check failed that Bulwark did not write".into()),
        }
    }
}
