//! The store against an in-memory `SharedKv` with Envoy's exact semantics, including several
//! "workers" interleaved between a read and its CAS write, and CAS-conflict storms.

use super::index::{Fingerprint, Identity, Reclaimed, Unreplayable};
use super::recorded::RecordedResponse;
use super::shared_kv::{KvError, MemoryKv, NoKv, SharedKv};
use super::store::*;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

const LIMITS: StoreLimits = StoreLimits {
    shards: 4,
    entries_per_shard: 8,
    lock_timeout_ms: 1_000,
    ttl_ms: 10_000,
};
const FP: Fingerprint = [9; 16];

fn worker(kv: &Rc<MemoryKv>, limits: StoreLimits) -> ShardedStore<Rc<MemoryKv>> {
    ShardedStore::new(kv.clone(), limits)
}

fn fresh(limits: StoreLimits) -> (Rc<MemoryKv>, ShardedStore<Rc<MemoryKv>>) {
    let kv = Rc::new(MemoryKv::default());
    let store = worker(&kv, limits);
    store.init([5; 16]).unwrap();
    (kv, store)
}

fn id(n: u32) -> Identity {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_le_bytes());
    id[4..8].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_le_bytes());
    id
}

fn response(body: &str) -> RecordedResponse {
    RecordedResponse {
        status: 201,
        headers: vec![(b"content-type".to_vec(), b"text/plain".to_vec())],
        body: body.as_bytes().to_vec(),
    }
}

fn ticket(claim: Claim) -> Ticket {
    match claim {
        Claim::Claimed(t) => t,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[test]
fn init_creates_seed_and_shards_once_and_keeps_them() {
    let kv = Rc::new(MemoryKv::default());
    let a = worker(&kv, LIMITS);
    assert_eq!(
        a.init([1; 16]).unwrap(),
        InitReport {
            seed_created: true,
            shards_created: 4
        }
    );
    let t = ticket(a.claim(&id(1), &FP, 7, 0).unwrap().value);
    // A second VM configuring later must neither change the seed nor wipe a shard.
    let b = worker(&kv, LIMITS);
    assert_eq!(b.init([2; 16]).unwrap(), InitReport::default());
    assert_eq!(b.seed().unwrap(), [1; 16]);
    assert_eq!(b.claim(&id(1), &FP, 8, 1).unwrap().value, Claim::InFlight);
    assert_eq!(kv.key_count(), 1 + 4);
    assert_eq!(a.release(&t, 2).unwrap().value, Finish::Released);
}

#[test]
fn hosts_without_shared_data_are_reported_unavailable() {
    let store = ShardedStore::new(NoKv, LIMITS);
    assert_eq!(
        store.init([0; 16]),
        Err(StoreError::Unavailable("UNIMPLEMENTED"))
    );
    assert_eq!(store.seed(), Err(StoreError::Unavailable("UNIMPLEMENTED")));
}

#[test]
fn first_request_runs_then_the_response_is_replayed_within_ttl() {
    let (_kv, store) = fresh(LIMITS);
    let t = ticket(store.claim(&id(1), &FP, 7, 100).unwrap().value);
    assert_eq!(
        store.claim(&id(1), &FP, 8, 200).unwrap().value,
        Claim::InFlight
    );
    assert_eq!(
        store.claim(&id(1), &[1; 16], 8, 200).unwrap().value,
        Claim::PayloadMismatch
    );
    let done = store
        .complete(&t, 201, Completion::Response(&response("made")), 300)
        .unwrap();
    assert_eq!(done.value, Finish::Stored);
    for now in [301, 5_000, 10_299] {
        assert_eq!(
            store.claim(&id(1), &FP, 9, now).unwrap().value,
            Claim::Replay(response("made")),
            "at {now}"
        );
    }
    assert_eq!(
        store.claim(&id(1), &[1; 16], 9, 400).unwrap().value,
        Claim::PayloadMismatch
    );
    // Past the TTL the entry is reclaimed and the key runs again.
    let again = store.claim(&id(1), &FP, 10, 10_300).unwrap();
    assert!(matches!(again.value, Claim::Claimed(_)));
    assert_eq!(
        again.reclaimed,
        Reclaimed {
            expired: 1,
            lock_expired: 0
        }
    );
}

#[test]
fn peek_sees_claims_of_other_workers_without_writing() {
    let (kv, a) = fresh(LIMITS);
    let b = worker(&kv, LIMITS);
    assert_eq!(b.peek(&id(1), 0).unwrap(), super::index::Peek::Absent);
    let t = ticket(a.claim(&id(1), &FP, 7, 0).unwrap().value);
    let writes = kv.sets.get();
    assert_eq!(b.peek(&id(1), 10).unwrap(), super::index::Peek::InFlight);
    assert_eq!(
        b.peek(&id(1), 1_000).unwrap(),
        super::index::Peek::Absent,
        "lock expired"
    );
    a.complete(&t, 200, Completion::Response(&response("r")), 20)
        .unwrap();
    assert_eq!(b.peek(&id(1), 30).unwrap(), super::index::Peek::Completed);
    assert_eq!(kv.sets.get(), writes + 2, "only the completion wrote");
}

#[test]
fn released_keys_run_again_and_stale_tickets_are_lost() {
    let (_kv, store) = fresh(LIMITS);
    let t = ticket(store.claim(&id(1), &FP, 7, 0).unwrap().value);
    assert_eq!(store.release(&t, 10).unwrap().value, Finish::Released);
    assert_eq!(store.release(&t, 11).unwrap().value, Finish::Lost);
    let t2 = ticket(store.claim(&id(1), &FP, 8, 20).unwrap().value);
    assert_eq!(
        store
            .complete(&t, 200, Completion::Response(&response("x")), 30)
            .unwrap()
            .value,
        Finish::Lost
    );
    assert_eq!(
        store
            .complete(&t2, 200, Completion::Response(&response("y")), 30)
            .unwrap()
            .value,
        Finish::Stored
    );
}

#[test]
fn a_vanished_worker_releases_its_key_after_the_lock_timeout() {
    let (_kv, store) = fresh(LIMITS);
    let abandoned = ticket(store.claim(&id(1), &FP, 7, 0).unwrap().value);
    assert_eq!(
        store.claim(&id(1), &FP, 8, 999).unwrap().value,
        Claim::InFlight
    );
    let report = store.claim(&id(1), &FP, 8, 1_000).unwrap();
    let t = ticket(report.value);
    assert_eq!(report.reclaimed.lock_expired, 1);
    // The stalled worker comes back: its claim is gone, it must not store anything.
    assert_eq!(
        store
            .complete(
                &abandoned,
                200,
                Completion::Response(&response("late")),
                1_001
            )
            .unwrap()
            .value,
        Finish::Lost
    );
    assert_eq!(
        store
            .complete(&t, 200, Completion::Response(&response("on time")), 1_002)
            .unwrap()
            .value,
        Finish::Stored
    );
    assert_eq!(
        store.claim(&id(1), &FP, 9, 1_003).unwrap().value,
        Claim::Replay(response("on time"))
    );
}

#[test]
fn completing_near_the_lock_deadline_renews_it_first() {
    let (kv, store) = fresh(LIMITS);
    let t = ticket(store.claim(&id(1), &FP, 7, 0).unwrap().value);
    let writes = kv.sets.get();
    // 900 ms of a 1000 ms lock used: renew (1 write), slot (1 write), complete (1 write).
    assert_eq!(
        store
            .complete(&t, 200, Completion::Response(&response("r")), 900)
            .unwrap()
            .value,
        Finish::Stored
    );
    assert_eq!(kv.sets.get() - writes, 3);
    let t = ticket(store.claim(&id(2), &FP, 7, 1000).unwrap().value);
    let writes = kv.sets.get();
    assert_eq!(
        store
            .complete(&t, 200, Completion::Response(&response("r")), 1100)
            .unwrap()
            .value,
        Finish::Stored
    );
    assert_eq!(kv.sets.get() - writes, 2, "plenty of lock left: no renewal");
}

#[test]
fn a_response_too_large_to_keep_still_completes_the_key() {
    let (_kv, store) = fresh(LIMITS);
    let t = ticket(store.claim(&id(1), &FP, 7, 0).unwrap().value);
    assert_eq!(
        store
            .complete(
                &t,
                200,
                Completion::Unreplayable(Unreplayable::TooLarge),
                10
            )
            .unwrap()
            .value,
        Finish::StoredNotReplayable
    );
    assert_eq!(
        store.claim(&id(1), &FP, 8, 20).unwrap().value,
        Claim::NotReplayable {
            status: 200,
            reason: Unreplayable::TooLarge
        }
    );
}

#[test]
fn a_full_shard_answers_full_until_an_entry_frees() {
    let limits = StoreLimits {
        shards: 1,
        entries_per_shard: 3,
        ..LIMITS
    };
    let (kv, store) = fresh(limits);
    let tickets: Vec<Ticket> = (0..3)
        .map(|n| ticket(store.claim(&id(n), &FP, 1, 0).unwrap().value))
        .collect();
    assert_eq!(
        store.claim(&id(9), &FP, 1, 10).unwrap().value,
        Claim::Full { retry_after_s: 1 }
    );
    store
        .complete(&tickets[0], 200, Completion::Response(&response("a")), 10)
        .unwrap();
    assert_eq!(
        store.claim(&id(9), &FP, 1, 20).unwrap().value,
        Claim::Full { retry_after_s: 1 },
        "completed entries hold their place for the TTL"
    );
    store.release(&tickets[1], 30).unwrap();
    assert!(matches!(
        store.claim(&id(9), &FP, 1, 40).unwrap().value,
        Claim::Claimed(_)
    ));
    assert_eq!(kv.key_count(), 1 + 1 + 1, "seed, shard, one slot written");
}

#[test]
fn a_clobbered_slot_is_never_replayed_to_another_key() {
    let (kv, store) = fresh(StoreLimits {
        shards: 1,
        ..LIMITS
    });
    let a = ticket(store.claim(&id(1), &FP, 7, 0).unwrap().value);
    let b = ticket(store.claim(&id(2), &FP, 8, 0).unwrap().value);
    store
        .complete(&a, 200, Completion::Response(&response("alice")), 10)
        .unwrap();
    // Simulate the residual race: b's response lands in a's slot.
    let slot_a = format!("resetguard/v1/1/shard/0/slot/{}", a.slot);
    kv.set(
        &slot_a,
        &response("bob").encode(&b.identity, b.owner).unwrap(),
        0,
    )
    .unwrap();
    // The slot lost its response in a race: not replayable, and said so (not "too large").
    assert_eq!(
        store.claim(&id(1), &FP, 9, 20).unwrap().value,
        Claim::NotReplayable {
            status: 200,
            reason: Unreplayable::NotStorable
        }
    );
}

#[test]
fn two_workers_racing_for_one_key_never_both_run_it() {
    let (kv, a) = fresh(LIMITS);
    let b = Rc::new(worker(&kv, LIMITS));
    let b_result = Rc::new(RefCell::new(None));
    {
        let (b, b_result) = (b.clone(), b_result.clone());
        // Between a's read and a's CAS write, b claims the same key.
        kv.on_before_set(move |_key| {
            if b_result.borrow().is_none() {
                *b_result.borrow_mut() = Some(b.claim(&id(1), &FP, 2, 0).unwrap());
            }
        });
    }
    let a_report = a.claim(&id(1), &FP, 1, 0).unwrap();
    kv.clear_hook();
    assert!(matches!(
        b_result.borrow().as_ref().unwrap().value,
        Claim::Claimed(_)
    ));
    assert_eq!(a_report.value, Claim::InFlight);
    assert_eq!(a_report.cas_conflicts, 1);
}

#[test]
fn a_cas_storm_exhausts_attempts_and_answers_busy() {
    let (kv, store) = fresh(LIMITS);
    let kv2 = kv.clone();
    // Another writer touches the same shard before every write: no CAS can succeed.
    kv.on_before_set(move |key| {
        let (value, _) = kv2.get(key).unwrap().unwrap();
        kv2.set(key, &value, 0).unwrap();
    });
    let report = store.claim(&id(1), &FP, 1, 0).unwrap();
    assert_eq!(report.value, Claim::Busy);
    assert_eq!(report.cas_conflicts, CAS_ATTEMPTS);
    kv.clear_hook();
    assert!(matches!(
        store.claim(&id(1), &FP, 1, 0).unwrap().value,
        Claim::Claimed(_)
    ));
}

/// The storm's choices, generated by proptest (so a failing storm shrinks to a short one): each
/// draw takes the next number, and an exhausted script answers 0.
struct Choices {
    script: Vec<u32>,
    at: usize,
}

impl Choices {
    fn next(&mut self, n: u64) -> u64 {
        let drawn = self.script.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        u64::from(drawn) % n
    }
}

#[derive(Default)]
struct Ledger {
    /// identity -> owner of the live claim
    live: HashMap<Identity, u64>,
    completed: HashSet<Identity>,
    executions: HashMap<Identity, u32>,
    conflicts: u32,
}

/// One random operation by one worker; checks the invariants on every answer.
fn step(
    store: &ShardedStore<Rc<MemoryKv>>,
    ledger: &RefCell<Ledger>,
    rng: &RefCell<Choices>,
    owner: u64,
) {
    let (key, op) = {
        let mut rng = rng.borrow_mut();
        (rng.next(40) as u32, rng.next(3))
    };
    let identity = id(key);
    let live = ledger.borrow().live.get(&identity).copied();
    match (op, live) {
        (1, Some(holder)) => {
            let t = Ticket {
                identity,
                fingerprint: FP,
                owner: holder,
                slot: 0,
                lock_deadline_ms: 0,
                place: Place::Local,
            };
            let slot = slot_of(store, &identity, holder);
            let report = store
                .complete(
                    &Ticket { slot, ..t },
                    200,
                    Completion::Response(&response(&format!("{key}"))),
                    0,
                )
                .unwrap();
            let mut l = ledger.borrow_mut();
            l.conflicts += report.cas_conflicts;
            if report.value == Finish::Stored {
                l.live.remove(&identity);
                l.completed.insert(identity);
            }
        }
        (2, Some(holder)) if !ledger.borrow().completed.contains(&identity) => {
            let report = store
                .release(
                    &Ticket {
                        identity,
                        fingerprint: FP,
                        owner: holder,
                        slot: 0,
                        lock_deadline_ms: 0,
                        place: Place::Local,
                    },
                    0,
                )
                .unwrap();
            if report.value == Finish::Released {
                ledger.borrow_mut().live.remove(&identity);
            }
        }
        _ => {
            let report = store.claim(&identity, &FP, owner, 0).unwrap();
            let mut l = ledger.borrow_mut();
            l.conflicts += report.cas_conflicts;
            match report.value {
                Claim::Claimed(_) => {
                    assert!(
                        !l.live.contains_key(&identity),
                        "two live claims for key {key}"
                    );
                    assert!(
                        !l.completed.contains(&identity),
                        "a completed key ran again: {key}"
                    );
                    l.live.insert(identity, owner);
                    *l.executions.entry(identity).or_default() += 1;
                }
                Claim::Replay(r) => {
                    assert!(l.completed.contains(&identity));
                    assert_eq!(
                        r.body,
                        format!("{key}").into_bytes(),
                        "replayed another key's response"
                    );
                }
                Claim::InFlight => assert!(l.live.contains_key(&identity)),
                Claim::Busy | Claim::Full { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

fn slot_of(store: &ShardedStore<Rc<MemoryKv>>, identity: &Identity, owner: u64) -> u16 {
    // The test ledger keeps owners only; read the slot back like a ticket would carry it.
    let _ = store;
    let kv = store.kv();
    for shard in 0..LIMITS.shards {
        let raw = kv
            .get(&format!("resetguard/v1/{}/shard/{shard}", LIMITS.shards))
            .unwrap()
            .unwrap()
            .0;
        let index = super::index::ShardIndex::decode(&raw).unwrap();
        if let Some(e) = index.claim_of(identity, owner) {
            return e.slot;
        }
    }
    u16::MAX
}

/// 300 operations by 4 workers over 40 keys, another worker's whole operation squeezed between
/// roughly half of all reads and their CAS writes; `step` checks every answer. Returns the CAS
/// conflicts the storm produced.
fn storm(script: Vec<u32>) -> u32 {
    let kv = Rc::new(MemoryKv::default());
    let workers: Vec<Rc<ShardedStore<Rc<MemoryKv>>>> =
        (0..4).map(|_| Rc::new(worker(&kv, LIMITS))).collect();
    workers[0].init([3; 16]).unwrap();
    let ledger = Rc::new(RefCell::new(Ledger::default()));
    let rng = Rc::new(RefCell::new(Choices { script, at: 0 }));
    let owners = Rc::new(RefCell::new(1000u64));
    {
        let (workers, ledger, rng, owners) =
            (workers.clone(), ledger.clone(), rng.clone(), owners.clone());
        kv.on_before_set(move |_key| {
            let (interfere, w) = {
                let mut r = rng.borrow_mut();
                (r.next(2) == 0, r.next(4) as usize)
            };
            if interfere {
                *owners.borrow_mut() += 1;
                let owner = *owners.borrow();
                step(&workers[w], &ledger, &rng, owner);
            }
        });
    }
    for n in 0..300u64 {
        let w = rng.borrow_mut().next(4) as usize;
        step(&workers[w], &ledger, &rng, n + 1);
    }
    kv.clear_hook();
    let l = ledger.borrow();
    for (identity, runs) in &l.executions {
        if l.completed.contains(identity) {
            // Runs before completion were released ones; none after.
            assert!(*runs >= 1);
        }
    }
    l.conflicts
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

    #[test]
    fn storms_of_interleaved_workers_keep_every_invariant(
        script in proptest::collection::vec(proptest::prelude::any::<u32>(), 2_000..4_000),
    ) {
        storm(script);
    }
}

#[test]
fn a_storm_contends_for_real() {
    // The storm must produce CAS conflicts, or the property above proves little.
    let script = (0..4_000u32)
        .map(|i| i.wrapping_mul(2_654_435_761) >> 7)
        .collect();
    assert!(storm(script) > 0);
}

#[test]
fn memory_stays_bounded_under_100k_distinct_keys() {
    let limits = StoreLimits {
        shards: 8,
        entries_per_shard: 16,
        lock_timeout_ms: 100,
        ttl_ms: 500,
    };
    let (kv, store) = fresh(limits);
    let body = "x".repeat(100);
    let (mut full, mut stored) = (0, 0);
    for n in 0..100_000u32 {
        let now = u64::from(n); // 1 ms per request: entries expire as traffic flows
        match store.claim(&id(n), &FP, u64::from(n), now).unwrap().value {
            Claim::Claimed(t) => {
                assert_eq!(
                    store
                        .complete(&t, 200, Completion::Response(&response(&body)), now)
                        .unwrap()
                        .value,
                    Finish::Stored
                );
                stored += 1;
            }
            Claim::Full { .. } => full += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(stored > 10_000 && full > 0, "stored {stored}, full {full}");
    let slots = 8 * 16;
    assert!(kv.key_count() <= 1 + 8 + slots, "{} keys", kv.key_count());
    let per_slot = 38 + 40 + body.len() + 40;
    let bound = 8 * (6 + 53 * 16) + slots * per_slot + (1 + 8 + slots) * 40 + 16;
    assert!(kv.total_bytes() <= bound, "{} > {bound}", kv.total_bytes());
}

#[test]
fn kv_errors_surface_as_store_errors() {
    struct Failing;
    impl SharedKv for Failing {
        fn get(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, KvError> {
            Ok(Some((Vec::new(), 1)))
        }
        fn set(&self, _: &str, _: &[u8], _: u32) -> Result<(), KvError> {
            Err(KvError::Unavailable("INTERNAL_FAILURE"))
        }
    }
    let store = ShardedStore::new(Failing, LIMITS);
    assert_eq!(
        store.claim(&id(1), &FP, 1, 0),
        Err(StoreError::Unavailable("INTERNAL_FAILURE"))
    );
    assert_eq!(store.seed(), Err(StoreError::NotInitialized));
}
