//! Sandboxed tools: a tool whose code runs in the sandbox, behind a worker pool per
//! tool with a per-agent bound, so a flood of calls from one agent cannot starve the
//! others.
//!
//! Scheduling: at most `workers` calls of the tool run at once; one agent holds at
//! most `max(1, workers / 2)` of them and has at most `per_agent` calls running or
//! waiting — beyond that its calls are refused at once (the tool answers `busy`).
//! Waiting calls are served first come, first served.
//!
//! Grants: a read-only mount offered by the tool reaches a call only when the
//! caller's token grants `mount:GUEST_PATH` at AUTO or AUTO+ (a mount cannot wait
//! for an approval, so a grant at PROPOSE, CONFIRM or BLOCK mounts nothing); a host
//! function exists when the token grants its tool at any tier but BLOCK (a call that
//! needs an approval is then refused at once, see [`super::HostGate`]).

use crate::sync::LockExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bulwark_capabilities::Tier;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::{HostAccess, HostGate, Limits, Mount, Program, RunRequest, RunStatus, Sandbox, host};
use crate::tools::{Tool, ToolError, ToolInput, ToolManifest, ToolOutput};

/// A tool's worker pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Calls of the tool that run at once.
    pub workers: usize,
    /// Calls one agent may have running or waiting.
    pub per_agent: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: 4,
            per_agent: 8,
        }
    }
}

/// The language of agent-written scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptLanguage {
    /// CPython.
    Python,
    /// QuickJS.
    JavaScript,
}

/// What a sandboxed tool runs.
#[derive(Clone, Debug)]
pub enum ToolCode {
    /// Code fixed by the tool's author: the call's arguments arrive as JSON on
    /// standard input, and standard output (JSON when it parses) is the result.
    Fixed(Program),
    /// Code the agent writes: argument `code_arg` holds the script; `files_arg`, when
    /// set, an object of scratch file names to text contents.
    Script {
        /// The language.
        language: ScriptLanguage,
        /// The argument holding the script.
        code_arg: String,
        /// The argument holding files for the scratch directory.
        files_arg: Option<String>,
    },
}

/// Builds a [`Tool`] whose code runs in the sandbox.
#[derive(Clone)]
pub struct SandboxTool {
    sandbox: Arc<Sandbox>,
    code: ToolCode,
    limits: Limits,
    pool: PoolConfig,
    gate: Option<Arc<dyn HostGate>>,
    mounts: Vec<Mount>,
}

impl SandboxTool {
    /// A tool running `code` in `sandbox` with default limits and pool.
    pub fn new(sandbox: Arc<Sandbox>, code: ToolCode) -> Self {
        SandboxTool {
            sandbox,
            code,
            limits: Limits::default(),
            pool: PoolConfig::default(),
            gate: None,
            mounts: Vec::new(),
        }
    }

    /// The limits of each call.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The worker pool.
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        self
    }

    /// Lets modules call host functions through `gate` (see [`crate::Runtime::host_gate`]);
    /// each exists only when the calling agent's token grants its tool.
    pub fn host_gate(mut self, gate: Arc<dyn HostGate>) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Offers a read-only mount. A call gets it only when the caller's token grants
    /// the name `mount:GUEST_PATH` (for example `mount:/data`) as a tool at tier AUTO
    /// or AUTO+, checked through the gate handle ([`SandboxTool::host_gate`]; without
    /// one, no call gets it); a grant at PROPOSE, CONFIRM or BLOCK mounts nothing, as
    /// nothing can approve a mount in the middle of a call. Delegation can drop the
    /// grant or raise its tier like any tool, never add it.
    pub fn mount(mut self, mount: Mount) -> Self {
        self.mounts.push(mount);
        self
    }

    /// The tool, under `manifest`: the gate authorizes, budgets and audits each
    /// call, then the pool schedules it.
    pub fn into_tool(self, manifest: ToolManifest) -> Tool {
        let pool = self.into_pool(&manifest.name);
        Tool::native(manifest, move |input| {
            let pool = pool.clone();
            async move { pool.0.call(input).await }
        })
    }

    /// The pool alone, for code that runs sandboxed work outside the gate (the
    /// embedding program's own jobs, benchmarks); agents reach it through
    /// [`SandboxTool::into_tool`].
    pub fn into_pool(self, name: &str) -> SandboxPool {
        let workers = self.pool.workers.max(1);
        SandboxPool(Arc::new(Scheduled {
            tool: self,
            name: name.to_string(),
            workers: Arc::new(Semaphore::new(workers)),
            agents: Mutex::new(HashMap::new()),
        }))
    }
}

/// A sandboxed tool's scheduled worker pool.
#[derive(Clone)]
pub struct SandboxPool(Arc<Scheduled>);

impl SandboxPool {
    /// Runs one call for `agent` with `args`, scheduled like a tool call.
    pub async fn call(&self, agent: &str, args: Value) -> Result<ToolOutput, ToolError> {
        self.0
            .call(ToolInput {
                agent: agent.to_string(),
                args,
                secrets: Default::default(),
                sandbox_limits: Default::default(),
                credentials: None,
            })
            .await
    }
}

struct AgentSlot {
    pending: usize,
    running: Arc<Semaphore>,
}

struct Scheduled {
    tool: SandboxTool,
    name: String,
    workers: Arc<Semaphore>,
    agents: Mutex<HashMap<String, AgentSlot>>,
}

/// Releases an agent's place when its call ends, however it ends.
struct Place<'a> {
    s: &'a Scheduled,
    agent: String,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut agents = self.s.agents.lock_or_recover();
        if let Some(slot) = agents.get_mut(&self.agent) {
            slot.pending -= 1;
            if slot.pending == 0 {
                agents.remove(&self.agent);
            }
        }
    }
}

impl Scheduled {
    async fn call(&self, input: ToolInput) -> Result<ToolOutput, ToolError> {
        let pool = self.tool.pool;
        let running = {
            let mut agents = self.agents.lock_or_recover();
            let slot = agents
                .entry(input.agent.clone())
                .or_insert_with(|| AgentSlot {
                    pending: 0,
                    running: Arc::new(Semaphore::new((pool.workers / 2).max(1))),
                });
            if slot.pending >= pool.per_agent {
                return Err(ToolError(format!(
                    "busy: agent `{}` already has {} calls of `{}` running or waiting",
                    input.agent, slot.pending, self.name
                )));
            }
            slot.pending += 1;
            slot.running.clone()
        };
        let _place = Place {
            s: self,
            agent: input.agent.clone(),
        };
        let _mine = running
            .acquire_owned()
            .await
            .map_err(|_| ToolError("the tool's pool is closed".into()))?;
        let _worker = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ToolError("the tool's pool is closed".into()))?;
        let req = self.request(&input)?;
        let report = self
            .tool
            .sandbox
            .run(req)
            .await
            .map_err(|e| ToolError(e.to_string()))?;
        let stdout = match serde_json::from_str::<Value>(report.stdout.trim()) {
            Ok(v) if report.status == RunStatus::Ok => v,
            _ => Value::String(report.stdout.clone()),
        };
        Ok(ToolOutput::new(json!({
            "status": report.status,
            "exit_code": report.exit_code,
            "stdout": stdout,
            "stderr": report.stderr,
            "limit": report.limit,
            "reason": (report.status != RunStatus::Ok).then(|| report.reason()),
            "wall_ms": report.wall_ms,
        })))
    }

    fn request(&self, input: &ToolInput) -> Result<RunRequest, ToolError> {
        let mut req = match &self.tool.code {
            ToolCode::Fixed(program) => {
                let mut r = RunRequest::new(program.clone());
                r.stdin = input.args.to_string().into_bytes();
                r
            }
            ToolCode::Script {
                language,
                code_arg,
                files_arg,
            } => {
                let code = input
                    .args
                    .get(code_arg)
                    .and_then(Value::as_str)
                    .ok_or_else(|| ToolError(format!("argument `{code_arg}` must be a string")))?
                    .to_string();
                let mut r = RunRequest::new(match language {
                    ScriptLanguage::Python => Program::Python(code),
                    ScriptLanguage::JavaScript => Program::JavaScript(code),
                });
                if let Some(files) = files_arg.as_ref().and_then(|a| input.args.get(a)) {
                    let files = files.as_object().ok_or_else(|| {
                        ToolError("the files argument must map names to text".into())
                    })?;
                    for (name, text) in files {
                        let text = text
                            .as_str()
                            .ok_or_else(|| ToolError(format!("file `{name}` must be text")))?;
                        r.files.push((name.clone(), text.as_bytes().to_vec()));
                    }
                }
                r
            }
        };
        req.limits = self
            .tool
            .limits
            .tighten(&token_limits(&input.sandbox_limits));
        if let Some(gate) = &self.tool.gate {
            for m in &self.tool.mounts {
                let tier = gate.tier(&input.agent, &format!("mount:{}", m.guest));
                if tier.is_some_and(|t| t <= Tier::AutoPlus) {
                    req.mounts.push(m.clone());
                }
            }
        }
        if let (Some(gate), Program::Wasm { .. }) = (&self.tool.gate, &req.program) {
            let granted = |tool: &str| {
                gate.tier(&input.agent, tool)
                    .is_some_and(|t| t < Tier::Block)
            };
            let http_get = granted(host::HTTP_GET);
            let read_secret = granted(host::READ_SECRET);
            if http_get || read_secret {
                req.host = Some(HostAccess {
                    gate: gate.clone(),
                    agent: input.agent.clone(),
                    http_get,
                    read_secret,
                });
            }
        }
        Ok(req)
    }
}

/// The limits a token sets, as [`Limits`] with everything it does not set unbounded
/// (so [`Limits::tighten`] keeps the tool's value there).
fn token_limits(set: &std::collections::BTreeMap<String, u64>) -> Limits {
    let get = |k: &str| set.get(k).copied();
    Limits {
        memory_bytes: get("memory_bytes").unwrap_or(u64::MAX),
        timeout: get("timeout_ms")
            .map_or(std::time::Duration::MAX, std::time::Duration::from_millis),
        fuel: get("fuel"),
        output_bytes: get("output_bytes")
            .map_or(usize::MAX, |v| usize::try_from(v).unwrap_or(usize::MAX)),
        max_input_bytes: usize::MAX,
        table_elements: usize::MAX,
        instances: usize::MAX,
        disk_bytes: get("disk_bytes").unwrap_or(u64::MAX),
        disk_files: get("disk_files").unwrap_or(u64::MAX),
    }
}
