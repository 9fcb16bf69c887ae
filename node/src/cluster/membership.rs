//! Membership: who is in the cluster, from heartbeats.
//!
//! Every node publishes a heartbeat each second. A node whose heartbeat is overdue is
//! probed on its presence subject: "no responders" means the server holds no
//! connection for it any more (the process is gone): `dead`; no answer within the
//! probe's time means it is there but not running (paused, overloaded): `suspect`. A
//! clean shutdown announces itself and is `dead` at once. A node whose own NATS link
//! is down declares nobody dead: it cannot tell its own isolation from others'
//! deaths.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Format version of heartbeats.
pub const HEARTBEAT_FORMAT: u16 = 1;

/// How often a node announces itself.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Silence after which a node is probed.
pub const OVERDUE_AFTER: Duration = Duration::from_millis(2_000);

/// How long a probe waits for an answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a node says about itself each second.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Format version ([`HEARTBEAT_FORMAT`]).
    pub v: u16,
    /// The node's id.
    pub node: String,
    /// Changes at every start, so a restarted node is told from its earlier life.
    pub incarnation: u64,
    /// Agents it hosts.
    pub agents: usize,
    /// Its release.
    pub version: String,
    /// Tools it hosts.
    pub tools: Vec<String>,
    /// Tools other nodes host that its agents can call (forwarded).
    #[serde(default)]
    pub reaches: Vec<String>,
    /// Requests from the cluster it is working on.
    #[serde(default)]
    pub load: usize,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Set in the last heartbeat of a clean shutdown.
    pub leaving: bool,
}

/// How a node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Heartbeats arrive.
    Alive,
    /// Heartbeats stopped but its connection is held: paused or overloaded.
    Suspect,
    /// Gone: it said so, or the server holds no connection for it.
    Dead,
}

/// One node as another sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The node's id.
    pub id: String,
    /// How it stands.
    pub state: NodeState,
    /// Agents it hosts (as of its last heartbeat).
    pub agents: usize,
    /// Tools it hosts.
    pub tools: Vec<String>,
    /// Tools other nodes host that its agents can call.
    pub reaches: Vec<String>,
    /// Requests from the cluster it is working on (as of its last heartbeat).
    pub load: usize,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: u64,
    /// Its incarnation.
    pub incarnation: u64,
}

/// The membership table as `cluster status` prints it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Every node heard from, by id.
    pub nodes: Vec<Member>,
}

struct Entry {
    last: Heartbeat,
    seen: Instant,
    state: NodeState,
}

/// What a node knows of the others.
#[derive(Default)]
pub struct Members {
    nodes: BTreeMap<String, Entry>,
}

/// What a probe of an overdue node found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// It answered.
    Answered,
    /// The server has no subscriber for it.
    NoResponders,
    /// No answer in time.
    TimedOut,
    /// This node's own link is down: nothing can be concluded.
    LinkDown,
}

impl Members {
    /// Records a heartbeat.
    pub fn heard(&mut self, beat: Heartbeat, now: Instant) {
        let state = if beat.leaving {
            NodeState::Dead
        } else {
            NodeState::Alive
        };
        self.nodes.insert(
            beat.node.clone(),
            Entry {
                last: beat,
                seen: now,
                state,
            },
        );
    }

    /// Nodes whose heartbeat is overdue and that are not known dead: to probe.
    pub fn overdue(&self, now: Instant) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, e)| e.state != NodeState::Dead && now - e.seen >= OVERDUE_AFTER)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Applies what a probe of `node` found.
    pub fn probed(&mut self, node: &str, probe: Probe) {
        let Some(entry) = self.nodes.get_mut(node) else {
            return;
        };
        entry.state = match probe {
            // It answers probes but its heartbeats are late: not running normally.
            Probe::Answered | Probe::TimedOut => NodeState::Suspect,
            Probe::NoResponders => NodeState::Dead,
            // Our own isolation says nothing about the others: never dead from here.
            Probe::LinkDown => match entry.state {
                NodeState::Dead => NodeState::Dead,
                _ => NodeState::Suspect,
            },
        };
    }

    /// The table, with ages as of `now`.
    pub fn status(&self, now: Instant) -> Status {
        Status {
            nodes: self
                .nodes
                .iter()
                .map(|(id, e)| Member {
                    id: id.clone(),
                    state: e.state,
                    agents: e.last.agents,
                    tools: e.last.tools.clone(),
                    reaches: e.last.reaches.clone(),
                    load: e.last.load,
                    labels: e.last.labels.clone(),
                    last_seen_ms: u64::try_from((now - e.seen).as_millis()).unwrap_or(u64::MAX),
                    incarnation: e.last.incarnation,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node: &str, leaving: bool) -> Heartbeat {
        Heartbeat {
            v: HEARTBEAT_FORMAT,
            node: node.into(),
            incarnation: 1,
            agents: 2,
            version: "test".into(),
            tools: vec!["echo".into()],
            reaches: Vec::new(),
            load: 0,
            labels: BTreeMap::new(),
            leaving,
        }
    }

    #[test]
    fn silence_leads_to_a_probe_whose_answer_decides_suspect_or_dead() {
        let t0 = Instant::now();
        let mut m = Members::default();
        m.heard(beat("n1", false), t0);
        m.heard(beat("n2", false), t0);
        m.heard(beat("n3", false), t0);
        assert!(m.overdue(t0 + Duration::from_secs(1)).is_empty());
        let later = t0 + OVERDUE_AFTER;
        assert_eq!(m.overdue(later), vec!["n1", "n2", "n3"]);
        m.probed("n1", Probe::TimedOut);
        m.probed("n2", Probe::NoResponders);
        m.probed("n3", Probe::LinkDown);
        let states: Vec<_> = m.status(later).nodes.iter().map(|n| n.state).collect();
        assert_eq!(
            states,
            vec![NodeState::Suspect, NodeState::Dead, NodeState::Suspect]
        );
        // A dead node is not probed again; a suspect one that beats again is alive.
        assert_eq!(m.overdue(later), vec!["n1", "n3"]);
        m.heard(beat("n1", false), later);
        assert_eq!(m.status(later).nodes[0].state, NodeState::Alive);
        // A clean shutdown is dead at once.
        m.heard(beat("n3", true), later);
        assert_eq!(m.status(later).nodes[2].state, NodeState::Dead);
    }
}
