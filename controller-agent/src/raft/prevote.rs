//! Pre-vote, outside openraft (0.9 has none): a controller may stand for
//! election only while it can reach a majority of the voters (itself
//! included) and none of those it reaches leads.
//!
//! Without it, a follower cut off from the others campaigns alone, term
//! after term, and when it comes back its higher term deposes the leader
//! the others never stopped following (measured: a follower cut off for 5 s
//! took the leadership on its return, term 4 to 11). openraft's leader
//! lease already makes the others refuse its votes; what it lacks is the
//! candidate's own restraint, which this gives by turning openraft's
//! elections off (`RuntimeConfigHandle::elect`) while standing could not
//! succeed, as pre-vote would have found.
//!
//! A peer is asked through gRPC health (`molt.v1.Leader`: `SERVING` only
//! on the controller whose term has begun), with this controller's own
//! certificate, every fifth of the shortest election timeout; a peer that
//! does not answer within that timeout counts as out of reach.

use std::{sync::Arc, time::Duration};

use common::config::NodeSettings;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tracing::{debug, info};

use super::Consensus;

/// What one peer answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// It did not answer in time.
    Unreachable,
    /// It answers and does not lead.
    Follows,
    /// It answers and leads.
    Leads,
}

/// Whether a controller that sees `peers` (the other voters) may stand:
/// a majority of all the voters reachable, and no leader among them.
fn may_stand(peers: &[Seen]) -> bool {
    let voters = peers.len() + 1;
    let reachable = 1 + peers.iter().filter(|s| **s != Seen::Unreachable).count();
    reachable * 2 > voters && !peers.contains(&Seen::Leads)
}

/// Keeps this controller's elections on only while it may stand, until `shutdown`.
pub fn guard(consensus: Consensus, settings: Arc<NodeSettings>, shutdown: CancellationToken) {
    let min = consensus.raft.config().election_timeout_min;
    let (every, within) = (Duration::from_millis((min / 5).max(50)), Duration::from_millis(min.max(100)));
    tokio::spawn(async move {
        let mut allowed = true;
        let mut channels: std::collections::HashMap<String, tonic::transport::Channel> = Default::default();
        loop {
            let m = consensus.raft.metrics().borrow().clone();
            let membership = m.membership_config.membership().clone();
            let peers: Vec<super::Member> = membership
                .voter_ids()
                .filter(|id| *id != consensus.me)
                .filter_map(|id| membership.get_node(&id).cloned())
                .collect();
            let asked = peers.iter().map(|p| (p, channel(&settings, &mut channels, p))).collect::<Vec<_>>();
            let seen = futures_util::future::join_all(asked.into_iter().map(|(p, c)| ask(p, c, within))).await;
            for (p, s) in peers.iter().zip(&seen) {
                if *s == Seen::Unreachable {
                    channels.remove(&p.addr);
                }
            }
            let now = peers.is_empty() || m.current_leader == Some(consensus.me) || may_stand(&seen);
            if now != allowed {
                consensus.raft.runtime_config().elect(now);
                if now {
                    info!(
                        "a majority of the controllers answers and none leads: this controller may stand for election"
                    );
                } else {
                    info!(peers = ?seen, "this controller does not stand for election (pre-vote: no majority, or a leader answers)");
                }
                allowed = now;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
}

/// The channel to `peer` (kept while it answers), if its address is one.
fn channel(
    settings: &NodeSettings,
    channels: &mut std::collections::HashMap<String, tonic::transport::Channel>,
    peer: &super::Member,
) -> Option<tonic::transport::Channel> {
    if let Some(c) = channels.get(&peer.addr) {
        return Some(c.clone());
    }
    let endpoint = agent_core::follower::dial::endpoint(settings, peer.addr.parse().ok()?).ok()?;
    let c = endpoint.connect_lazy();
    channels.insert(peer.addr.clone(), c.clone());
    Some(c)
}

/// Asks `peer` over `channel` whether it leads, within `within`.
async fn ask(peer: &super::Member, channel: Option<tonic::transport::Channel>, within: Duration) -> Seen {
    let Some(channel) = channel else { return Seen::Unreachable };
    let req = HealthCheckRequest { service: crate::leader::LEADER_SERVICE.into() };
    match tokio::time::timeout(within, HealthClient::new(channel).check(req)).await {
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32 => Seen::Leads,
        Ok(Ok(_)) => Seen::Follows,
        Ok(Err(s)) if s.code() != tonic::Code::Unavailable && s.code() != tonic::Code::DeadlineExceeded => {
            // It answered (with an error of its own): reachable.
            debug!(peer = %peer.id, status = %s, "pre-vote probe");
            Seen::Follows
        }
        _ => Seen::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::{Seen::*, may_stand};

    #[test]
    fn a_controller_stands_only_with_a_majority_in_reach_and_no_leader_in_it() {
        assert!(may_stand(&[Follows, Unreachable]), "2 of 3, the leader gone: stand");
        assert!(!may_stand(&[Unreachable, Unreachable]), "cut off: do not stand");
        assert!(!may_stand(&[Leads, Follows]), "a leader answers: do not stand");
        assert!(!may_stand(&[Leads, Unreachable]), "a leader answers: do not stand");
        assert!(may_stand(&[Follows, Follows, Unreachable, Unreachable]), "3 of 5: stand");
        assert!(!may_stand(&[Follows, Unreachable, Unreachable, Unreachable]), "2 of 5: do not stand");
        assert!(may_stand(&[]), "alone: stand");
    }
}
