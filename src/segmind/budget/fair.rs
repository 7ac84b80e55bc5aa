//! Who gets the next free submission slot: weighted fair queueing over
//! lanes, then over the parties (tenants) within a lane, then first come
//! first served within a party. Pure: no clock, no locking (the budget
//! holds it under its mutex).
//!
//! Stride scheduling at both levels: each lane (and each party within a
//! lane) has a *pass*; the waiting one with the lowest pass is served, and
//! its pass advances by `1 / weight`. One that starts waiting after being
//! idle starts at the pass last served, so idleness earns no credit: a lane
//! of weight 10 beside one of weight 1 gets 10 slots in 11 while both
//! wait, the other gets every slot while it is alone, and neither is ever
//! starved.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::job::Flow;

/// A waiting submission's place in the queue.
pub type Ticket = u64;

#[derive(Debug, Default)]
pub struct FairQueue {
    lanes: Vec<LaneQueue>,
    lane_weights: Vec<f64>,
    party_weights: BTreeMap<String, f64>,
    /// The pass of the lane served last.
    clock: f64,
    next_ticket: Ticket,
}

#[derive(Debug, Default)]
struct LaneQueue {
    pass: f64,
    /// The pass of the party served last in this lane.
    clock: f64,
    /// Parties with submissions waiting (an idle party is dropped).
    parties: BTreeMap<Arc<str>, PartyQueue>,
}

#[derive(Debug)]
struct PartyQueue {
    pass: f64,
    waiting: VecDeque<Ticket>,
}

impl FairQueue {
    /// `lane_weights[i]` is lane `i`'s weight (a lane not listed weighs
    /// 1); `party_weights` a party's within any lane (unlisted: 1).
    pub fn new(lane_weights: Vec<u32>, party_weights: BTreeMap<String, u32>) -> Self {
        FairQueue {
            lane_weights: lane_weights.into_iter().map(f64::from).collect(),
            party_weights: party_weights
                .into_iter()
                .map(|(p, w)| (p, f64::from(w)))
                .collect(),
            ..FairQueue::default()
        }
    }

    fn lane_weight(&self, lane: usize) -> f64 {
        self.lane_weights.get(lane).copied().unwrap_or(1.0).max(1.0)
    }

    fn party_weight(&self, party: &str) -> f64 {
        self.party_weights
            .get(party)
            .copied()
            .unwrap_or(1.0)
            .max(1.0)
    }

    /// Puts a submission of `flow` in line.
    pub fn enqueue(&mut self, flow: &Flow) -> Ticket {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if self.lanes.len() <= flow.lane {
            self.lanes.resize_with(flow.lane + 1, LaneQueue::default);
        }
        let clock = self.clock;
        let lane = &mut self.lanes[flow.lane];
        if lane.parties.is_empty() {
            lane.pass = lane.pass.max(clock);
        }
        let lane_clock = lane.clock;
        lane.parties
            .entry(flow.party.clone())
            .or_insert_with(|| PartyQueue {
                pass: lane_clock,
                waiting: VecDeque::new(),
            })
            .waiting
            .push_back(ticket);
        ticket
    }

    /// The lane and party to serve next: the lowest pass (ties: the lower
    /// lane, the party first in order).
    fn next(&self) -> Option<(usize, &Arc<str>)> {
        let (lane, queue) = self
            .lanes
            .iter()
            .enumerate()
            .filter(|(_, l)| !l.parties.is_empty())
            .min_by(|(_, a), (_, b)| a.pass.total_cmp(&b.pass))?;
        let (party, _) = queue
            .parties
            .iter()
            .min_by(|(_, a), (_, b)| a.pass.total_cmp(&b.pass))?;
        Some((lane, party))
    }

    /// The ticket served next, if any waits.
    pub fn head(&self) -> Option<Ticket> {
        let (lane, party) = self.next()?;
        self.lanes[lane].parties[party].waiting.front().copied()
    }

    /// Serves the head: takes it out of line and advances its lane's and
    /// party's passes. Returns the ticket served.
    pub fn serve(&mut self) -> Option<Ticket> {
        let (lane, party) = self.next()?;
        let party = party.clone();
        let lane_step = 1.0 / self.lane_weight(lane);
        let party_step = 1.0 / self.party_weight(&party);
        let queue = &mut self.lanes[lane];
        self.clock = self.clock.max(queue.pass);
        queue.pass += lane_step;
        let waiting = queue.parties.get_mut(&party)?;
        queue.clock = queue.clock.max(waiting.pass);
        waiting.pass += party_step;
        let ticket = waiting.waiting.pop_front();
        if waiting.waiting.is_empty() {
            queue.parties.remove(&party);
        }
        ticket
    }

    /// Takes `ticket` of `flow` out of line without serving it (its
    /// submission was given up).
    pub fn remove(&mut self, flow: &Flow, ticket: Ticket) {
        let Some(queue) = self.lanes.get_mut(flow.lane) else {
            return;
        };
        if let Some(party) = queue.parties.get_mut(&flow.party) {
            party.waiting.retain(|t| *t != ticket);
            if party.waiting.is_empty() {
                queue.parties.remove(&flow.party);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(lane: usize, party: &str) -> Flow {
        Flow {
            lane,
            party: Arc::from(party),
            ..Flow::default()
        }
    }

    /// Serves `n` and says whose each was.
    fn serve_n(q: &mut FairQueue, owners: &BTreeMap<Ticket, &'static str>, n: usize) -> String {
        (0..n)
            .filter_map(|_| q.serve())
            .map(|t| owners[&t])
            .collect::<Vec<_>>()
            .join("")
    }

    #[test]
    fn a_tenant_with_a_backlog_gets_its_share_not_the_whole_lane() {
        let mut q = FairQueue::new(vec![1], BTreeMap::new());
        let mut owners = BTreeMap::new();
        // 30 of A's submissions wait, then 10 of B's arrive.
        for _ in 0..30 {
            owners.insert(q.enqueue(&flow(0, "a")), "a");
        }
        for _ in 0..10 {
            owners.insert(q.enqueue(&flow(0, "b")), "b");
        }
        let first_20 = serve_n(&mut q, &owners, 20);
        assert_eq!(first_20.matches('b').count(), 10, "{first_20}");
        assert_eq!(serve_n(&mut q, &owners, 30), "a".repeat(20));
    }

    #[test]
    fn tenant_weights_set_the_shares() {
        let mut q = FairQueue::new(vec![1], BTreeMap::from([("a".to_owned(), 3)]));
        let mut owners = BTreeMap::new();
        for _ in 0..40 {
            owners.insert(q.enqueue(&flow(0, "a")), "a");
            owners.insert(q.enqueue(&flow(0, "b")), "b");
        }
        let served = serve_n(&mut q, &owners, 40);
        assert_eq!(served.matches('a').count(), 30, "{served}");
    }

    #[test]
    fn lanes_share_by_weight_and_the_lightest_is_never_starved() {
        let mut q = FairQueue::new(vec![10, 1], BTreeMap::new());
        let mut owners = BTreeMap::new();
        for _ in 0..200 {
            owners.insert(q.enqueue(&flow(1, "")), "b");
        }
        for _ in 0..200 {
            owners.insert(q.enqueue(&flow(0, "")), "i");
        }
        let served = serve_n(&mut q, &owners, 110);
        let bulk = served.matches('b').count();
        assert!(
            (9..=11).contains(&bulk),
            "{bulk} bulk slots in 110: {served}"
        );
        // Never more than 10 interactive slots in a row while bulk waits.
        assert!(!served.contains(&"i".repeat(12)), "{served}");
    }

    #[test]
    fn a_lane_that_was_idle_is_served_next_without_banked_credit() {
        let mut q = FairQueue::new(vec![10, 1], BTreeMap::new());
        let mut owners = BTreeMap::new();
        for _ in 0..50 {
            owners.insert(q.enqueue(&flow(1, "")), "b");
        }
        // The bulk lane alone for a while.
        assert_eq!(serve_n(&mut q, &owners, 30), "b".repeat(30));
        // An interactive submission arrives: it is next.
        owners.insert(q.enqueue(&flow(0, "")), "i");
        assert_eq!(serve_n(&mut q, &owners, 1), "i");
        // Interactive work arriving after a long idle spell does not get
        // 30 slots in a row for the bulk lane's 30.
        for _ in 0..40 {
            owners.insert(q.enqueue(&flow(0, "")), "i");
        }
        let served = serve_n(&mut q, &owners, 22);
        assert_eq!(served.matches('b').count(), 2, "{served}");
    }

    #[test]
    fn a_given_up_submission_leaves_the_line() {
        let mut q = FairQueue::new(vec![1], BTreeMap::new());
        let a = q.enqueue(&flow(0, "a"));
        let b = q.enqueue(&flow(0, "a"));
        assert_eq!(q.head(), Some(a));
        q.remove(&flow(0, "a"), a);
        assert_eq!(q.head(), Some(b));
        q.remove(&flow(0, "a"), b);
        assert_eq!(q.head(), None);
        assert_eq!(q.serve(), None);
    }
}
