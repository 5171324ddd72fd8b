//! Relay planning: which node each fetcher gets each stripe of an image from.
//!
//! With fan-out k ≥ 2 and n fetchers the image is cut into `min(k, n)`
//! stripes (`common::stripe`), and every stripe has a tree of its own: the
//! leader streams each stripe to one root, and every inner node of a
//! stripe's tree relays that stripe to at most k nodes. The plan gives the
//! fetchers (the nodes the leader is telling to stage the image, in order)
//! home stripes in turn, and a stripe's tree is a k-ary heap over its home
//! nodes first, then the others — so each node relays one stripe only, and
//! under a per-node egress cap every node sends and receives about one
//! image's worth at the cap's rate: n nodes take about the time of one,
//! where one tree of fan-out k would take k times it. Fan-out 1 is a chain
//! (one stripe); 0 is no relays (every node from the leader).
//!
//! The plan is a preference: a planned relay that is down, or is the source
//! a fetcher just lost, or would sit behind the fetcher itself (a relay
//! behind it would wait on it forever), or is full, is passed over for the
//! shallowest relay with room (staged copies first, then the one that holds
//! most), and when none has room the leader serves the stripe itself.
//!
//! Pure: the caller passes what the heartbeats say.

use std::collections::HashMap;

use common::{NodeId, Sha256Digest, stripe::Stripe};

/// Where a fetcher's stripe comes from.
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

/// Who fetches a stripe from whom.
type Tree = HashMap<NodeId, Parent>;

/// The stripes of one image and their trees.
#[derive(Debug)]
struct Cut {
    count: u32,
    trees: Vec<Tree>,
}

/// The relay trees of every image being distributed.
#[derive(Debug)]
pub struct Relays {
    fanout: usize,
    cuts: HashMap<Sha256Digest, Cut>,
}

impl Relays {
    /// Plans with `fanout` streams per source (0: every node from the leader).
    pub fn new(fanout: usize) -> Self {
        Self { fanout, cuts: HashMap::new() }
    }

    /// How many stripes `sha` is cut into, now that this many nodes are
    /// fetching it: the fan-out, or fewer for fewer fetchers. The number
    /// only grows while the image is distributed (fetchers that are done
    /// leave the plan; those still fetching keep their stripes).
    pub fn stripes(&mut self, sha: Sha256Digest, fetchers: usize) -> u32 {
        let want = if self.fanout < 2 {
            1
        } else {
            self.fanout.min(fetchers).clamp(1, common::stripe::MAX_STRIPES as usize) as u32
        };
        let cut = self.cuts.entry(sha).or_insert_with(|| Cut { count: want, trees: vec![] });
        if want > cut.count {
            *cut = Cut { count: want, trees: vec![] };
        }
        cut.count
    }

    /// The source of `child`'s fetch of `stripe` of `sha`. `up` is every
    /// node up now; `planned`, the nodes told to stage `sha`.
    pub fn route(
        &mut self,
        sha: Sha256Digest,
        stripe: Stripe,
        child: &NodeId,
        up: &[Holder],
        planned: &[NodeId],
    ) -> Parent {
        if self.fanout == 0 {
            return Parent::Leader;
        }
        let cut = self.cuts.entry(sha).or_insert_with(|| Cut { count: stripe.count(), trees: vec![] });
        if cut.count != stripe.count() {
            // Cut anew (the number of fetchers changed): the old trees no longer plan anything.
            *cut = Cut { count: stripe.count(), trees: vec![] };
        }
        cut.trees.resize_with(stripe.count() as usize, Tree::default);
        let tree = &mut cut.trees[stripe.index() as usize];
        // Fetchers that are done, or gone, no longer count against a source.
        tree.retain(|c, _| up.iter().any(|h| h.id == *c && !h.staged));
        let previous = tree.remove(child);
        let load = |tree: &Tree, p: &Parent| tree.values().filter(|q| *q == p).count();
        let depth = |tree: &Tree, n: &NodeId| -> Option<usize> {
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
        let fanout = self.fanout;
        let usable = |tree: &Tree, h: &Holder| {
            h.id != *child
                && previous.as_ref() != Some(&Parent::Node(h.id.clone()))
                && load(tree, &Parent::Node(h.id.clone())) < fanout
        };
        let planned_parent = plan(planned, stripe, fanout, child).filter(|p| match p {
            Parent::Leader => true,
            Parent::Node(n) => up.iter().any(|h| h.id == *n && usable(tree, h)) && depth(tree, n).is_some(),
        });
        // The leader's own streams: one per stripe when striped, else `fanout`.
        let leader_quota = if stripe.count() > 1 { 1 } else { fanout };
        let best = planned_parent.unwrap_or_else(|| {
            if load(tree, &Parent::Leader) < leader_quota && previous != Some(Parent::Leader) {
                return Parent::Leader;
            }
            up.iter()
                .filter(|h| usable(tree, h) && (h.staged || tree.contains_key(&h.id)))
                .filter_map(|h| Some((h, depth(tree, &h.id)?)))
                .min_by_key(|(h, d)| (!h.staged, *d, std::cmp::Reverse(h.received.unwrap_or(0)), h.id.clone()))
                .map(|(h, _)| Parent::Node(h.id.clone()))
                .unwrap_or(Parent::Leader)
        });
        tree.insert(child.clone(), best.clone());
        best
    }

    /// The sources each fetcher of `sha` was last given, by stripe.
    pub fn sources(&self, sha: &Sha256Digest) -> HashMap<NodeId, Vec<Parent>> {
        let mut out: HashMap<NodeId, Vec<Parent>> = HashMap::new();
        for tree in self.cuts.get(sha).map(|c| c.trees.as_slice()).unwrap_or_default() {
            for (child, parent) in tree {
                out.entry(child.clone()).or_default().push(parent.clone());
            }
        }
        out
    }

    /// Forgets an image no longer distributed.
    pub fn forget(&mut self, keep: impl Fn(&Sha256Digest) -> bool) {
        self.cuts.retain(|sha, _| keep(sha));
    }
}

/// `child`'s planned source of `stripe` among the fetchers `planned`: the
/// fetcher at position p (in id order) has home stripe p mod count; a
/// stripe's tree lists its home fetchers, then the others, and is a heap of
/// arity `fanout` under the leader. None when `child` is not planned.
fn plan(planned: &[NodeId], stripe: Stripe, fanout: usize, child: &NodeId) -> Option<Parent> {
    let mut fetchers: Vec<&NodeId> = planned.iter().collect();
    fetchers.sort();
    fetchers.dedup();
    let count = stripe.count() as usize;
    let mut order: Vec<(usize, &NodeId)> = fetchers.into_iter().enumerate().collect();
    order.sort_by_key(|(p, _)| (p % count != stripe.index() as usize, *p));
    let at = order.iter().position(|(_, n)| *n == child)?;
    Some(match at {
        0 => Parent::Leader,
        _ => Parent::Node(order[(at - 1) / fanout.max(1)].1.clone()),
    })
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
        let routes: Vec<Parent> =
            (1..=8).map(|i| r.route(sha, Stripe::WHOLE, &id(&format!("se-{i}")), &up, &[])).collect();
        assert_eq!(routes[..2], [Parent::Leader, Parent::Leader]);
        assert_eq!(routes[2..4], [Parent::Node(id("se-1")), Parent::Node(id("se-1"))]);
        assert_eq!(routes[4..6], [Parent::Node(id("se-2")), Parent::Node(id("se-2"))]);
        assert_eq!(routes[6], Parent::Node(id("se-3")), "the next level, under the shallowest with room");
        for n in 1..=8 {
            let load = routes.iter().filter(|p| **p == Parent::Node(id(&format!("se-{n}")))).count();
            assert!(load <= 2, "se-{n} serves {load}");
        }
        assert_eq!(Relays::new(0).route(sha, Stripe::WHOLE, &id("se-9"), &up, &[]), Parent::Leader, "no relays");
    }

    #[test]
    fn a_fetcher_that_lost_its_source_goes_elsewhere_never_under_itself() {
        let sha = Sha256Digest::of(b"image");
        let mut r = Relays::new(1);
        let mut up: Vec<Holder> = (1..=4).map(|i| receiving(&format!("se-{i}"), Some(0))).collect();
        // A chain: leader → se-1 → se-2 → se-3 → se-4.
        for i in 1..=4 {
            r.route(sha, Stripe::WHOLE, &id(&format!("se-{i}")), &up, &[]);
        }
        assert_eq!(r.sources(&sha)[&id("se-3")], [Parent::Node(id("se-2"))]);
        // se-2 dies, so se-1 has room again: se-3, asking again, goes there.
        up.retain(|h| h.id != id("se-2"));
        assert_eq!(r.route(sha, Stripe::WHOLE, &id("se-3"), &up, &[]), Parent::Node(id("se-1")));
        // se-4's stream from se-3 broke: not se-3 again at once; se-1 is full,
        // so the leader serves it, over its fan-out, rather than no one.
        assert_eq!(r.route(sha, Stripe::WHOLE, &id("se-4"), &up, &[]), Parent::Leader);
        // A fetcher is never put under its own descendant: in the chain
        // leader → a → c → d, c asks again.
        let mut r = Relays::new(1);
        let up: Vec<Holder> = ["a", "c", "d"].iter().map(|n| receiving(n, Some(0))).collect();
        for n in ["a", "c", "d"] {
            r.route(sha, Stripe::WHOLE, &id(n), &up, &[]);
        }
        assert_eq!(r.sources(&sha)[&id("d")], [Parent::Node(id("c"))]);
        assert_eq!(
            r.route(sha, Stripe::WHOLE, &id("c"), &up, &[]),
            Parent::Leader,
            "d is behind c: it would wait on c forever"
        );
        // A staged copy is preferred to one still arriving.
        let mut up = up;
        up.push(Holder { staged: true, ..receiving("e", None) });
        assert_eq!(r.route(sha, Stripe::WHOLE, &id("f"), &up, &[]), Parent::Node(id("e")));
    }

    #[test]
    fn sixteen_fetchers_in_four_stripes_each_relay_one_stripe_and_the_leader_serves_one_per_stripe() {
        let sha = Sha256Digest::of(b"image");
        let mut r = Relays::new(4);
        let names: Vec<String> = (1..=16).map(|i| format!("se-{i:02}")).collect();
        let planned: Vec<NodeId> = names.iter().map(|n| id(n)).collect();
        let up: Vec<Holder> = names.iter().map(|n| receiving(n, Some(0))).collect();
        let k = r.stripes(sha, planned.len());
        assert_eq!(k, 4);
        // In an order unlike the plan's: last node first, stripes backwards.
        let mut parents: HashMap<(NodeId, u32), Parent> = HashMap::new();
        for n in planned.iter().rev() {
            for s in Stripe::all(k).collect::<Vec<_>>().into_iter().rev() {
                parents.insert((n.clone(), s.index()), r.route(sha, s, n, &up, &planned));
            }
        }
        let leader: Vec<_> = parents.iter().filter(|(_, p)| **p == Parent::Leader).collect();
        assert_eq!(leader.len(), 4, "one root per stripe: {leader:?}");
        let mut relayed: HashMap<NodeId, Vec<u32>> = HashMap::new();
        for ((_, s), p) in &parents {
            if let Parent::Node(n) = p {
                relayed.entry(n.clone()).or_default().push(*s);
            }
        }
        for (n, stripes) in &relayed {
            assert!(stripes.iter().all(|s| *s == stripes[0]), "{n} relays more than one stripe: {stripes:?}");
            assert!(stripes.len() <= 4, "{n} relays to {} nodes", stripes.len());
        }
        // Every node reaches the leader in every stripe, in at most 3 hops.
        for n in &planned {
            for s in 0..k {
                let (mut at, mut hops) = (n.clone(), 0);
                while let Parent::Node(p) = &parents[&(at.clone(), s)] {
                    at = p.clone();
                    hops += 1;
                    assert!(hops < 3, "{n} stripe {s} is too deep");
                }
            }
        }
        let sources = r.sources(&sha);
        assert_eq!(sources[&id("se-07")].len(), 4, "a source per stripe: {sources:?}");
        // One fetcher: the whole image, from the leader.
        assert_eq!(r.stripes(sha, 1), 4, "fetchers that are done leave the plan, the cut stays");
        assert_eq!(r.stripes(Sha256Digest::of(b"other"), 1), 1, "one fetcher: the whole image");
        assert_eq!(Relays::new(1).stripes(sha, 16), 1, "fan-out 1 is a chain, not stripes");
    }

    #[test]
    fn a_planned_relay_that_is_down_or_was_just_lost_is_passed_over() {
        let sha = Sha256Digest::of(b"image");
        let mut r = Relays::new(2);
        let planned: Vec<NodeId> = ["a", "b", "c", "d", "e"].iter().map(|n| id(n)).collect();
        let s0 = Stripe::new(0, 2).unwrap();
        let mut up: Vec<Holder> = ["a", "b", "c", "d", "e"].iter().map(|n| receiving(n, Some(0))).collect();
        // Stripe 0's tree: a (root), c, e home; then b, d: a → c, e; c → b, d.
        assert_eq!(r.route(sha, s0, &id("a"), &up, &planned), Parent::Leader);
        assert_eq!(r.route(sha, s0, &id("c"), &up, &planned), Parent::Node(id("a")));
        assert_eq!(r.route(sha, s0, &id("b"), &up, &planned), Parent::Node(id("c")));
        // c goes down: b asks again and goes to the shallowest relay with room, not c.
        up.retain(|h| h.id != id("c"));
        assert_eq!(r.route(sha, s0, &id("b"), &up, &planned), Parent::Node(id("a")));
        // b's stream from a broke: the plan (c) is down, a was just lost,
        // and the leader's one stream of this stripe is a's: the next
        // with room, or the leader, never a again at once.
        let again = r.route(sha, s0, &id("b"), &up, &planned);
        assert_ne!(again, Parent::Node(id("a")));
        assert_ne!(again, Parent::Node(id("b")));
    }

    /// A small seeded generator (xorshift), so a failing schedule replays.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    /// What must hold of the trees after every step, whatever happened.
    fn check(r: &Relays, sha: &Sha256Digest, fanout: usize, seed: u64) {
        let Some(cut) = r.cuts.get(sha) else { return };
        for (s, tree) in cut.trees.iter().enumerate() {
            for (child, parent) in tree {
                let Parent::Node(p) = parent else { continue };
                assert_ne!(p, child, "seed {seed}: stripe {s}: {child} under itself");
                let load = tree.values().filter(|q| *q == parent).count();
                assert!(load <= fanout, "seed {seed}: stripe {s}: {p} serves {load} > {fanout}");
                // Up the tree: the leader, or a node not fetching this stripe (staged, or gone), never a cycle.
                let mut at = p.clone();
                for _ in 0..=tree.len() {
                    match tree.get(&at) {
                        Some(Parent::Node(q)) => at = q.clone(),
                        _ => break,
                    }
                    assert_ne!(at, *child, "seed {seed}: stripe {s}: a cycle through {child}");
                }
            }
        }
    }

    #[test]
    fn seeded_schedules_of_fetches_deaths_and_stagings_keep_the_trees_sound() {
        let sha = Sha256Digest::of(b"image");
        for seed in 1..=400u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let n = 1 + rng.below(24);
            let fanout = rng.below(6);
            let names: Vec<NodeId> = (0..n).map(|i| id(&format!("se-{i:02}"))).collect();
            let planned = names.clone();
            let mut up: Vec<Holder> = names.iter().map(|n| receiving(n.as_str(), Some(0))).collect();
            let mut r = Relays::new(fanout);
            let count = r.stripes(sha, planned.len());
            let mut last: HashMap<(NodeId, u32), Parent> = HashMap::new();
            for _ in 0..6 * n {
                match rng.below(10) {
                    // A node dies (and may come back later).
                    0 if up.len() > 1 => {
                        let gone = up.remove(rng.below(up.len())).id;
                        // Its streams ended with it: where it fetched from is forgotten.
                        last.retain(|(c, _), _| *c != gone);
                    }
                    1 => {
                        let back = &names[rng.below(n)];
                        if !up.iter().any(|h| h.id == *back) {
                            up.push(receiving(back.as_str(), Some(0)));
                        }
                    }
                    // A node has it all now.
                    2 => {
                        let i = rng.below(up.len());
                        up[i].staged = true;
                    }
                    // A fetch: the first, or again after a broken stream.
                    _ => {
                        let h = &up[rng.below(up.len())];
                        if h.staged {
                            continue;
                        }
                        let child = h.id.clone();
                        let stripe = Stripe::new(rng.below(count as usize) as u32, count).unwrap();
                        let got = r.route(sha, stripe, &child, &up, &planned);
                        if fanout == 0 {
                            assert_eq!(got, Parent::Leader, "seed {seed}: no relays");
                        }
                        if let Parent::Node(p) = &got {
                            assert!(up.iter().any(|h| h.id == *p), "seed {seed}: {child} sent to {p}, which is down");
                            let before = last.get(&(child.clone(), stripe.index()));
                            assert_ne!(before, Some(&got), "seed {seed}: {child} sent back to the source it lost");
                        }
                        last.insert((child, stripe.index()), got);
                    }
                }
                check(&r, &sha, fanout.max(1), seed);
            }
        }
    }

    #[test]
    fn without_faults_every_plan_has_one_leader_stream_per_stripe_and_one_relayed_stripe_per_node() {
        let sha = Sha256Digest::of(b"image");
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
            let fanout = 2 + rng.below(5);
            // A number of fetchers that the stripes divide: at most the
            // fan-out (as many stripes as fetchers), or a multiple of it.
            let n = if rng.below(2) == 0 { 1 + rng.below(fanout) } else { fanout * (1 + rng.below(8)) };
            let names: Vec<NodeId> = (0..n).map(|i| id(&format!("n{i:03}"))).collect();
            let up: Vec<Holder> = names.iter().map(|n| receiving(n.as_str(), Some(0))).collect();
            let mut r = Relays::new(fanout);
            let k = r.stripes(sha, n);
            assert_eq!(k as usize, fanout.min(n), "seed {seed}");
            let mut asks: Vec<(NodeId, Stripe)> =
                names.iter().flat_map(|n| Stripe::all(k).map(move |s| (n.clone(), s))).collect();
            for i in (1..asks.len()).rev() {
                asks.swap(i, rng.below(i + 1));
            }
            for (child, s) in &asks {
                r.route(sha, *s, child, &up, &names);
            }
            check(&r, &sha, fanout, seed);
            let trees = &r.cuts[&sha].trees;
            for (s, tree) in trees.iter().enumerate() {
                assert_eq!(tree.len(), n, "seed {seed}: every node fetches stripe {s}");
                let from_leader = tree.values().filter(|p| **p == Parent::Leader).count();
                assert_eq!(from_leader, 1, "seed {seed}: stripe {s} has {from_leader} roots");
            }
            for node in &names {
                let relays_in = trees.iter().filter(|t| t.values().any(|p| *p == Parent::Node(node.clone()))).count();
                assert!(relays_in <= 1, "seed {seed}: n {n}, k {k}: {node} relays {relays_in} stripes");
            }
        }
    }
}
