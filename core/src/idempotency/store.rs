//! The shared idempotency store over a `SharedKv` (Envoy shared data in production).
//! The design (claim algorithm, memory bound, races) is documented in the parent module.

use super::index::{
    Decision, Fingerprint, Identity, Peek, Reclaimed, ShardIndex, Unreplayable, NO_SLOT,
};
use super::recorded::RecordedResponse;
use super::shared_kv::{KvError, SharedKv};

/// Read-modify-CAS attempts on one shard before answering `Busy`.
pub const CAS_ATTEMPTS: u32 = 16;
/// Where the per-process hash seed lives; every worker reads the same one.
pub const SEED_KEY: &str = "resetguard/v1/seed";
pub const SEED_LEN: usize = 16;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The host has no shared data, or refused a call (the reason, for logs).
    Unavailable(&'static str),
    /// A key created at start-up is missing or unreadable.
    NotInitialized,
}

impl From<KvError> for StoreError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Unavailable(why) => StoreError::Unavailable(why),
            // Only reachable where a CAS is not retried; report it as the host refusing.
            KvError::CasMismatch => StoreError::Unavailable("CAS_MISMATCH"),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Proof that this request claimed its key: what `complete` and `release` need.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub identity: Identity,
    pub fingerprint: Fingerprint,
    pub owner: u64,
    pub slot: u16,
    /// The claim's lock deadline as written at claim time (only its owner can move it).
    pub lock_deadline_ms: u64,
    /// Where the claim lives: the local store, or etcd at this key revision (what a completion
    /// or release must find unchanged).
    pub place: Place,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Local,
    Etcd { revision: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This request owns the key: send it upstream, then `complete` or `release`.
    Claimed(Ticket),
    InFlight,
    PayloadMismatch,
    Replay(RecordedResponse),
    /// Executed before (or may have been), without a response to replay: why, and the status the
    /// upstream sent (0: none came back).
    NotReplayable {
        status: u16,
        reason: Unreplayable,
    },
    Full {
        retry_after_s: u32,
    },
    /// CAS attempts exhausted: too many concurrent writers on this shard.
    Busy,
}

/// What a completed key keeps: the upstream's response, or why there is none to replay.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Completion<'a> {
    Response(&'a RecordedResponse),
    Unreplayable(Unreplayable),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    Stored,
    /// The key is completed (never re-executed within TTL) but its response is not replayable.
    StoredNotReplayable,
    Released,
    /// The claim was gone (its lock expired and someone reclaimed it): nothing written.
    Lost,
    Busy,
}

impl Finish {
    /// The claim is still in flight: it frees after `lock_timeout_ms`.
    pub fn is_unfinished(self) -> bool {
        matches!(self, Finish::Lost | Finish::Busy)
    }
}

/// An operation's answer plus what it observed, for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report<T> {
    pub value: T,
    pub reclaimed: Reclaimed,
    pub cas_conflicts: u32,
}

/// The policy's view of a store; an external store can implement it without touching the policy.
pub trait IdempotencyStore {
    /// The secret that keys identities and fingerprints; the same for every worker.
    fn seed(&self) -> StoreResult<[u8; SEED_LEN]>;
    /// A read-only look at the key before its body is known (lets a duplicate of a request that
    /// is still in flight be answered before the proxy contacts the upstream).
    fn peek(&self, identity: &Identity, now_ms: u64) -> StoreResult<Peek>;
    fn claim(
        &self,
        identity: &Identity,
        fingerprint: &Fingerprint,
        owner: u64,
        now_ms: u64,
    ) -> StoreResult<Report<Claim>>;
    /// Completes the key: it never runs again within its TTL. `status` is the upstream's (0 when
    /// none came back); `completion` the response to replay, or why there is none.
    fn complete(
        &self,
        ticket: &Ticket,
        status: u16,
        completion: Completion<'_>,
        now_ms: u64,
    ) -> StoreResult<Report<Finish>>;
    /// Gives the key back so that a retry runs (the proxy, not the upstream, answered).
    fn release(&self, ticket: &Ticket, now_ms: u64) -> StoreResult<Report<Finish>>;
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct StoreLimits {
    pub shards: u32,
    pub entries_per_shard: usize,
    pub lock_timeout_ms: u64,
    pub ttl_ms: u64,
}

/// Sharded store: fixed shard indexes updated only by read-modify-CAS, and a fixed pool of slots.
pub struct ShardedStore<K: SharedKv> {
    kv: K,
    limits: StoreLimits,
    prefix: String,
}

/// What `init` found or created.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct InitReport {
    pub seed_created: bool,
    pub shards_created: u32,
}

impl<K: SharedKv> ShardedStore<K> {
    pub fn new(kv: K, limits: StoreLimits) -> Self {
        let shards = limits.shards.max(1);
        ShardedStore {
            kv,
            limits: StoreLimits { shards, ..limits },
            prefix: format!("resetguard/v1/{shards}"),
        }
    }

    pub fn kv(&self) -> &K {
        &self.kv
    }

    /// Creates the seed and every shard that does not exist yet. Run before traffic (on
    /// configure): a write to an absent key cannot be a CAS, so only here is one made blind.
    pub fn init(&self, fresh_seed: [u8; SEED_LEN]) -> StoreResult<InitReport> {
        let mut report = InitReport::default();
        if self.kv.get(SEED_KEY)?.is_none() {
            self.kv.set(SEED_KEY, &fresh_seed, 0)?;
            report.seed_created = true;
        }
        self.seed()?;
        let empty = ShardIndex::default().encode();
        for shard in 0..self.limits.shards {
            let key = self.shard_key(shard);
            if self.kv.get(&key)?.is_none() {
                self.kv.set(&key, &empty, 0)?;
                report.shards_created += 1;
            }
        }
        Ok(report)
    }

    fn shard_of(&self, identity: &Identity) -> u32 {
        let low = u128::from_le_bytes(*identity) as u64;
        (low % u64::from(self.limits.shards)) as u32
    }

    /// See `ShardIndex::clamp_to_horizon`: the host clock is wall time and may have jumped.
    fn clamp(&self, index: &mut ShardIndex, now_ms: u64) -> bool {
        index.clamp_to_horizon(now_ms, self.limits.lock_timeout_ms, self.limits.ttl_ms)
    }

    fn shard_key(&self, shard: u32) -> String {
        format!("{}/shard/{shard}", self.prefix)
    }

    fn slot_key(&self, shard: u32, slot: u16) -> String {
        format!("{}/shard/{shard}/slot/{slot}", self.prefix)
    }

    /// Read-modify-CAS on one shard. `change` edits the index and says whether the edit must be
    /// written for its answer to hold; expired entries are reclaimed on every write. An answer
    /// that needs no write is valid on the snapshot it was read from, even if the best-effort
    /// reclaim write loses its CAS.
    fn update<T>(
        &self,
        shard: u32,
        now_ms: u64,
        mut change: impl FnMut(&mut ShardIndex) -> (T, bool),
    ) -> StoreResult<Report<Option<T>>> {
        let key = self.shard_key(shard);
        let mut conflicts = 0;
        for _ in 0..CAS_ATTEMPTS {
            let (raw, cas) = self.kv.get(&key)?.ok_or(StoreError::NotInitialized)?;
            // A corrupt shard (not written by this format) starts over empty, by CAS like any write.
            let mut index = ShardIndex::decode(&raw).unwrap_or_default();
            let clamped = self.clamp(&mut index, now_ms);
            let reclaimed = index.reclaim(now_ms);
            let (value, must_write) = change(&mut index);
            if !must_write && !reclaimed.any() && !clamped {
                return Ok(Report {
                    value: Some(value),
                    reclaimed: Reclaimed::default(),
                    cas_conflicts: conflicts,
                });
            }
            // `cas` is never 0 for an existing Envoy key; guard anyway so a write is never blind.
            match self.kv.set(&key, &index.encode(), cas.max(1)) {
                Ok(()) => {
                    return Ok(Report {
                        value: Some(value),
                        reclaimed,
                        cas_conflicts: conflicts,
                    })
                }
                Err(KvError::CasMismatch) if !must_write => {
                    return Ok(Report {
                        value: Some(value),
                        reclaimed: Reclaimed::default(),
                        cas_conflicts: conflicts + 1,
                    })
                }
                Err(KvError::CasMismatch) => conflicts += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Report {
            value: None,
            reclaimed: Reclaimed::default(),
            cas_conflicts: conflicts,
        })
    }

    fn load_replay(
        &self,
        shard: u32,
        slot: u16,
        identity: &Identity,
        owner: u64,
        status: u16,
    ) -> StoreResult<Claim> {
        let stored = self
            .kv
            .get(&self.slot_key(shard, slot))?
            .and_then(|(raw, _)| RecordedResponse::decode(&raw, identity, owner));
        Ok(match stored {
            Some(response) => Claim::Replay(response),
            // The slot was reused or clobbered in a race: the response is lost, not replayable.
            None => Claim::NotReplayable {
                status,
                reason: Unreplayable::NotStorable,
            },
        })
    }
}

impl<K: SharedKv> IdempotencyStore for ShardedStore<K> {
    fn seed(&self) -> StoreResult<[u8; SEED_LEN]> {
        let (raw, _) = self.kv.get(SEED_KEY)?.ok_or(StoreError::NotInitialized)?;
        raw.try_into().map_err(|_| StoreError::NotInitialized)
    }

    fn peek(&self, identity: &Identity, now_ms: u64) -> StoreResult<Peek> {
        let key = self.shard_key(self.shard_of(identity));
        let (raw, _) = self.kv.get(&key)?.ok_or(StoreError::NotInitialized)?;
        Ok(ShardIndex::peek_encoded(
            &raw,
            identity,
            now_ms,
            (self.limits.lock_timeout_ms, self.limits.ttl_ms),
            self.limits.entries_per_shard,
        ))
    }

    fn claim(
        &self,
        identity: &Identity,
        fingerprint: &Fingerprint,
        owner: u64,
        now_ms: u64,
    ) -> StoreResult<Report<Claim>> {
        let shard = self.shard_of(identity);
        let limits = self.limits;
        let report = self.update(shard, now_ms, |index| {
            let decision = index.decide(
                identity,
                fingerprint,
                owner,
                now_ms,
                limits.lock_timeout_ms,
                limits.entries_per_shard,
            );
            (decision, matches!(decision, Decision::Claim { .. }))
        })?;
        let claim = match report.value {
            None => Claim::Busy,
            Some(Decision::Claim { slot }) => Claim::Claimed(Ticket {
                identity: *identity,
                fingerprint: *fingerprint,
                owner,
                slot,
                lock_deadline_ms: now_ms.saturating_add(limits.lock_timeout_ms),
                place: Place::Local,
            }),
            Some(Decision::InFlight) => Claim::InFlight,
            Some(Decision::PayloadMismatch) => Claim::PayloadMismatch,
            Some(Decision::NotReplayable { status, reason }) => {
                Claim::NotReplayable { status, reason }
            }
            Some(Decision::Full { retry_after_s }) => Claim::Full { retry_after_s },
            Some(Decision::Replay {
                slot,
                owner: writer,
                status,
            }) => self.load_replay(shard, slot, identity, writer, status)?,
        };
        Ok(Report {
            value: claim,
            reclaimed: report.reclaimed,
            cas_conflicts: report.cas_conflicts,
        })
    }

    fn complete(
        &self,
        ticket: &Ticket,
        status: u16,
        completion: Completion<'_>,
        now_ms: u64,
    ) -> StoreResult<Report<Finish>> {
        let shard = self.shard_of(&ticket.identity);
        let limits = self.limits;
        let mut conflicts = 0;
        let mut reclaimed = Reclaimed::default();
        let (encoded, unreplayable) = match completion {
            Completion::Response(r) => match r.encode(&ticket.identity, ticket.owner) {
                // More headers than the slot format can count.
                None => (None, Some(Unreplayable::TooLarge)),
                Some(_) if ticket.slot == NO_SLOT => (None, Some(Unreplayable::NotStorable)),
                encoded => (encoded, None),
            },
            Completion::Unreplayable(why) => (None, Some(why)),
        };
        let replayable = unreplayable.is_none();
        // A claim whose own deadline is at least half a lock timeout away needs no check: only its
        // owner moves that deadline, and a reclaim needs a clock past it, so the read below would
        // find it held and change nothing. (A wall clock set back by more than that after a
        // reclaim could fool this; the slot is authenticated by identity and owner, so the other
        // key would lose its replay, never get ours.)
        let young = ticket.lock_deadline_ms.saturating_sub(now_ms) >= limits.lock_timeout_ms / 2;
        if let (Some(value), true) = (&encoded, replayable) {
            // Before writing the slot, make sure the claim is held and will stay held for a while:
            // an expired claim could be reclaimed and its slot handed to another key meanwhile.
            let held = if young {
                Report {
                    value: Some(true),
                    reclaimed: Reclaimed::default(),
                    cas_conflicts: 0,
                }
            } else {
                self.update(shard, now_ms, |index| {
                    let deadline = match index.claim_of(&ticket.identity, ticket.owner) {
                        None => return (false, false),
                        Some(e) => match e.state {
                            super::index::EntryState::InFlight { lock_deadline_ms } => {
                                lock_deadline_ms
                            }
                            _ => return (false, false),
                        },
                    };
                    if deadline.saturating_sub(now_ms) >= limits.lock_timeout_ms / 2 {
                        return (true, false);
                    }
                    let renewed = index.renew(
                        &ticket.identity,
                        ticket.owner,
                        now_ms.saturating_add(limits.lock_timeout_ms),
                    );
                    (renewed, renewed)
                })?
            };
            conflicts += held.cas_conflicts;
            reclaimed = held.reclaimed;
            match held.value {
                None => return Ok(finish(Finish::Busy, reclaimed, conflicts)),
                Some(false) => return Ok(finish(Finish::Lost, reclaimed, conflicts)),
                Some(true) => {}
            }
            self.kv.set(&self.slot_key(shard, ticket.slot), value, 0)?;
        }
        let expiry = now_ms.saturating_add(limits.ttl_ms);
        let done = self.update(shard, now_ms, |index| {
            let ok = index.complete(&ticket.identity, ticket.owner, status, expiry, unreplayable);
            (ok, ok)
        })?;
        let outcome = match done.value {
            None => Finish::Busy,
            Some(false) => Finish::Lost,
            Some(true) if replayable => Finish::Stored,
            Some(true) => Finish::StoredNotReplayable,
        };
        Ok(finish(
            outcome,
            add(reclaimed, done.reclaimed),
            conflicts + done.cas_conflicts,
        ))
    }

    fn release(&self, ticket: &Ticket, now_ms: u64) -> StoreResult<Report<Finish>> {
        let shard = self.shard_of(&ticket.identity);
        let done = self.update(shard, now_ms, |index| {
            let ok = index.release(&ticket.identity, ticket.owner);
            (ok, ok)
        })?;
        let outcome = match done.value {
            None => Finish::Busy,
            Some(false) => Finish::Lost,
            Some(true) => Finish::Released,
        };
        Ok(finish(outcome, done.reclaimed, done.cas_conflicts))
    }
}

fn finish(value: Finish, reclaimed: Reclaimed, cas_conflicts: u32) -> Report<Finish> {
    Report {
        value,
        reclaimed,
        cas_conflicts,
    }
}

fn add(a: Reclaimed, b: Reclaimed) -> Reclaimed {
    Reclaimed {
        expired: a.expired + b.expired,
        lock_expired: a.lock_expired + b.lock_expired,
    }
}
