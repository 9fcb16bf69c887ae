//! What the cluster tests share: a nats-server on a free loopback port, `bulwark node`
//! processes, the command line and the audit trail of a stopped node.
//!
//! nats-server comes from `scripts/fetch-nats-server` (the test command runs it), or
//! from `$BULWARK_NATS_SERVER`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("BULWARK_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let dir = std::env::var("BULWARK_NATS_DIR")
        .unwrap_or_else(|_| format!("{home}/.cache/bulwark/nats-server"));
    let path = Path::new(&dir).join("nats-server");
    assert!(
        path.exists(),
        "nats-server is missing at {}: run scripts/fetch-nats-server (the test command does) or set BULWARK_NATS_SERVER",
        path.display()
    );
    path
}

/// Processes killed when the test ends, however it ends.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts nats-server on a free loopback port; returns its URL.
pub fn start_nats(dir: &Path, procs: &mut Procs) -> String {
    let ports = dir.join("ports");
    std::fs::create_dir_all(&ports).expect("ports dir");
    let child = Command::new(nats_server_binary())
        .args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
        .arg(&ports)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let file = ports.join(format!("nats-server_{}.ports", child.id()));
    procs.0.push(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Some(url) = v["nats"][0].as_str()
        {
            return url.to_string();
        }
        assert!(Instant::now() < deadline, "nats-server wrote no ports file");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn write_config(dir: &Path, id: &str, url: &str, root: &str) -> PathBuf {
    write_config_with(dir, id, url, root, &[])
}

pub fn write_config_with(
    dir: &Path,
    id: &str,
    url: &str,
    root: &str,
    operators: &[String],
) -> PathBuf {
    let file = dir.join(format!("{id}.toml"));
    let operators: Vec<String> = operators.iter().map(|k| format!("\"{k}\"")).collect();
    std::fs::write(
        &file,
        format!(
            "id = \"{id}\"\ncluster = \"t\"\ndata_dir = \"{id}-data\"\nroot_public_key = \"{root}\"\noperator_keys = [{}]\nlabels = {{ zone = \"{id}\" }}\n\n[nats]\nurls = [\"{url}\"]\n",
            operators.join(", ")
        ),
    )
    .expect("write config");
    file
}

/// Starts a node and waits (bounded) for its `ready` line.
pub fn start_node(config: &Path, id: &str, procs: &mut Procs) -> u32 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["node", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start node");
    let stdout = child.stdout.take().expect("stdout");
    let pid = child.id();
    procs.0.push(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the node printed no line within 120 s");
    assert_eq!(line, format!("ready {id}"));
    pid
}

pub fn bulwark(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(args)
        .output()
        .expect("run bulwark")
}

pub fn status(url: &str) -> Option<Value> {
    let out = bulwark(&[
        "cluster",
        "status",
        "--nats",
        url,
        "--cluster",
        "t",
        "--json",
    ]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

pub fn state_of(status: &Value, id: &str) -> Option<String> {
    status["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .and_then(|n| n["state"].as_str().map(str::to_string))
}

/// Waits (bounded) until `node` is `state`; returns how long it took.
pub fn wait_for(url: &str, node: &str, state: &str) -> Duration {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(60);
    loop {
        if let Some(s) = status(url)
            && state_of(&s, node).as_deref() == Some(state)
        {
            return start.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{node} did not become {state} within 60 s: {:?}",
            status(url)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Every entry of a stopped node's audit trail, oldest first.
pub fn trail(data_dir: &Path) -> Vec<Value> {
    let out = bulwark(&[
        "audit",
        "tail",
        "--data-dir",
        data_dir.to_str().expect("utf-8"),
        "-n",
        "100000",
        "--json",
    ]);
    json_lines(&out)
}

/// The JSON values, one per line, a successful command printed.
pub fn json_lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// The ids of the `token.revoked` entries in a stopped node's audit trail.
pub fn revoked_in_trail(data_dir: &Path) -> Vec<String> {
    trail(data_dir)
        .into_iter()
        .filter(|e| e["kind"] == "token.revoked")
        .filter_map(|e| e["detail"]["revocation_id"].as_str().map(str::to_string))
        .collect()
}

pub fn revoke(url: &str, id: &str, key: &Path) -> Output {
    bulwark(&[
        "revoke",
        "--nats",
        url,
        "--cluster",
        "t",
        "--id",
        id,
        "--operator-key",
        key.to_str().expect("utf-8"),
        "--json",
    ])
}

/// Stops a node cleanly and waits for it to exit (bounded).
pub fn stop(procs: &mut Procs, pid: u32) {
    signal(pid, "-TERM");
    let child = procs
        .0
        .iter_mut()
        .find(|c| c.id() == pid)
        .expect("a started node");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "node {pid} did not stop within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
