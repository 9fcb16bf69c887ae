//! Host functions: the only way sandboxed code reaches outside. They exist in a
//! module's imports only when the calling agent's token grants the matching tool,
//! and each call goes through the gate as that agent, with its own arguments — so
//! the token's constraints (for example, the hosts an `http_get` URL may name) and
//! the audit trail apply exactly as to any tool call.
//!
//! Imports, module `bulwark`, all `(param i32 i32 i32 i32) (result i32)`:
//! `http_get(url_ptr, url_len, out_ptr, out_cap)` calls tool [`HTTP_GET`] with
//! `{"url": …}`; `read_secret(name_ptr, name_len, out_ptr, out_cap)` calls tool
//! [`READ_SECRET`] with `{"name": …}`. Each writes the result (the body or secret as
//! text; other JSON results as JSON text) at `out_ptr` and returns its length, or a
//! negative code: [`DENIED`], [`FAILED`], [`TOO_LARGE`], [`BAD_MEMORY`].
//!
//! A host call never waits for a person: a call whose tier needs an approval
//! (PROPOSE, CONFIRM) is refused at once ([`DENIED`]; the audit trail names the
//! reason), and the wait for any other call ends at the sandboxed call's own
//! deadline, which then stops the guest with limit `timeout` (the tool call itself
//! finishes in the background, bounded by its tool's timeout, and is audited and
//! charged as usual).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bulwark_capabilities::Tier;

use serde_json::{Value, json};
use wasmtime::{Caller, Extern, Linker, Trap};

use super::{State, TICK};

/// The tool an `http_get` host call becomes.
pub const HTTP_GET: &str = "http_get";
/// The tool a `read_secret` host call becomes.
pub const READ_SECRET: &str = "read_secret";
/// The gate refused the call.
pub const DENIED: i32 = -1;
/// The tool failed.
pub const FAILED: i32 = -2;
/// The result does not fit in `out_cap`.
pub const TOO_LARGE: i32 = -3;
/// A pointer or length is outside the module's memory.
pub const BAD_MEMORY: i32 = -4;

/// Calls tools through the gate on an agent's behalf; implemented by the runtime.
pub trait HostGate: Send + Sync {
    /// The tier at which the agent's token grants `tool`; `None` when it does not.
    fn tier(&self, agent: &str, tool: &str) -> Option<Tier>;
    /// Calls `tool` as `agent` through the gate, from inside a sandboxed call. Runs
    /// on a blocking thread. It must not wait for a person: a call whose tier needs
    /// an approval is refused at once ([`HostCallError::NeedsApproval`]), and the
    /// caller waits at most `within` ([`HostCallError::TimedOut`]).
    fn call(
        &self,
        agent: &str,
        tool: &str,
        args: Value,
        within: Duration,
    ) -> Result<Value, HostCallError>;
}

/// Why a host call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostCallError {
    /// The gate refused it.
    #[error("denied: {0}")]
    Denied(String),
    /// The tool failed.
    #[error("failed: {0}")]
    Failed(String),
    /// The call's tier needs an approval (PROPOSE or CONFIRM), which a call made from
    /// inside a sandboxed tool cannot wait for.
    #[error("refused: {0}")]
    NeedsApproval(String),
    /// The sandboxed call's deadline came before the host call finished.
    #[error("the sandboxed call's deadline came first")]
    TimedOut,
}

/// Which host functions a call's module is linked with, and whom they act for.
#[derive(Clone)]
pub struct HostAccess {
    /// The gate.
    pub gate: Arc<dyn HostGate>,
    /// The calling agent.
    pub agent: String,
    /// Whether `http_get` exists.
    pub http_get: bool,
    /// Whether `read_secret` exists.
    pub read_secret: bool,
}

impl std::fmt::Debug for HostAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostAccess")
            .field("agent", &self.agent)
            .field("http_get", &self.http_get)
            .field("read_secret", &self.read_secret)
            .finish()
    }
}

impl HostAccess {
    /// The linker variant: bit 0 `http_get`, bit 1 `read_secret`.
    pub(crate) fn variant(access: Option<&HostAccess>) -> usize {
        access.map_or(0, |a| {
            usize::from(a.http_get) | (usize::from(a.read_secret) << 1)
        })
    }
}

/// Defines the host functions of `variant` in `linker`.
pub(crate) fn define(linker: &mut Linker<State>, variant: usize) -> wasmtime::Result<()> {
    if variant & 1 != 0 {
        linker.func_wrap(
            "bulwark",
            "http_get",
            |caller: Caller<'_, State>, ptr: i32, len: i32, out: i32, cap: i32| {
                host_call(caller, HTTP_GET, "url", (ptr, len, out, cap))
            },
        )?;
    }
    if variant & 2 != 0 {
        linker.func_wrap(
            "bulwark",
            "read_secret",
            |caller: Caller<'_, State>, ptr: i32, len: i32, out: i32, cap: i32| {
                host_call(caller, READ_SECRET, "name", (ptr, len, out, cap))
            },
        )?;
    }
    Ok(())
}

/// What is left of the call's deadline.
fn time_left(state: &State) -> Duration {
    let ticks = state
        .deadline
        .load(Ordering::Relaxed)
        .saturating_sub(state.now.load(Ordering::Relaxed));
    // An hour at most: the longest timeout a call may have.
    let ticks = ticks.min(3600 * 1000 / TICK.as_millis().max(1) as u64);
    TICK.saturating_mul(u32::try_from(ticks).unwrap_or(u32::MAX))
}

fn host_call(
    mut caller: Caller<'_, State>,
    tool: &str,
    arg: &str,
    (ptr, len, out, cap): (i32, i32, i32, i32),
) -> wasmtime::Result<i32> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Ok(BAD_MEMORY);
    };
    let (Ok(ptr), Ok(len), Ok(out), Ok(cap)) = (
        usize::try_from(ptr),
        usize::try_from(len),
        usize::try_from(out),
        usize::try_from(cap),
    ) else {
        return Ok(BAD_MEMORY);
    };
    if len > 64 * 1024 {
        return Ok(TOO_LARGE);
    }
    let mut buf = vec![0u8; len];
    if memory.read(&caller, ptr, &mut buf).is_err() {
        return Ok(BAD_MEMORY);
    }
    let Ok(value) = String::from_utf8(buf) else {
        return Ok(BAD_MEMORY);
    };
    let Some(access) = caller.data().host.clone() else {
        return Ok(DENIED);
    };
    let within = time_left(caller.data());
    if within.is_zero() {
        return Err(Trap::Interrupt.into());
    }
    let result = access
        .gate
        .call(&access.agent, tool, json!({ arg: value }), within);
    let text = match result {
        Ok(Value::String(s)) => s,
        Ok(Value::Object(o)) if o.get("body").is_some_and(Value::is_string) => o
            .get("body")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Ok(other) => other.to_string(),
        // The deadline has passed: the guest stops as at any other deadline.
        Err(HostCallError::TimedOut) => return Err(Trap::Interrupt.into()),
        Err(HostCallError::Denied(_) | HostCallError::NeedsApproval(_)) => return Ok(DENIED),
        Err(HostCallError::Failed(_)) => return Ok(FAILED),
    };
    if text.len() > cap {
        return Ok(TOO_LARGE);
    }
    if memory.write(&mut caller, out, text.as_bytes()).is_err() {
        return Ok(BAD_MEMORY);
    }
    Ok(i32::try_from(text.len()).unwrap_or(TOO_LARGE))
}

/// A ready-made [`HTTP_GET`] tool: a GET with a 10 s timeout whose body (as text,
/// at most `max_bytes`) is the result. Register it, and grant `http_get` in a token
/// with a `url starts_with …` constraint, to let modules fetch from those hosts only.
pub fn http_get_tool(max_bytes: usize) -> crate::tools::Tool {
    let manifest = crate::tools::ToolManifest::new(HTTP_GET, "Fetches a URL with HTTP GET")
        .schema(json!({"type": "object", "required": ["url"],
            "properties": {"url": {"type": "string"}}, "additionalProperties": false}));
    crate::tools::Tool::native(manifest, move |input| async move {
        let url = input.args["url"].as_str().unwrap_or_default().to_string();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| crate::tools::ToolError(e.to_string()))?;
        let resp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| crate::tools::ToolError(format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| crate::tools::ToolError(format!("GET {url}: {e}")))?;
        if body.len() > max_bytes {
            return Err(crate::tools::ToolError(format!(
                "GET {url}: the body is over {max_bytes} bytes"
            )));
        }
        Ok(crate::tools::ToolOutput::new(json!({
            "status": status,
            "body": String::from_utf8_lossy(&body),
        })))
    })
}
