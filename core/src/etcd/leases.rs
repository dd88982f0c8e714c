//! Leases for the etcd store, granted per time bucket rather than per request. A key attached to
//! a lease lives as long as the lease; the filter grants one lease per bucket with a TTL one
//! bucket longer than keys need, so a key attached at the end of a bucket still lives its full
//! time, and a key lives between `lifetime` and `lifetime + bucket`. The next lease is asked for
//! half a bucket before the current one stops being usable, so a grant's round trip never
//! leaves keyed requests without one; a lease etcd says is gone is dropped and granted again.

use super::gateway::{self, Request};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LeaseKind {
    /// Held by in-flight claims: `lock_timeout_ms`, so a proxy that vanished frees its claims.
    InFlight,
    /// Held by completed keys: `ttl_seconds`.
    Retention,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct LeasePlan {
    pub lifetime_ms: u64,
    pub bucket_ms: u64,
}

impl LeasePlan {
    /// Buckets of a tenth of the lifetime, between 1 s and 1 h.
    pub fn for_lifetime(lifetime_ms: u64) -> LeasePlan {
        LeasePlan {
            lifetime_ms,
            bucket_ms: (lifetime_ms / 10).clamp(1_000, 3_600_000),
        }
    }

    pub fn ttl_s(&self) -> u64 {
        self.lifetime_ms
            .saturating_add(self.bucket_ms)
            .div_ceil(1000)
    }
}

#[derive(Clone, Debug)]
struct Slot {
    plan: LeasePlan,
    /// (lease ID, granted at ms)
    current: Option<(String, u64)>,
    granting: bool,
}

impl Slot {
    fn usable(&self, now_ms: u64) -> Option<&str> {
        let (id, granted) = self.current.as_ref()?;
        (now_ms <= granted.saturating_add(self.plan.bucket_ms)).then_some(id.as_str())
    }

    fn due(&self, now_ms: u64) -> bool {
        !self.granting
            && self.current.as_ref().is_none_or(|(_, granted)| {
                now_ms >= granted.saturating_add(self.plan.bucket_ms / 2)
            })
    }
}

#[derive(Clone, Debug)]
pub struct Leases {
    in_flight: Slot,
    retention: Slot,
}

impl Leases {
    pub fn new(lock_timeout_ms: u64, ttl_ms: u64) -> Leases {
        let slot = |lifetime| Slot {
            plan: LeasePlan::for_lifetime(lifetime),
            current: None,
            granting: false,
        };
        Leases {
            in_flight: slot(lock_timeout_ms),
            retention: slot(ttl_ms),
        }
    }

    fn slot(&self, kind: LeaseKind) -> &Slot {
        match kind {
            LeaseKind::InFlight => &self.in_flight,
            LeaseKind::Retention => &self.retention,
        }
    }

    fn slot_mut(&mut self, kind: LeaseKind) -> &mut Slot {
        match kind {
            LeaseKind::InFlight => &mut self.in_flight,
            LeaseKind::Retention => &mut self.retention,
        }
    }

    /// The lease a key attached now must use, if one is usable.
    pub fn lease_for(&self, kind: LeaseKind, now_ms: u64) -> Option<&str> {
        self.slot(kind).usable(now_ms)
    }

    /// The grants to send now (each kind at most once until its answer comes).
    pub fn due(&mut self, now_ms: u64) -> Vec<(LeaseKind, Request)> {
        let mut out = Vec::new();
        for kind in [LeaseKind::InFlight, LeaseKind::Retention] {
            let slot = self.slot_mut(kind);
            if slot.due(now_ms) {
                slot.granting = true;
                out.push((kind, gateway::grant(slot.plan.ttl_s())));
            }
        }
        out
    }

    pub fn on_granted(&mut self, kind: LeaseKind, id: String, now_ms: u64) {
        let slot = self.slot_mut(kind);
        slot.granting = false;
        slot.current = Some((id, now_ms));
    }

    /// The grant failed: asked again when next due.
    pub fn on_grant_failed(&mut self, kind: LeaseKind) {
        self.slot_mut(kind).granting = false;
    }

    /// etcd said the lease is gone (it restarted, or the lease expired): never use it again.
    pub fn on_gone(&mut self, id: &str) {
        for kind in [LeaseKind::InFlight, LeaseKind::Retention] {
            let slot = self.slot_mut(kind);
            if slot
                .current
                .as_ref()
                .is_some_and(|(current, _)| current == id)
            {
                slot.current = None;
            }
        }
    }

    pub fn plan(&self, kind: LeaseKind) -> LeasePlan {
        self.slot(kind).plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_grant_per_bucket_asked_ahead_of_need() {
        let mut l = Leases::new(30_000, 86_400_000);
        assert_eq!(
            l.plan(LeaseKind::InFlight),
            LeasePlan {
                lifetime_ms: 30_000,
                bucket_ms: 3_000
            }
        );
        assert_eq!(l.plan(LeaseKind::InFlight).ttl_s(), 33);
        assert_eq!(l.plan(LeaseKind::Retention).ttl_s(), 86_400 + 3_600);
        assert_eq!(l.lease_for(LeaseKind::InFlight, 0), None);
        let due = l.due(0);
        assert_eq!(due.len(), 2);
        assert!(l.due(10).is_empty(), "not asked twice while a grant is out");
        l.on_granted(LeaseKind::InFlight, "1".into(), 100);
        l.on_granted(LeaseKind::Retention, "2".into(), 100);
        // Usable for one bucket; the next is asked half a bucket in.
        assert_eq!(l.lease_for(LeaseKind::InFlight, 3_100), Some("1"));
        assert_eq!(l.lease_for(LeaseKind::InFlight, 3_101), None);
        assert!(l.due(1_599).is_empty());
        let next = l.due(1_600);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].0, LeaseKind::InFlight);
        assert_eq!(
            l.lease_for(LeaseKind::InFlight, 1_700),
            Some("1"),
            "still usable meanwhile"
        );
        l.on_granted(LeaseKind::InFlight, "3".into(), 1_700);
        assert_eq!(l.lease_for(LeaseKind::InFlight, 4_000), Some("3"));
    }

    #[test]
    fn a_lease_etcd_lost_is_granted_again() {
        let mut l = Leases::new(30_000, 60_000);
        l.due(0);
        l.on_granted(LeaseKind::InFlight, "7".into(), 0);
        l.on_grant_failed(LeaseKind::Retention);
        l.on_gone("7");
        assert_eq!(l.lease_for(LeaseKind::InFlight, 1), None);
        let kinds: Vec<LeaseKind> = l.due(1).into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [LeaseKind::InFlight, LeaseKind::Retention]);
    }
}
