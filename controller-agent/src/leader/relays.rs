//! Relay planning: which node each fetcher gets an image from.
//!
//! The leader streams an image itself to at most `fanout` nodes; every
//! other fetcher is sent to a node that holds the image or is receiving it
//! through this plan (a relay streams what it has and follows its own copy
//! as it grows; its depth in the tree is known), and
//! each relay serves at most `fanout`. The tree grows breadth-first (the
//! shallowest relay with room, staged copies first), so with `fanout` k the
//! N nodes are about log_k N hops from the leader.
//!
//! A fetcher that asks again has lost its source: it is placed anew, never
//! under that source again at once, nor under one of its own descendants (a
//! relay behind it would wait on it forever). Whatever happens the answer
//! is a source: when no relay has room the leader serves it itself.
//!
//! Pure: the caller passes what the heartbeats say.

use std::collections::HashMap;

use common::{NodeId, Sha256Digest};

/// Where a fetcher's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parent {
    /// The leader itself.
    Leader,
    /// A relay.
    Node(NodeId),
}

/// A node that is up, as the heartbeats describe it for one image.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The node.
    pub id: NodeId,
    /// Its address.
    pub addr: String,
    /// It has the image staged (verified, whole).
    pub staged: bool,
    /// Bytes of the image it has received, when it is receiving it.
    pub received: Option<u64>,
}

/// The relay tree of every image being distributed.
#[derive(Debug)]
pub struct Relays {
    fanout: usize,
    trees: HashMap<Sha256Digest, HashMap<NodeId, Parent>>,
}

impl Relays {
    /// Plans with `fanout` streams per source (0: every node from the leader).
    pub fn new(fanout: usize) -> Self {
        Self { fanout, trees: HashMap::new() }
    }

    /// The source of `child`'s fetch of `sha`. `up` is every node up now.
    pub fn route(&mut self, sha: Sha256Digest, child: &NodeId, up: &[Holder]) -> Parent {
        if self.fanout == 0 {
            return Parent::Leader;
        }
        let tree = self.trees.entry(sha).or_default();
        // Fetchers that are done, or gone, no longer count against a source.
        tree.retain(|c, _| up.iter().any(|h| h.id == *c && !h.staged));
        let previous = tree.remove(child);
        let load = |tree: &HashMap<NodeId, Parent>, p: &Parent| tree.values().filter(|q| *q == p).count();
        if load(tree, &Parent::Leader) < self.fanout && previous != Some(Parent::Leader) {
            tree.insert(child.clone(), Parent::Leader);
            return Parent::Leader;
        }
        let depth = |tree: &HashMap<NodeId, Parent>, n: &NodeId| -> Option<usize> {
            // Hops from the leader; None when `child` is on the way (a descendant of it).
            let mut at = n.clone();
            for hops in 1..=tree.len() + 1 {
                if at == *child {
                    return None;
                }
                match tree.get(&at) {
                    Some(Parent::Node(p)) => at = p.clone(),
                    _ => return Some(hops),
                }
            }
            None
        };
        let best = up
            .iter()
            .filter(|h| h.id != *child && previous.as_ref() != Some(&Parent::Node(h.id.clone())))
            .filter(|h| h.staged || tree.contains_key(&h.id))
            .filter(|h| load(tree, &Parent::Node(h.id.clone())) < self.fanout)
            .filter_map(|h| Some((h, depth(tree, &h.id)?)))
            .min_by_key(|(h, d)| (!h.staged, *d, std::cmp::Reverse(h.received.unwrap_or(0)), h.id.clone()))
            .map(|(h, _)| Parent::Node(h.id.clone()))
            .unwrap_or(Parent::Leader);
        tree.insert(child.clone(), best.clone());
        best
    }

    /// The source each fetcher of `sha` was last given.
    pub fn sources(&self, sha: &Sha256Digest) -> HashMap<NodeId, Parent> {
        self.trees.get(sha).cloned().unwrap_or_default()
    }

    /// Forgets an image no longer distributed.
    pub fn forget(&mut self, keep: impl Fn(&Sha256Digest) -> bool) {
        self.trees.retain(|sha, _| keep(sha));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    fn receiving(n: &str, received: Option<u64>) -> Holder {
        Holder { id: id(n), addr: format!("{n}:8443"), staged: false, received }
    }

    #[test]
    fn the_tree_grows_breadth_first_with_fanout_streams_per_source() {
        let sha = Sha256Digest::of(b"image");
        let mut r = Relays::new(2);
        let up: Vec<Holder> = (1..=8).map(|i| receiving(&format!("se-{i}"), None)).collect();
        let routes: Vec<Parent> = (1..=8).map(|i| r.route(sha, &id(&format!("se-{i}")), &up)).collect();
        assert_eq!(routes[..2], [Parent::Leader, Parent::Leader]);
        assert_eq!(routes[2..4], [Parent::Node(id("se-1")), Parent::Node(id("se-1"))]);
        assert_eq!(routes[4..6], [Parent::Node(id("se-2")), Parent::Node(id("se-2"))]);
        assert_eq!(routes[6], Parent::Node(id("se-3")), "the next level, under the shallowest with room");
        for n in 1..=8 {
            let load = routes.iter().filter(|p| **p == Parent::Node(id(&format!("se-{n}")))).count();
            assert!(load <= 2, "se-{n} serves {load}");
        }
        assert_eq!(Relays::new(0).route(sha, &id("se-9"), &up), Parent::Leader, "no relays");
    }

    #[test]
    fn a_fetcher_that_lost_its_source_goes_elsewhere_never_under_itself() {
        let sha = Sha256Digest::of(b"image");
        let mut r = Relays::new(1);
        let mut up: Vec<Holder> = (1..=4).map(|i| receiving(&format!("se-{i}"), Some(0))).collect();
        // A chain: leader → se-1 → se-2 → se-3 → se-4.
        for i in 1..=4 {
            r.route(sha, &id(&format!("se-{i}")), &up);
        }
        assert_eq!(r.sources(&sha)[&id("se-3")], Parent::Node(id("se-2")));
        // se-2 dies, so se-1 has room again: se-3, asking again, goes there.
        up.retain(|h| h.id != id("se-2"));
        assert_eq!(r.route(sha, &id("se-3"), &up), Parent::Node(id("se-1")));
        // se-4's stream from se-3 broke: not se-3 again at once; se-1 is full,
        // so the leader serves it, over its fan-out, rather than no one.
        assert_eq!(r.route(sha, &id("se-4"), &up), Parent::Leader);
        // A fetcher is never put under its own descendant: in the chain
        // leader → a → c → d, c asks again.
        let mut r = Relays::new(1);
        let up: Vec<Holder> = ["a", "c", "d"].iter().map(|n| receiving(n, Some(0))).collect();
        for n in ["a", "c", "d"] {
            r.route(sha, &id(n), &up);
        }
        assert_eq!(r.sources(&sha)[&id("d")], Parent::Node(id("c")));
        assert_eq!(r.route(sha, &id("c"), &up), Parent::Leader, "d is behind c: it would wait on c forever");
        // A staged copy is preferred to one still arriving.
        let mut up = up;
        up.push(Holder { staged: true, ..receiving("e", None) });
        assert_eq!(r.route(sha, &id("f"), &up), Parent::Node(id("e")));
    }
}
