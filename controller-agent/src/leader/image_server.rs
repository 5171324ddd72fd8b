//! Who may open a `FetchImage` stream of the leader (the stream itself is
//! `agent_core::image_stream`'s, which relays use too).
//!
//! [`FetchGate`] decides who may open a stream: only a node the leader is
//! driving to stage that very image ([`FetchGate::grant`], held by
//! `distribute::stage_on`), at most `fetch_streams_per_node` streams per node
//! and `fetch_streams_total` in all (`RESOURCE_EXHAUSTED` beyond). A reader
//! whose receiver takes no chunk for `image_stream::SEND_DEADLINE` ends, so
//! reader threads and memory are bounded by the limits × `DEPTH` chunks.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use common::{NodeId, Sha256Digest};
use tonic::Status;

#[derive(Debug, Default)]
struct GateState {
    /// (node, image) → how many drivers granted it (a prestage and an upgrade may overlap).
    grants: HashMap<(NodeId, Sha256Digest), usize>,
    /// Open streams per node.
    streams: HashMap<NodeId, usize>,
    total: usize,
}

/// Who may fetch which image, and how many streams are open.
#[derive(Debug)]
pub struct FetchGate {
    state: Arc<Mutex<GateState>>,
    per_node: usize,
    max_total: usize,
}

/// Lets `node` fetch `sha` while held.
#[derive(Debug)]
pub struct Grant {
    state: Arc<Mutex<GateState>>,
    key: (NodeId, Sha256Digest),
}

impl Drop for Grant {
    fn drop(&mut self) {
        let mut s = self.state.lock().expect("fetch gate lock");
        if let Some(n) = s.grants.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                s.grants.remove(&self.key);
            }
        }
    }
}

/// One open stream; counted until dropped (when its reader ends).
#[derive(Debug)]
pub struct StreamPermit {
    state: Arc<Mutex<GateState>>,
    node: NodeId,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut s = self.state.lock().expect("fetch gate lock");
        s.total -= 1;
        if let Some(n) = s.streams.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                s.streams.remove(&self.node);
            }
        }
    }
}

impl FetchGate {
    /// A gate with these limits.
    pub fn new(per_node: usize, max_total: usize) -> Self {
        Self { state: Arc::default(), per_node, max_total }
    }

    /// `node` may fetch `sha` until the returned grant is dropped.
    pub fn grant(&self, node: &NodeId, sha: Sha256Digest) -> Grant {
        let key = (node.clone(), sha);
        *self.state.lock().expect("fetch gate lock").grants.entry(key.clone()).or_default() += 1;
        Grant { state: self.state.clone(), key }
    }

    /// The nodes that may fetch `sha` now (those told to stage it), in id order.
    pub fn granted(&self, sha: &Sha256Digest) -> Vec<NodeId> {
        let s = self.state.lock().expect("fetch gate lock");
        let mut nodes: Vec<NodeId> = s.grants.keys().filter(|(_, g)| g == sha).map(|(n, _)| n.clone()).collect();
        nodes.sort();
        nodes
    }

    /// Opens a stream of `sha` for `node`, or says why not.
    pub fn open(&self, node: &NodeId, sha: &Sha256Digest) -> Result<StreamPermit, Status> {
        let mut s = self.state.lock().expect("fetch gate lock");
        if !s.grants.contains_key(&(node.clone(), *sha)) {
            return Err(common::errors::ErrorKind::Forbidden.grpc(format!(
                "{node} may not fetch image {}: the leader has not asked it to stage that image",
                sha.short()
            )));
        }
        let mine = s.streams.get(node).copied().unwrap_or(0);
        if mine >= self.per_node {
            return Err(common::errors::ErrorKind::Exhausted.grpc(format!(
                "{node} already holds {mine} image streams (limit {}); close one first",
                self.per_node
            )));
        }
        if s.total >= self.max_total {
            return Err(common::errors::ErrorKind::Exhausted
                .grpc(format!("the leader serves {} image streams, its limit; retry shortly", s.total)));
        }
        s.total += 1;
        *s.streams.entry(node.clone()).or_default() += 1;
        Ok(StreamPermit { state: self.state.clone(), node: node.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_need_a_grant_and_stay_within_the_limits() {
        let gate = FetchGate::new(2, 3);
        let (a, b): (NodeId, NodeId) = ("se-1".parse().unwrap(), "se-2".parse().unwrap());
        let sha = Sha256Digest::of(b"image");
        assert_eq!(gate.open(&a, &sha).unwrap_err().code(), tonic::Code::PermissionDenied);
        let grant_a = gate.grant(&a, sha);
        let again = gate.grant(&a, sha); // a prestage and an upgrade may overlap
        let s1 = gate.open(&a, &sha).unwrap();
        let s2 = gate.open(&a, &sha).unwrap();
        assert_eq!(gate.open(&a, &sha).unwrap_err().code(), tonic::Code::ResourceExhausted, "per node");
        let _grant_b = gate.grant(&b, sha);
        let s3 = gate.open(&b, &sha).unwrap();
        assert_eq!(gate.open(&b, &sha).unwrap_err().code(), tonic::Code::ResourceExhausted, "in total");
        drop(s3);
        drop(s1);
        let _s4 = gate.open(&b, &sha).unwrap();
        drop(again);
        let _s5 = gate.open(&a, &sha).unwrap();
        drop(grant_a);
        drop(s2);
        assert_eq!(gate.open(&a, &sha).unwrap_err().code(), tonic::Code::PermissionDenied, "grant gone");
    }
}
