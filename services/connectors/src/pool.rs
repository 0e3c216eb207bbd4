//! Tokens a lane took ahead for the requests it is about to send. A lane batch of a cold
//! tenant reads before it writes: a contact search per new number, an owner lookup, the
//! contacts' companies and deals, then the write. Taking each request's tokens in a round trip
//! of its own made those takes the largest share of a record's Redis round trips. So the lane
//! says what it expects to read (`Api::expect`, from what its cache read missed) and write,
//! and takes all of it in one round trip (`Api::take_ahead`): a take per bucket set for the
//! reads, as many units as the limits have room for; one fenced take per write request. The
//! units wait here, drawn one per request, each settled by its own answer; a read that finds
//! none left takes units for what is still expected (`wanted`).
//!
//! What a lane did not use goes back when it finishes (`Api::give_back`, riding its DONE), so
//! an estimate too high only holds tokens for the length of a batch; a unit that can no
//! longer be drawn (held past its time) goes back sooner, with the tenant's next take
//! (`Pools::expired`), so a batch whose lookups waited does not hold its writes' tokens. A read's units are kept
//! at most `HOLD`: their tokens are leased that much longer, so a unit drawn late is still
//! covered while its request can be on its way. A write's unit is drawn only by a request
//! carrying no key its take did not fence, and only within a third of the lease that take
//! renewed: the leases it checked are still this writer's when the write goes out (DESIGN §4).

use crate::api::RequestClass;
use crate::bucket::{BucketSet, Grant};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a unit taken ahead may wait for its request.
pub const HOLD: Duration = Duration::from_secs(2);

/// The most units one take asks for: beyond this an estimate is more likely wrong than useful.
pub const MOST: u64 = 8;

/// A grant's units, the first `used` of them handed out.
pub struct Held {
    pub set: BucketSet,
    pub costs: Vec<u64>,
    pub grant: Grant,
    pub used: u64,
    /// For a write's units: the idempotency keys whose leases the take checked and renewed;
    /// a request may draw a unit only if it carries no other key.
    pub fence: Vec<String>,
    /// A unit is drawn only this soon after the take.
    pub within: Duration,
    taken: Instant,
}

#[derive(Default)]
struct Lane {
    /// Requests of each class the lane still expects to send.
    expected: HashMap<RequestClass, u64>,
    held: Vec<Held>,
}

/// Per tenant: what its lane expects and holds. An entry lives from `expect` to `release`.
#[derive(Default)]
pub struct Pools {
    by_tenant: Mutex<HashMap<String, Lane>>,
}

impl Pools {
    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lane>> {
        self.by_tenant.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lane of `tenant` expects to send `n` more requests of `class`.
    pub fn expect(&self, tenant: &str, class: RequestClass, n: u64) {
        if n == 0 {
            return;
        }
        *self.lanes().entry(tenant.to_string()).or_default().expected.entry(class).or_default() += n;
    }

    /// How many units a take for a request of `class` from `set` should ask for: the requests
    /// expected of every class that spends from the same set (`same_set`), this one included.
    pub fn wanted(&self, set: &BucketSet, class: RequestClass, same_set: impl Fn(RequestClass) -> bool) -> u64 {
        let lanes = self.lanes();
        let Some(lane) = lanes.get(&set.tenant_id) else { return 1 };
        let n: u64 = lane.expected.iter().filter(|(c, _)| **c == class || same_set(**c)).map(|(_, n)| *n).sum();
        n.clamp(1, MOST)
    }

    /// A request of `class` is on its way: one fewer expected.
    pub fn sent(&self, tenant: &str, class: RequestClass) {
        if let Some(n) = self.lanes().get_mut(tenant).and_then(|l| l.expected.get_mut(&class)) {
            *n = n.saturating_sub(1);
        }
    }

    /// A unit for a request from `set` at `costs` carrying the keys `fence` (none: a read),
    /// if one is held and not too old: the grant's id and the unit's number (from 1). A read
    /// draws a read's unit; a write, a unit whose take fenced every key it carries.
    pub fn draw(&self, set: &BucketSet, costs: &[u64], fence: &[String]) -> Option<(String, u64)> {
        let mut lanes = self.lanes();
        let lane = lanes.get_mut(&set.tenant_id)?;
        let h = lane.held.iter_mut().find(|h| {
            h.used < h.grant.units
                && h.taken.elapsed() < h.within
                && h.costs == costs
                && h.set.limits == set.limits
                && h.fence.is_empty() == fence.is_empty()
                && fence.iter().all(|k| h.fence.contains(k))
        })?;
        h.used += 1;
        Some((h.grant.id.clone(), h.used))
    }

    /// A read's grant whose first `used` units are in use; the rest are held for `HOLD`.
    pub fn hold(&self, set: &BucketSet, costs: &[u64], grant: Grant, used: u64) {
        self.hold_fenced(set, costs, grant, used, vec![], HOLD);
    }

    /// `hold` for a write's units, drawn only by requests carrying no key but these, and
    /// only `within` of the take (less than the leases it renewed have left).
    pub fn hold_fenced(&self, set: &BucketSet, costs: &[u64], grant: Grant, used: u64, fence: Vec<String>, within: Duration) {
        if grant.units <= used {
            return;
        }
        let held = Held { set: set.clone(), costs: costs.to_vec(), grant, used, fence, within, taken: Instant::now() };
        self.lanes().entry(set.tenant_id.clone()).or_default().held.push(held);
    }

    /// What the lane of `tenant` expects, by class (for `Api::take_ahead`).
    pub fn expected(&self, tenant: &str) -> Vec<(RequestClass, u64)> {
        let lanes = self.lanes();
        let Some(lane) = lanes.get(tenant) else { return vec![] };
        lane.expected.iter().filter(|(_, n)| **n > 0).map(|(c, n)| (*c, *n)).collect()
    }

    /// Grants of `tenant` whose units can no longer be drawn (held past `within`), taken out
    /// to be given back now (`TokenBuckets::give_back_soon`) rather than when the batch ends:
    /// a unit no request will draw still holds its tokens, and a cold batch whose lookups
    /// waited held a write's units for its whole length (Pipedrive, at 10 requests per 2 s,
    /// then sent one request per window for a batch's first 26 s).
    pub fn expired(&self, tenant: &str) -> Vec<Held> {
        let mut lanes = self.lanes();
        let Some(lane) = lanes.get_mut(tenant) else { return vec![] };
        let (gone, kept): (Vec<Held>, Vec<Held>) =
            std::mem::take(&mut lane.held).into_iter().partition(|h| h.used >= h.grant.units || h.taken.elapsed() >= h.within);
        lane.held = kept;
        gone.into_iter().filter(|h| h.used < h.grant.units).collect()
    }

    /// Ends the lane's batch: what it expected is forgotten, and what it holds is returned to
    /// be given back (`TokenBuckets::give_back_soon`).
    pub fn release(&self, tenant: &str) -> Vec<Held> {
        let held = self.lanes().remove(tenant).map(|l| l.held).unwrap_or_default();
        held.into_iter().filter(|h| h.used < h.grant.units).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bucket::Limit;

    fn set(tenant: &str, limit: &str) -> BucketSet {
        BucketSet {
            tenant_id: tenant.into(),
            crm: "hubspot".into(),
            limits: vec![Limit::Rolling { name: limit.into(), max: 10, window: Duration::from_secs(1), margin: Duration::ZERO }],
        }
    }

    fn grant(units: u64) -> Grant {
        Grant { id: "g".into(), units, at_ms: 0 }
    }

    #[test]
    fn a_lane_wants_what_it_expects_of_the_same_set_within_bounds() {
        let p = Pools::default();
        let s = set("t1", "burst");
        assert_eq!(p.wanted(&s, RequestClass::Read, |_| false), 1, "nothing expected: one");
        p.expect("t1", RequestClass::Read, 2);
        p.expect("t1", RequestClass::List, 1);
        p.expect("t1", RequestClass::Search, 5);
        assert_eq!(p.wanted(&s, RequestClass::Read, |c| c == RequestClass::List), 3, "reads and lists share the set");
        assert_eq!(p.wanted(&s, RequestClass::Search, |_| false), 5);
        assert_eq!(p.wanted(&set("t2", "burst"), RequestClass::Read, |_| true), 1, "another tenant expects nothing");
        p.expect("t1", RequestClass::Search, 50);
        assert_eq!(p.wanted(&s, RequestClass::Search, |_| false), MOST);
        p.sent("t1", RequestClass::Read);
        p.sent("t1", RequestClass::Read);
        p.sent("t1", RequestClass::Read);
        assert_eq!(p.wanted(&s, RequestClass::Read, |_| false), 1);
    }

    #[test]
    fn units_are_drawn_once_each_for_their_own_set_and_costs_and_the_rest_released() {
        let p = Pools::default();
        let s = set("t1", "burst");
        p.hold(&s, &[1], grant(3), 1);
        assert_eq!(p.draw(&set("t1", "search"), &[1], &[]), None, "another set");
        assert_eq!(p.draw(&s, &[2], &[]), None, "other costs");
        assert_eq!(p.draw(&s, &[1], &["k1".into()]), None, "a write never draws a read's unit");
        assert_eq!(p.draw(&s, &[1], &[]), Some(("g".into(), 2)), "unit 1 went with the take");
        assert_eq!(p.draw(&s, &[1], &[]), Some(("g".into(), 3)));
        assert_eq!(p.draw(&s, &[1], &[]), None, "all used");
        assert!(p.release("t1").is_empty(), "every unit used: nothing to give back");
        p.hold(&s, &[1], grant(4), 1);
        assert!(p.draw(&s, &[1], &[]).is_some());
        let back = p.release("t1");
        assert_eq!((back.len(), back[0].used), (1, 2), "two of four used");
        assert!(p.release("t1").is_empty(), "released once");
        p.hold(&s, &[1], grant(1), 1);
        assert!(p.release("t1").is_empty(), "a grant whose units are all in use is not held");
    }

    #[test]
    fn a_writes_unit_goes_only_to_a_request_whose_keys_its_take_fenced_and_only_soon() {
        let p = Pools::default();
        let s = set("t1", "burst");
        p.hold_fenced(&s, &[1], grant(1), 0, vec!["k1".into(), "k2".into()], Duration::from_secs(60));
        assert_eq!(p.draw(&s, &[1], &[]), None, "a read never draws a write's unit");
        assert_eq!(p.draw(&s, &[1], &["k1".into(), "k3".into()]), None, "k3 was not fenced");
        assert_eq!(p.draw(&s, &[1], &["k2".into()]), Some(("g".into(), 1)));
        assert_eq!(p.draw(&s, &[1], &["k1".into()]), None, "used");
        p.hold_fenced(&s, &[1], grant(1), 0, vec!["k1".into()], Duration::ZERO);
        assert_eq!(p.draw(&s, &[1], &["k1".into()]), None, "too old");
        assert_eq!(p.release("t1").len(), 1, "the unused unit goes back");
    }

    #[test]
    fn units_that_can_no_longer_be_drawn_are_taken_out_to_go_back_at_once() {
        let p = Pools::default();
        let s = set("t1", "burst");
        p.hold_fenced(&s, &[1], grant(3), 1, vec!["k1".into()], Duration::ZERO);
        p.hold_fenced(&s, &[1], Grant { id: "live".into(), units: 2, at_ms: 0 }, 0, vec!["k2".into()], Duration::from_secs(60));
        p.hold(&s, &[1], Grant { id: "read".into(), units: 2, at_ms: 0 }, 1);
        assert!(p.expired("t2").is_empty(), "another tenant holds nothing");
        let gone = p.expired("t1");
        assert_eq!(gone.iter().map(|h| (h.grant.id.as_str(), h.used)).collect::<Vec<_>>(), vec![("g", 1)], "only the stale grant");
        assert!(p.expired("t1").is_empty(), "taken out once");
        assert_eq!(p.draw(&s, &[1], &["k2".into()]), Some(("live".into(), 1)), "a live write's unit stays");
        assert_eq!(p.draw(&s, &[1], &[]), Some(("read".into(), 2)), "a read's unit within HOLD stays");
        assert_eq!(p.release("t1").iter().map(|h| h.grant.id.as_str()).collect::<Vec<_>>(), vec!["live"], "the rest at the end");
    }
}
