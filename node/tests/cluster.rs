//! Cluster membership with real processes: a nats-server on a free loopback port and
//! three `bulwark node` processes.
//!
//! nats-server comes from `scripts/fetch-nats-server` (the test command runs it), or
//! from `$BULWARK_NATS_SERVER`.

mod common;

use std::time::{Duration, Instant};

use bulwark_capabilities::KeyPair;
use common::*;
use serde_json::Value;

#[test]
fn nodes_join_a_paused_one_is_suspect_and_a_stopped_one_dead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut procs = Procs(Vec::new());
    let url = start_nats(dir.path(), &mut procs);
    let root = KeyPair::generate().public().to_hex();
    let mut pids = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let config = write_config(dir.path(), id, &url, &root);
        pids.push(start_node(&config, id, &mut procs));
    }
    for id in ["n1", "n2", "n3"] {
        wait_for(&url, id, "alive");
    }
    // Each node answers from its own view; every view converges on the labels.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let listed = status(&url).and_then(|s| {
            s["nodes"]
                .as_array()
                .and_then(|a| a.iter().find(|n| n["id"] == "n1").cloned())
        });
        if let Some(n1) = listed {
            assert_eq!(n1["labels"]["zone"], "n1");
            assert_eq!(n1["agents"], 0);
            break;
        }
        assert!(Instant::now() < deadline, "n1 was never listed");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A paused process keeps its connection: suspect, then alive again.
    signal(pids[1], "-STOP");
    let took = wait_for(&url, "n2", "suspect");
    println!("paused node suspect after {took:?}");
    signal(pids[1], "-CONT");
    wait_for(&url, "n2", "alive");

    // A killed process loses its connection: dead.
    signal(pids[2], "-KILL");
    let took = wait_for(&url, "n3", "dead");
    println!("killed node dead after {took:?}");

    // A clean shutdown announces itself.
    signal(pids[0], "-TERM");
    let took = wait_for(&url, "n1", "dead");
    println!("stopped node dead after {took:?}");
    assert_eq!(
        state_of(&status(&url).expect("status"), "n2").as_deref(),
        Some("alive")
    );
}

#[test]
fn an_unreachable_cluster_and_a_wrong_config_get_their_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let out = bulwark(&["cluster", "status", "--nats", &url, "--cluster", "t"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach NATS"));

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "id = \"n 1\"\n").expect("write");
    let out = bulwark(&["node", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml"), "{err}");

    // A cluster with no node answering is unreachable too.
    let mut procs = Procs(Vec::new());
    let url = start_nats(dir.path(), &mut procs);
    let out = bulwark(&["cluster", "status", "--nats", &url, "--cluster", "empty"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node of cluster `empty`"));
}

#[test]
fn a_revocation_reaches_every_node_is_persisted_and_is_fetched_by_a_node_that_missed_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut procs = Procs(Vec::new());
    let url = start_nats(dir.path(), &mut procs);
    let root = KeyPair::generate().public().to_hex();
    let operator = KeyPair::generate();
    let operator_file = dir.path().join("operator.key");
    operator.save(&operator_file).expect("save operator key");
    let stranger_file = dir.path().join("stranger.key");
    KeyPair::generate().save(&stranger_file).expect("save key");
    let operators = [operator.public().to_hex()];
    let mut pids = Vec::new();
    let mut configs = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let config = write_config_with(dir.path(), id, &url, &root, &operators);
        pids.push(start_node(&config, id, &mut procs));
        configs.push(config);
    }
    for id in ["n1", "n2", "n3"] {
        wait_for(&url, id, "alive");
    }

    let first = "a1".repeat(32);
    let out = revoke(&url, &first, &operator_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    println!(
        "revocation reached every node; slowest {} ms",
        report["slowest_ms"]
    );
    assert!(report["refused"].as_array().is_some_and(Vec::is_empty));

    // A key that is not an operator's is refused by every node.
    let out = revoke(&url, &"b2".repeat(32), &stranger_file);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // n3 is down while a second revocation is made; it fetches it before it serves.
    stop(&mut procs, pids[2]);
    wait_for(&url, "n3", "dead");
    let second = "c3".repeat(32);
    let out = revoke(&url, &second, &operator_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pids[2] = start_node(&configs[2], "n3", &mut procs);

    for pid in pids {
        stop(&mut procs, pid);
    }
    for id in ["n1", "n2", "n3"] {
        let revoked = revoked_in_trail(&dir.path().join(format!("{id}-data")));
        assert!(revoked.contains(&first), "{id}: {revoked:?}");
        assert!(revoked.contains(&second), "{id}: {revoked:?}");
        assert!(!revoked.contains(&"b2".repeat(32)), "{id}: {revoked:?}");
    }
}

#[test]
fn a_node_hosts_the_sandboxed_tools_and_the_dashboard_of_its_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut procs = Procs(Vec::new());
    let url = start_nats(dir.path(), &mut procs);
    let root = KeyPair::generate().public().to_hex();
    let tool =
        "\n[[tools]]\nname = \"shout\"\ntier = \"auto\"\nmax_cost = \"0.01\"\njs = \"shout.js\"\n";
    std::fs::write(
        dir.path().join("shout.js"),
        "print(JSON.stringify(\"HELLO\"));\n",
    )
    .expect("write tool");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let config = write_config(dir.path(), "n1", &url, &root);
    let mut text = std::fs::read_to_string(&config).expect("read");
    text = text.replace(
        "[nats]",
        &format!("[dashboard]\nlisten = \"127.0.0.1:{port}\"\n\n[nats]"),
    );
    text.push_str(tool);
    std::fs::write(&config, &text).expect("write");
    start_node(&config, "n1", &mut procs);
    // The node serves its dashboard: its page answers, its API wants the token.
    let page = reqwest::blocking::get(format!("http://127.0.0.1:{port}/")).expect("dashboard");
    assert!(page.status().is_success(), "{}", page.status());
    let api = reqwest::blocking::get(format!("http://127.0.0.1:{port}/api/proposals"))
        .expect("dashboard api");
    assert_eq!(api.status().as_u16(), 401);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tools = status(&url).and_then(|s| {
            s["nodes"]
                .as_array()
                .and_then(|a| a.iter().find(|n| n["id"] == "n1"))
                .map(|n| n["tools"].clone())
        });
        if tools == Some(serde_json::json!(["shout"])) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shout was never listed: {tools:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A tool whose program is missing stops the start, naming the tool and the file.
    let broken = write_config(dir.path(), "n2", &url, &root);
    let mut text = std::fs::read_to_string(&broken).expect("read");
    text.push_str(&tool.replace("shout.js", "missing.js"));
    std::fs::write(&broken, &text).expect("write");
    let out = bulwark(&["node", "--config", broken.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tools[0] `shout`") && err.contains("missing.js"),
        "{err}"
    );
}
