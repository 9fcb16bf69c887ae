//! A node's configuration: one TOML file, checked whole at start.
//!
//! Relative paths are relative to the file. A wrong configuration is refused with the
//! file, the key and the reason ([`ConfigError`]); nothing starts half-configured.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bulwark_capabilities::{MicroUsd, PublicKey, Tier};
use bulwark_runtime::guard::LocalModelConfig;
use serde::Deserialize;

/// Most bytes a configuration file may hold.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A node's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// The node's id, unique in its cluster.
    pub id: String,
    /// The cluster's name: every subject lives under `bulwark.<cluster>.`.
    pub cluster: String,
    /// Where the node keeps its database, audit trail and keys.
    pub data_dir: PathBuf,
    /// The root key every token must be issued under.
    pub root_public_key: PublicKey,
    /// Keys whose signed decisions and revocations the node accepts.
    pub operator_keys: Vec<PublicKey>,
    /// An operator's private key file the node signs the revocations its embedding
    /// program makes (`Runtime::revoke`) with, so the other nodes accept them; its
    /// public key must be one of `operator_keys`. Without it such revocations stay
    /// on this node.
    pub revocation_key_file: Option<PathBuf>,
    /// Labels spawns can be placed by.
    pub labels: BTreeMap<String, String>,
    /// How to reach NATS.
    pub nats: NatsConfig,
    /// Sandboxed tools the node hosts.
    pub tools: Vec<ToolConfig>,
    /// Brain profiles the node offers, by name.
    pub brains: BTreeMap<String, BrainConfig>,
    /// The dashboard's address, if any.
    pub dashboard: Option<std::net::SocketAddr>,
    /// The local guard model, if set (`[guard_model]`, with optional `dir` and
    /// `head`): the node does not start when it cannot load.
    pub guard_model: Option<LocalModelConfig>,
}

/// How a node reaches NATS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URLs (`nats://` or `tls://`).
    pub urls: Vec<String>,
    /// An NKey seed file.
    pub nkey_seed_file: Option<PathBuf>,
    /// A credentials (`.creds`) file.
    pub credentials_file: Option<PathBuf>,
    /// TLS with a CA and a client certificate.
    pub tls: Option<TlsConfig>,
}

/// TLS files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// The client key (PEM).
    pub key: Option<PathBuf>,
}

/// A sandboxed tool the node hosts.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolConfig {
    /// Its name.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// Most it may cost per call.
    pub max_cost: MicroUsd,
    /// What runs.
    pub program: ToolProgram,
    /// Its sandbox limits (the sandbox's defaults where not set; a caller's token
    /// can only tighten them).
    pub limits: bulwark_runtime::sandbox::Limits,
    /// Host directories it sees read-only.
    pub mounts: Vec<bulwark_runtime::sandbox::Mount>,
}

/// The code of a sandboxed tool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolProgram {
    /// A WebAssembly module (`.wasm` or `.wat`).
    Wasm(PathBuf),
    /// A Python script, run on CPython in the sandbox.
    Python(PathBuf),
    /// A JavaScript file, run on QuickJS in the sandbox.
    Js(PathBuf),
}

/// A brain profile.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BrainConfig {
    /// An OpenAI-compatible chat completions endpoint (`kind = "openai"`).
    #[serde(rename = "openai")]
    OpenAi {
        /// Its base URL.
        base_url: String,
        /// The model.
        model: String,
        /// The cheaper model used in economy mode, if any.
        cheap_model: Option<String>,
        /// The environment variable holding the API key.
        api_key_env: String,
    },
    /// A scripted brain: a JSON array of actions in `BrainAction`'s serde form
    /// (`kind = "scripted"`).
    Scripted {
        /// The file.
        file: PathBuf,
    },
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read it: {reason}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not TOML of the expected shape.
    #[error("{file}: {reason}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The parser's message (with the line and the key).
        reason: String,
    },
    /// A value that does not hold.
    #[error("{file}: `{key}`: {reason}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    id: String,
    cluster: String,
    data_dir: PathBuf,
    root_public_key: String,
    #[serde(default)]
    operator_keys: Vec<String>,
    revocation_key_file: Option<PathBuf>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    nats: RawNats,
    #[serde(default)]
    tools: Vec<RawTool>,
    #[serde(default)]
    brains: BTreeMap<String, BrainConfig>,
    dashboard: Option<RawDashboard>,
    guard_model: Option<LocalModelConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNats {
    urls: Vec<String>,
    nkey_seed_file: Option<PathBuf>,
    credentials_file: Option<PathBuf>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTool {
    name: String,
    tier: String,
    max_cost: String,
    wasm: Option<PathBuf>,
    python: Option<PathBuf>,
    js: Option<PathBuf>,
    #[serde(default)]
    limits: RawLimits,
    /// `HOST_DIR:GUEST_DIR:ro`, the host directory relative to the file.
    #[serde(default)]
    mounts: Vec<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory_bytes: Option<u64>,
    timeout_ms: Option<u64>,
    fuel: Option<u64>,
    output_bytes: Option<u64>,
    disk_bytes: Option<u64>,
    disk_files: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDashboard {
    listen: String,
}

impl NodeConfig {
    /// A node `id` of `cluster` keeping its data in `data_dir`, trusting tokens of
    /// `root`, reaching NATS at `url`; no operators, labels, tools, brains or
    /// dashboard (set the fields to add them).
    pub fn new(
        id: &str,
        cluster: &str,
        data_dir: impl Into<PathBuf>,
        root: PublicKey,
        url: &str,
    ) -> NodeConfig {
        NodeConfig {
            id: id.to_string(),
            cluster: cluster.to_string(),
            data_dir: data_dir.into(),
            root_public_key: root,
            operator_keys: Vec::new(),
            revocation_key_file: None,
            labels: BTreeMap::new(),
            nats: NatsConfig {
                urls: vec![url.to_string()],
                nkey_seed_file: None,
                credentials_file: None,
                tls: None,
            },
            tools: Vec::new(),
            brains: BTreeMap::new(),
            dashboard: None,
            guard_model: None,
        }
    }

    /// Reads and checks the configuration in `file`.
    pub fn load(file: &Path) -> Result<NodeConfig, ConfigError> {
        let read = |reason: String| ConfigError::Read {
            file: file.to_path_buf(),
            reason,
        };
        let size = std::fs::metadata(file)
            .map_err(|e| read(e.to_string()))?
            .len();
        if size > MAX_CONFIG_BYTES {
            return Err(read(format!("{size} bytes, more than {MAX_CONFIG_BYTES}")));
        }
        let text = std::fs::read_to_string(file).map_err(|e| read(e.to_string()))?;
        let base = file.parent().unwrap_or(Path::new("."));
        NodeConfig::parse(&text, file, base)
    }

    /// Checks configuration `text` read from `file`, resolving relative paths
    /// against `base`.
    pub fn parse(text: &str, file: &Path, base: &Path) -> Result<NodeConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })?;
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let path = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        check_name(&raw.id).map_err(|r| invalid("id", r))?;
        check_name(&raw.cluster).map_err(|r| invalid("cluster", r))?;
        let root_public_key = PublicKey::from_hex(&raw.root_public_key)
            .map_err(|e| invalid("root_public_key", e.to_string()))?;
        let operator_keys = raw
            .operator_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                PublicKey::from_hex(k)
                    .map_err(|e| invalid(&format!("operator_keys[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let nats = nats_config(raw.nats, &path, &invalid)?;
        let mut tools = Vec::new();
        for (i, t) in raw.tools.into_iter().enumerate() {
            tools.push(tool_config(t, &path, &|k, r| {
                invalid(&format!("tools[{i}].{k}"), r)
            })?);
        }
        let mut brains = BTreeMap::new();
        for (name, b) in raw.brains {
            check_name(&name).map_err(|r| invalid(&format!("brains.{name}"), r))?;
            let brain = match b {
                BrainConfig::OpenAi { ref base_url, .. }
                    if !(base_url.starts_with("https://") || base_url.starts_with("http://")) =>
                {
                    return Err(invalid(
                        &format!("brains.{name}.base_url"),
                        "an http:// or https:// URL is needed".into(),
                    ));
                }
                BrainConfig::Scripted { file } => BrainConfig::Scripted { file: path(file) },
                openai => openai,
            };
            brains.insert(name, brain);
        }
        let dashboard = raw
            .dashboard
            .map(|d| {
                d.listen
                    .parse()
                    .map_err(|e| invalid("dashboard.listen", format!("`{}`: {e}", d.listen)))
            })
            .transpose()?;
        Ok(NodeConfig {
            id: raw.id,
            cluster: raw.cluster,
            data_dir: path(raw.data_dir),
            root_public_key,
            operator_keys,
            revocation_key_file: raw.revocation_key_file.map(&path),
            labels: raw.labels,
            nats,
            tools,
            brains,
            dashboard,
            guard_model: raw.guard_model.map(|g| LocalModelConfig {
                dir: g.dir.map(&path),
                head: g.head.map(&path),
            }),
        })
    }
}

fn nats_config(
    raw: RawNats,
    path: &dyn Fn(PathBuf) -> PathBuf,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<NatsConfig, ConfigError> {
    if raw.urls.is_empty() {
        return Err(invalid(
            "nats.urls",
            "at least one server URL is needed".into(),
        ));
    }
    for (i, url) in raw.urls.iter().enumerate() {
        let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|s| url.starts_with(s));
        if !scheme_ok {
            return Err(invalid(
                &format!("nats.urls[{i}]"),
                format!("`{url}` is not a nats://, tls://, ws:// or wss:// URL"),
            ));
        }
    }
    if raw.nkey_seed_file.is_some() && raw.credentials_file.is_some() {
        return Err(invalid(
            "nats",
            "set either nkey_seed_file or credentials_file, not both".into(),
        ));
    }
    let tls = match raw.tls {
        Some(t) => {
            if t.cert.is_some() != t.key.is_some() {
                return Err(invalid(
                    "nats.tls",
                    "a client certificate needs its key, and a key its certificate".into(),
                ));
            }
            Some(TlsConfig {
                ca: path(t.ca),
                cert: t.cert.map(path),
                key: t.key.map(path),
            })
        }
        None => None,
    };
    Ok(NatsConfig {
        urls: raw.urls,
        nkey_seed_file: raw.nkey_seed_file.map(path),
        credentials_file: raw.credentials_file.map(path),
        tls,
    })
}

fn tool_config(
    raw: RawTool,
    path: &dyn Fn(PathBuf) -> PathBuf,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<ToolConfig, ConfigError> {
    check_name(&raw.name).map_err(|r| invalid("name", r))?;
    let tier: Tier = raw
        .tier
        .parse()
        .map_err(|e| invalid("tier", format!("`{}`: {e}", raw.tier)))?;
    let max_cost: MicroUsd = raw
        .max_cost
        .parse()
        .map_err(|e| invalid("max_cost", format!("`{}`: {e}", raw.max_cost)))?;
    let program = match (raw.wasm, raw.python, raw.js) {
        (Some(p), None, None) => ToolProgram::Wasm(path(p)),
        (None, Some(p), None) => ToolProgram::Python(path(p)),
        (None, None, Some(p)) => ToolProgram::Js(path(p)),
        _ => {
            return Err(invalid(
                "wasm",
                "exactly one of `wasm`, `python` or `js` names the tool's code".into(),
            ));
        }
    };
    let mut limits = bulwark_runtime::sandbox::Limits::default();
    let l = raw.limits;
    let positive = |key: &str, v: u64| {
        if v == 0 {
            Err(invalid(
                &format!("limits.{key}"),
                "must be more than 0".into(),
            ))
        } else {
            Ok(v)
        }
    };
    if let Some(v) = l.memory_bytes {
        limits.memory_bytes = positive("memory_bytes", v)?;
    }
    if let Some(v) = l.timeout_ms {
        limits.timeout = std::time::Duration::from_millis(positive("timeout_ms", v)?);
    }
    if let Some(v) = l.fuel {
        limits.fuel = Some(positive("fuel", v)?);
    }
    if let Some(v) = l.output_bytes {
        limits.output_bytes = usize::try_from(positive("output_bytes", v)?)
            .map_err(|_| invalid("limits.output_bytes", "too large".into()))?;
    }
    if let Some(v) = l.disk_bytes {
        limits.disk_bytes = v;
    }
    if let Some(v) = l.disk_files {
        limits.disk_files = v;
    }
    let mut mounts = Vec::new();
    for (m, spec) in raw.mounts.iter().enumerate() {
        let mut mount = bulwark_runtime::sandbox::Mount::parse(spec)
            .map_err(|e| invalid(&format!("mounts[{m}]"), e.to_string()))?;
        mount.host = path(mount.host);
        if !mount.host.is_dir() {
            return Err(invalid(
                &format!("mounts[{m}]"),
                format!("{} is not a directory", mount.host.display()),
            ));
        }
        mounts.push(mount);
    }
    Ok(ToolConfig {
        name: raw.name,
        tier,
        max_cost,
        program,
        limits,
        mounts,
    })
}

/// Ids and names: 1 to 64 ASCII letters, digits, `-` or `_` (they become parts of
/// NATS subjects, where `.`, `*`, `>` and spaces mean something).
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be 1 to 64 letters, digits, `-` or `_`"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_capabilities::KeyPair;

    fn example(root: &str) -> String {
        format!(
            r#"
id = "n1"
cluster = "demo"
data_dir = "data/n1"
root_public_key = "{root}"
operator_keys = ["{root}"]
labels = {{ zone = "a" }}

[nats]
urls = ["nats://127.0.0.1:4222"]

[[tools]]
name = "summarize"
tier = "auto"
max_cost = "0.01"
python = "tools/summarize.py"

[brains.demo]
kind = "scripted"
file = "brains/demo.json"

[brains.gpt]
kind = "openai"
base_url = "https://llm.example/v1"
model = "m"
api_key_env = "OPENAI_API_KEY"

[dashboard]
listen = "127.0.0.1:8080"

[guard_model]
head = "heads/mail.json"
"#
        )
    }

    #[test]
    fn the_documented_example_loads_with_paths_relative_to_the_file() {
        let root = KeyPair::generate().public().to_hex();
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("n1.toml");
        std::fs::write(&file, example(&root)).expect("write");
        let c = NodeConfig::load(&file).expect("loads");
        assert_eq!(c.id, "n1");
        assert_eq!(c.data_dir, dir.path().join("data/n1"));
        assert_eq!(c.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(
            c.tools[0].program,
            ToolProgram::Python(dir.path().join("tools/summarize.py"))
        );
        assert_eq!(c.tools[0].tier, Tier::Auto);
        assert_eq!(c.tools[0].max_cost.micros(), 10_000);
        assert!(matches!(c.brains["demo"], BrainConfig::Scripted { .. }));
        assert!(matches!(c.brains["gpt"], BrainConfig::OpenAi { .. }));
        assert_eq!(c.dashboard.map(|a| a.port()), Some(8080));
        assert_eq!(
            c.tools[0].limits,
            bulwark_runtime::sandbox::Limits::default()
        );
        assert!(c.tools[0].mounts.is_empty());
        let guard = c.guard_model.expect("guard_model");
        assert_eq!(guard.head, Some(dir.path().join("heads/mail.json")));
        assert_eq!(guard.dir, None);
    }

    #[test]
    fn a_tools_limits_and_mounts_are_read_with_the_mount_relative_to_the_file() {
        let root = KeyPair::generate().public().to_hex();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("reports")).expect("mkdir");
        let text = example(&root).replace(
            "python = \"tools/summarize.py\"",
            "python = \"tools/summarize.py\"\nmounts = [\"reports:/data:ro\"]\n\
             limits = { memory_bytes = 33554432, timeout_ms = 500, fuel = 1000000, output_bytes = 4096 }",
        );
        let file = dir.path().join("n1.toml");
        std::fs::write(&file, text).expect("write");
        let c = NodeConfig::load(&file).expect("loads");
        let t = &c.tools[0];
        assert_eq!(t.limits.memory_bytes, 32 << 20);
        assert_eq!(t.limits.timeout, std::time::Duration::from_millis(500));
        assert_eq!(t.limits.fuel, Some(1_000_000));
        assert_eq!(t.limits.output_bytes, 4096);
        assert_eq!(t.mounts[0].host, dir.path().join("reports"));
        assert_eq!(t.mounts[0].guest, "/data");
    }

    #[test]
    fn a_wrong_config_names_the_file_the_key_and_the_reason() {
        let root = KeyPair::generate().public().to_hex();
        let good = example(&root);
        let file = Path::new("/etc/bulwark/n1.toml");
        let refused = |text: String| {
            NodeConfig::parse(&text, file, Path::new("/etc/bulwark"))
                .expect_err("refused")
                .to_string()
        };
        let cases = [
            (good.replace("id = \"n1\"", "id = \"n.1\""), "`id`"),
            (
                good.replace(
                    &format!("root_public_key = \"{root}\""),
                    "root_public_key = \"zz\"",
                ),
                "`root_public_key`",
            ),
            (
                good.replace("nats://127.0.0.1:4222", "http://x"),
                "`nats.urls[0]`",
            ),
            (
                good.replace("tier = \"auto\"", "tier = \"sometimes\""),
                "`tools[0].tier`",
            ),
            (
                good.replace("max_cost = \"0.01\"", "max_cost = \"-1\""),
                "`tools[0].max_cost`",
            ),
            (
                good.replace(
                    "python = \"tools/summarize.py\"",
                    "python = \"a.py\"\njs = \"b.js\"",
                ),
                "`tools[0].wasm`",
            ),
            (
                good.replace("listen = \"127.0.0.1:8080\"", "listen = \"everywhere\""),
                "`dashboard.listen`",
            ),
            (
                good.replace(
                    "base_url = \"https://llm.example/v1\"",
                    "base_url = \"ftp://x\"",
                ),
                "`brains.gpt.base_url`",
            ),
            (
                good.replace(
                    "cluster = \"demo\"",
                    "cluster = \"demo\"\nclustr = \"typo\"",
                ),
                "unknown field `clustr`",
            ),
            (
                good.replace(
                    "[nats]\nurls = [\"nats://127.0.0.1:4222\"]",
                    "[nats]\nurls = []",
                ),
                "`nats.urls`",
            ),
            (
                good.replace(
                    "python = \"tools/summarize.py\"",
                    "python = \"a.py\"\nlimits = { fuel = 0 }",
                ),
                "`tools[0].limits.fuel`",
            ),
            (
                good.replace(
                    "python = \"tools/summarize.py\"",
                    "python = \"a.py\"\nlimits = { cpus = 2 }",
                ),
                "unknown field `cpus`",
            ),
            (
                good.replace(
                    "python = \"tools/summarize.py\"",
                    "python = \"a.py\"\nmounts = [\"/nonexistent-dir:/data:ro\"]",
                ),
                "`tools[0].mounts[0]`",
            ),
            (
                good.replace(
                    "python = \"tools/summarize.py\"",
                    "python = \"a.py\"\nmounts = [\"/tmp:/data:rw\"]",
                ),
                "read-only",
            ),
        ];
        for (text, expected) in cases {
            let message = refused(text);
            assert!(message.starts_with("/etc/bulwark/n1.toml"), "{message}");
            assert!(
                message.contains(expected),
                "expected {expected} in: {message}"
            );
        }
    }

    #[test]
    fn an_oversized_or_missing_file_is_a_read_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = NodeConfig::load(&dir.path().join("none.toml")).expect_err("missing");
        assert!(matches!(missing, ConfigError::Read { .. }), "{missing}");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_CONFIG_BYTES + 1) as usize]).expect("write");
        let err = NodeConfig::load(&big).expect_err("too big");
        assert!(err.to_string().contains("more than"), "{err}");
    }
}
