//! Per-call limits: their defaults, how a tighter set combines with a looser one,
//! and the resource limiter that enforces memory and reports its peak. The disk
//! limits are enforced by [`super::disk`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SandboxError;

/// The limits of one call. Combining two sets with [`Limits::tighten`] keeps the
/// stricter value of each, so a token or a caller can only narrow a tool's limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Linear memory, bytes (default 128 MiB).
    pub memory_bytes: u64,
    /// Wall-clock deadline (default 3 s), enforced by epoch interruption.
    #[serde(with = "crate::clock::duration_text")]
    pub timeout: Duration,
    /// Fuel (instructions, roughly); `None` means no fuel limit.
    pub fuel: Option<u64>,
    /// Each of stdout and stderr, bytes (default 1 MiB); longer output is cut and
    /// marked.
    pub output_bytes: usize,
    /// Script, arguments and standard input, bytes (default 1 MiB).
    pub max_input_bytes: usize,
    /// Table elements (default 100 000).
    pub table_elements: usize,
    /// Instances per call (default 4).
    pub instances: usize,
    /// Bytes the scratch directory may hold (default 64 MiB): the sum of its regular
    /// files' sizes, counting a sparse file at its full length. Files placed there
    /// for the call count too.
    pub disk_bytes: u64,
    /// Entries the scratch directory may hold (default 1024): files, directories and
    /// links, at any depth.
    pub disk_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 128 << 20,
            timeout: Duration::from_secs(3),
            fuel: None,
            output_bytes: 1 << 20,
            max_input_bytes: 1 << 20,
            table_elements: 100_000,
            instances: 4,
            disk_bytes: 64 << 20,
            disk_files: 1024,
        }
    }
}

impl Limits {
    /// The stricter of `self` and `other`, field by field.
    pub fn tighten(&self, other: &Limits) -> Limits {
        Limits {
            memory_bytes: self.memory_bytes.min(other.memory_bytes),
            timeout: self.timeout.min(other.timeout),
            fuel: match (self.fuel, other.fuel) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            output_bytes: self.output_bytes.min(other.output_bytes),
            max_input_bytes: self.max_input_bytes.min(other.max_input_bytes),
            table_elements: self.table_elements.min(other.table_elements),
            instances: self.instances.min(other.instances),
            disk_bytes: self.disk_bytes.min(other.disk_bytes),
            disk_files: self.disk_files.min(other.disk_files),
        }
    }

    /// Refuses limits the sandbox cannot honour.
    pub(crate) fn checked(&self, max_memory: u64) -> Result<Limits, SandboxError> {
        if self.memory_bytes > max_memory {
            return Err(SandboxError::Refused(format!(
                "a memory limit of {} bytes is above the sandbox's maximum of {max_memory}",
                self.memory_bytes
            )));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(3600) {
            return Err(SandboxError::Refused(
                "the timeout must be between 1 ms and 1 h".into(),
            ));
        }
        if self.output_bytes > 64 << 20 || self.max_input_bytes > 64 << 20 {
            return Err(SandboxError::Refused(
                "output and input caps are at most 64 MiB".into(),
            ));
        }
        Ok(self.clone())
    }
}

/// Which limit stopped a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// The wall-clock deadline.
    Timeout,
    /// The memory limit.
    Memory,
    /// The fuel.
    Fuel,
    /// The output cap.
    Output,
    /// The scratch directory's disk limit (bytes or entries).
    Disk,
}

impl LimitKind {
    /// A sentence for people.
    pub fn describe(self) -> &'static str {
        match self {
            LimitKind::Timeout => "the call ran past its deadline and was interrupted",
            LimitKind::Memory => "the guest asked for more memory than its limit",
            LimitKind::Fuel => "the guest used up its fuel",
            LimitKind::Output => "the guest wrote more output than its cap; the rest was cut",
            LimitKind::Disk => {
                "the guest tried to put more in its scratch directory than its disk limit allows"
            }
        }
    }
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitKind::Timeout => "timeout",
            LimitKind::Memory => "memory",
            LimitKind::Fuel => "fuel",
            LimitKind::Output => "output",
            LimitKind::Disk => "disk",
        })
    }
}

/// Enforces the memory and table limits, remembering the peak and whether a growth
/// was refused.
pub(crate) struct Limiter {
    memory: usize,
    table_elements: usize,
    instances: usize,
    pub peak: usize,
    pub hit: bool,
}

impl Limiter {
    pub fn new(limits: &Limits) -> Self {
        Limiter {
            memory: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            table_elements: limits.table_elements,
            instances: limits.instances,
            peak: 0,
            hit: false,
        }
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_elements)
    }

    fn instances(&self) -> usize {
        // One more for the disk quota's trampoline.
        self.instances.saturating_add(1)
    }

    fn tables(&self) -> usize {
        self.instances
    }

    fn memories(&self) -> usize {
        self.instances
    }
}
