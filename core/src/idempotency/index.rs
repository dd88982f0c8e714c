//! One shard's index: a compact binary list of claimed keys, and the pure state transitions the
//! store applies to it between a shared-data read and its CAS write. No I/O, no clock: time is a
//! parameter, so every transition is unit tested natively.
//!
//! Layout: `RGI1`, entry count (u16 LE), then fixed 53-byte entries:
//! identity (16) | fingerprint (16) | owner (u64) | slot (u16) | status (u16) | kind (u8) | time (u64).
//! `status` is the upstream's (0: no upstream response was received); `kind` is 1 in flight,
//! 2 completed and replayable, 3..=7 completed without a replayable copy, by [`Unreplayable`].

pub type Identity = [u8; 16];
pub type Fingerprint = [u8; 16];

const MAGIC: &[u8; 4] = b"RGI1";
const HEADER_LEN: usize = 6;
pub const ENTRY_LEN: usize = 53;
/// Slot value of an entry that holds no stored response.
pub const NO_SLOT: u16 = u16::MAX;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// Claimed by a request that is still upstream; reclaimable after the lock deadline.
    InFlight { lock_deadline_ms: u64 },
    /// Executed (or may have been): never again until `expiry_ms`. The response is in the
    /// entry's slot when `replayable` is `None`; else why there is none.
    Completed {
        expiry_ms: u64,
        unreplayable: Option<Unreplayable>,
    },
}

/// Why a completed key has no response to replay: each is a problem type of its own.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Unreplayable {
    /// The response exceeded `max_response_body_bytes` (or 16 KiB of headers).
    TooLarge,
    /// The upstream's response could not be kept as it was (it had trailers, or the host did not
    /// hand over a body chunk).
    NotStorable,
    /// The response started but was cut off before its end by the upstream side.
    CutOff,
    /// The request reached the upstream and no response came back (a reset after sending, a
    /// timeout): whether it was applied is unknown.
    OutcomeUnknown,
    /// The client left while the upstream had the request (or during its response).
    ClientLeft,
}

impl Unreplayable {
    pub const ALL: [Unreplayable; 5] = [
        Unreplayable::TooLarge,
        Unreplayable::NotStorable,
        Unreplayable::CutOff,
        Unreplayable::OutcomeUnknown,
        Unreplayable::ClientLeft,
    ];

    /// The entry's kind byte.
    pub fn kind(self) -> u8 {
        match self {
            Unreplayable::TooLarge => 3,
            Unreplayable::CutOff => 4,
            Unreplayable::OutcomeUnknown => 5,
            Unreplayable::ClientLeft => 6,
            Unreplayable::NotStorable => 7,
        }
    }

    pub fn of_kind(kind: u8) -> Option<Unreplayable> {
        Unreplayable::ALL.into_iter().find(|u| u.kind() == kind)
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub identity: Identity,
    pub fingerprint: Fingerprint,
    /// The claiming request's unguessable token; kept after completion to authenticate the slot.
    pub owner: u64,
    pub slot: u16,
    /// The upstream status once completed (0 while in flight).
    pub status: u16,
    pub state: EntryState,
}

impl Entry {
    fn expired(&self, now_ms: u64) -> bool {
        match self.state {
            EntryState::InFlight { lock_deadline_ms } => lock_deadline_ms <= now_ms,
            EntryState::Completed { expiry_ms, .. } => expiry_ms <= now_ms,
        }
    }

    fn time(&self) -> u64 {
        match self.state {
            EntryState::InFlight { lock_deadline_ms } => lock_deadline_ms,
            EntryState::Completed { expiry_ms, .. } => expiry_ms,
        }
    }

    fn is_claim_of(&self, identity: &Identity, owner: u64) -> bool {
        self.identity == *identity
            && self.owner == owner
            && matches!(self.state, EntryState::InFlight { .. })
    }
}

/// What reclaiming dropped: completed entries past their TTL, and claims whose worker vanished.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub expired: u32,
    pub lock_expired: u32,
}

impl Reclaimed {
    pub fn any(&self) -> bool {
        self.expired + self.lock_expired > 0
    }
}

/// The answer to "may this request run?", read off one consistent snapshot of the shard.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new in-flight entry was added (the caller must CAS-write the index for it to count).
    Claim {
        slot: u16,
    },
    InFlight,
    PayloadMismatch,
    Replay {
        slot: u16,
        owner: u64,
        status: u16,
    },
    NotReplayable {
        status: u16,
        reason: Unreplayable,
    },
    Full {
        retry_after_s: u32,
    },
}

/// What a read-only look at a shard says about a key before its body is known.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Peek {
    Absent,
    InFlight,
    Completed,
    Full { retry_after_s: u32 },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardIndex {
    pub entries: Vec<Entry>,
}

impl ShardIndex {
    /// Decodes a shard value; an empty value is an empty shard; `None` if corrupt.
    pub fn decode(raw: &[u8]) -> Option<ShardIndex> {
        let body = entries_of(raw)?;
        let mut entries = Vec::with_capacity(body.len() / ENTRY_LEN);
        for raw_entry in body.chunks_exact(ENTRY_LEN) {
            entries.push(decode_entry(raw_entry)?);
        }
        Some(ShardIndex { entries })
    }

    /// `peek` straight from a shard value: the answer `decode` (a corrupt value reads as empty),
    /// `clamp_to_horizon`, `reclaim` then `peek` would give, without building the index. Every
    /// keyed request peeks; decoding a shard of ~150 entries to do it cost ~30,000 instructions.
    pub fn peek_encoded(
        raw: &[u8],
        identity: &Identity,
        now_ms: u64,
        horizons: (u64, u64),
        capacity: usize,
    ) -> Peek {
        let (lock_timeout_ms, ttl_ms) = horizons;
        let body = entries_of(raw)
            .filter(|body| {
                body.chunks_exact(ENTRY_LEN)
                    .all(|e| matches!(e.get(KIND_AT), Some(1..=7)))
            })
            .unwrap_or_default();
        let mut live = 0usize;
        let mut soonest: Option<u64> = None;
        for e in body.chunks_exact(ENTRY_LEN) {
            let in_flight = e.get(KIND_AT) == Some(&1);
            let horizon = if in_flight { lock_timeout_ms } else { ttl_ms };
            let deadline = e
                .get(KIND_AT + 1..)
                .and_then(<[u8]>::first_chunk::<8>)
                .map_or(0, |t| u64::from_le_bytes(*t))
                .min(now_ms.saturating_add(horizon));
            if deadline <= now_ms {
                continue; // reclaimed
            }
            if e.first_chunk::<16>() == Some(identity) {
                return if in_flight {
                    Peek::InFlight
                } else {
                    Peek::Completed
                };
            }
            live += 1;
            soonest = Some(soonest.map_or(deadline, |s| s.min(deadline)));
        }
        if live >= capacity {
            Peek::Full {
                retry_after_s: retry_after_s(soonest.unwrap_or(now_ms), now_ms),
            }
        } else {
            Peek::Absent
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let count = u16::try_from(self.entries.len()).unwrap_or(u16::MAX);
        let mut out = vec![0u8; HEADER_LEN + usize::from(count) * ENTRY_LEN];
        if let Some((magic, rest)) = out.split_first_chunk_mut::<4>() {
            *magic = *MAGIC;
            if let Some((count_bytes, body)) = rest.split_first_chunk_mut::<2>() {
                *count_bytes = count.to_le_bytes();
                // Fixed-size fields written in place: no capacity check or call per field (a
                // shard holds hundreds of entries, encoded on every claim and completion).
                for (e, raw) in self.entries.iter().zip(body.chunks_exact_mut(ENTRY_LEN)) {
                    encode_entry(e, raw);
                }
            }
        }
        out
    }

    /// Drops entries past their TTL or lock deadline (done on every shard write).
    /// Pulls deadlines that lie further ahead than any entry could have been given back to the
    /// longest legal horizon. The host clock is wall time: an entry written while it ran ahead
    /// would otherwise hold its shard's capacity (or its lock) for the size of the jump once the
    /// clock is corrected. Returns whether anything changed.
    pub fn clamp_to_horizon(&mut self, now_ms: u64, lock_timeout_ms: u64, ttl_ms: u64) -> bool {
        let mut changed = false;
        for e in &mut self.entries {
            let (deadline, horizon) = match &mut e.state {
                EntryState::InFlight { lock_deadline_ms } => (lock_deadline_ms, lock_timeout_ms),
                EntryState::Completed { expiry_ms, .. } => (expiry_ms, ttl_ms),
            };
            let latest = now_ms.saturating_add(horizon);
            if *deadline > latest {
                *deadline = latest;
                changed = true;
            }
        }
        changed
    }

    pub fn reclaim(&mut self, now_ms: u64) -> Reclaimed {
        let mut reclaimed = Reclaimed::default();
        self.entries.retain(|e| {
            if !e.expired(now_ms) {
                return true;
            }
            match e.state {
                EntryState::InFlight { .. } => reclaimed.lock_expired += 1,
                EntryState::Completed { .. } => reclaimed.expired += 1,
            }
            false
        });
        reclaimed
    }

    /// Decides for a request and, when it may run, adds its in-flight entry.
    /// Call after `reclaim` so that expired entries neither match nor take capacity.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &mut self,
        identity: &Identity,
        fingerprint: &Fingerprint,
        owner: u64,
        now_ms: u64,
        lock_timeout_ms: u64,
        capacity: usize,
    ) -> Decision {
        if let Some(e) = self.entries.iter().find(|e| e.identity == *identity) {
            if e.fingerprint != *fingerprint {
                return Decision::PayloadMismatch;
            }
            return match e.state {
                EntryState::InFlight { .. } => Decision::InFlight,
                EntryState::Completed {
                    unreplayable: None, ..
                } if e.slot != NO_SLOT => Decision::Replay {
                    slot: e.slot,
                    owner: e.owner,
                    status: e.status,
                },
                EntryState::Completed { unreplayable, .. } => Decision::NotReplayable {
                    status: e.status,
                    reason: unreplayable.unwrap_or(Unreplayable::NotStorable),
                },
            };
        }
        let slot = match self.free_slot(capacity) {
            Some(slot) if self.entries.len() < capacity => slot,
            _ => {
                return Decision::Full {
                    retry_after_s: self.retry_after_s(now_ms),
                }
            }
        };
        self.entries.push(Entry {
            identity: *identity,
            fingerprint: *fingerprint,
            owner,
            slot,
            status: 0,
            state: EntryState::InFlight {
                lock_deadline_ms: now_ms.saturating_add(lock_timeout_ms),
            },
        });
        Decision::Claim { slot }
    }

    /// The key's state without changing anything (call after `reclaim` on a private copy).
    pub fn peek(&self, identity: &Identity, now_ms: u64, capacity: usize) -> Peek {
        match self.entries.iter().find(|e| e.identity == *identity) {
            Some(e) => match e.state {
                EntryState::InFlight { .. } => Peek::InFlight,
                EntryState::Completed { .. } => Peek::Completed,
            },
            None if self.entries.len() >= capacity => Peek::Full {
                retry_after_s: self.retry_after_s(now_ms),
            },
            None => Peek::Absent,
        }
    }

    /// Seconds until the shard's next entry frees, clamped to 1..=60.
    fn retry_after_s(&self, now_ms: u64) -> u32 {
        let soonest = self.entries.iter().map(Entry::time).min().unwrap_or(now_ms);
        retry_after_s(soonest, now_ms)
    }

    /// The lowest slot in `0..capacity` no entry holds (slots stay bounded by capacity).
    /// One pass over the entries into a bitmap: testing each candidate slot against every entry
    /// was quadratic (about 150,000 wasm instructions per claim on a shard of 150 entries).
    fn free_slot(&self, capacity: usize) -> Option<u16> {
        let limit = capacity.min(usize::from(NO_SLOT));
        let mut used = vec![0u64; limit.div_ceil(64)];
        for e in &self.entries {
            let slot = usize::from(e.slot);
            if let Some(word) = used.get_mut(slot / 64) {
                *word |= 1 << (slot % 64);
            }
        }
        let (word, bits) = used.iter().enumerate().find(|(_, w)| **w != u64::MAX)?;
        let slot = word * 64 + bits.trailing_ones() as usize;
        u16::try_from(slot).ok().filter(|s| usize::from(*s) < limit)
    }

    /// The claim this request holds, if it still holds it.
    pub fn claim_of(&self, identity: &Identity, owner: u64) -> Option<&Entry> {
        self.entries.iter().find(|e| e.is_claim_of(identity, owner))
    }

    /// Pushes a held claim's lock deadline out; false if the claim is gone.
    pub fn renew(&mut self, identity: &Identity, owner: u64, deadline_ms: u64) -> bool {
        match self
            .entries
            .iter_mut()
            .find(|e| e.is_claim_of(identity, owner))
        {
            Some(e) => {
                e.state = EntryState::InFlight {
                    lock_deadline_ms: deadline_ms,
                };
                true
            }
            None => false,
        }
    }

    /// Turns a held claim into a completed entry (its response in the slot, or why it has none);
    /// false if the claim is gone.
    pub fn complete(
        &mut self,
        identity: &Identity,
        owner: u64,
        status: u16,
        expiry_ms: u64,
        unreplayable: Option<Unreplayable>,
    ) -> bool {
        match self
            .entries
            .iter_mut()
            .find(|e| e.is_claim_of(identity, owner))
        {
            Some(e) => {
                e.status = status;
                if unreplayable.is_some() {
                    e.slot = NO_SLOT;
                }
                e.state = EntryState::Completed {
                    expiry_ms,
                    unreplayable,
                };
                true
            }
            None => false,
        }
    }

    /// Removes a held claim so the key can run again; false if the claim is gone.
    pub fn release(&mut self, identity: &Identity, owner: u64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| !e.is_claim_of(identity, owner));
        self.entries.len() != before
    }
}

fn encode_entry(e: &Entry, raw: &mut [u8]) {
    let (kind, time) = match e.state {
        EntryState::InFlight { lock_deadline_ms } => (1u8, lock_deadline_ms),
        EntryState::Completed {
            expiry_ms,
            unreplayable: None,
        } => (2, expiry_ms),
        EntryState::Completed {
            expiry_ms,
            unreplayable: Some(why),
        } => (why.kind(), expiry_ms),
    };
    let Some((identity, rest)) = raw.split_first_chunk_mut::<16>() else {
        return;
    };
    *identity = e.identity;
    let Some((fingerprint, rest)) = rest.split_first_chunk_mut::<16>() else {
        return;
    };
    *fingerprint = e.fingerprint;
    let Some((owner, rest)) = rest.split_first_chunk_mut::<8>() else {
        return;
    };
    *owner = e.owner.to_le_bytes();
    let Some((slot, rest)) = rest.split_first_chunk_mut::<2>() else {
        return;
    };
    *slot = e.slot.to_le_bytes();
    let Some((status, rest)) = rest.split_first_chunk_mut::<2>() else {
        return;
    };
    *status = e.status.to_le_bytes();
    let Some((kind_byte, rest)) = rest.split_first_mut() else {
        return;
    };
    *kind_byte = kind;
    if let Some(time_bytes) = rest.first_chunk_mut::<8>() {
        *time_bytes = time.to_le_bytes();
    }
}

/// Offset of an entry's kind byte (1 in flight, 2 completed, 3..=7 completed unreplayable); its
/// deadline (u64) follows.
const KIND_AT: usize = 44;

fn retry_after_s(soonest_ms: u64, now_ms: u64) -> u32 {
    soonest_ms
        .saturating_sub(now_ms)
        .div_ceil(1000)
        .clamp(1, 60) as u32
}

/// The entries of a shard value (`Some(&[])` when empty); `None` if the header or length is off.
fn entries_of(raw: &[u8]) -> Option<&[u8]> {
    if raw.is_empty() {
        return Some(raw);
    }
    if raw.get(..4)? != MAGIC {
        return None;
    }
    let count = usize::from(u16::from_le_bytes(raw.get(4..6)?.try_into().ok()?));
    let body = raw.get(HEADER_LEN..)?;
    (body.len() == count.checked_mul(ENTRY_LEN)?).then_some(body)
}

fn decode_entry(raw: &[u8]) -> Option<Entry> {
    let array16 = |at: usize| -> Option<[u8; 16]> { raw.get(at..at + 16)?.try_into().ok() };
    let u64_at = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(raw.get(at..at + 8)?.try_into().ok()?))
    };
    let u16_at = |at: usize| -> Option<u16> {
        Some(u16::from_le_bytes(raw.get(at..at + 2)?.try_into().ok()?))
    };
    let time = u64_at(KIND_AT + 1)?;
    let state = match raw.get(KIND_AT)? {
        1 => EntryState::InFlight {
            lock_deadline_ms: time,
        },
        2 => EntryState::Completed {
            expiry_ms: time,
            unreplayable: None,
        },
        kind => EntryState::Completed {
            expiry_ms: time,
            unreplayable: Some(Unreplayable::of_kind(*kind)?),
        },
    };
    Some(Entry {
        identity: array16(0)?,
        fingerprint: array16(16)?,
        owner: u64_at(32)?,
        slot: u16_at(40)?,
        status: u16_at(42)?,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: Identity = [1; 16];
    const ID_B: Identity = [2; 16];
    const FP: Fingerprint = [9; 16];
    const OTHER_FP: Fingerprint = [8; 16];

    #[test]
    fn round_trips_and_rejects_corruption() {
        let mut index = ShardIndex::default();
        assert_eq!(
            index.decide(&ID_A, &FP, 7, 1000, 500, 4),
            Decision::Claim { slot: 0 }
        );
        assert_eq!(
            index.decide(&ID_B, &FP, 8, 1000, 500, 4),
            Decision::Claim { slot: 1 }
        );
        assert!(index.complete(&ID_B, 8, 201, 9000, None));
        let id_c = [3; 16];
        index.decide(&id_c, &FP, 9, 1000, 500, 4);
        assert!(index.complete(&id_c, 9, 500, 9000, Some(Unreplayable::TooLarge)));
        let raw = index.encode();
        assert_eq!(raw.len(), HEADER_LEN + 3 * ENTRY_LEN);
        // The documented layout, byte for byte: workers of one process share it.
        let b = &raw[HEADER_LEN + ENTRY_LEN..HEADER_LEN + 2 * ENTRY_LEN];
        assert_eq!((&raw[..4], &raw[4..6]), (&b"RGI1"[..], &[3u8, 0][..]));
        assert_eq!((&b[..16], &b[16..32]), (&ID_B[..], &FP[..]));
        assert_eq!(&b[32..44], &[8, 0, 0, 0, 0, 0, 0, 0, 1, 0, 201, 0]);
        assert_eq!((b[44], &b[45..]), (2, &9000u64.to_le_bytes()[..]));
        assert_eq!(raw[HEADER_LEN + 44], 1);
        assert_eq!(raw[HEADER_LEN + 2 * ENTRY_LEN + 44], 3);
        assert_eq!(ShardIndex::decode(&raw), Some(index));
        assert_eq!(ShardIndex::decode(b""), Some(ShardIndex::default()));
        for cut in 1..raw.len() {
            assert_eq!(ShardIndex::decode(&raw[..cut]), None, "cut {cut}");
        }
        let mut bad_kind = raw.clone();
        bad_kind[HEADER_LEN + 44] = 0;
        assert_eq!(ShardIndex::decode(&bad_kind), None);
    }

    #[test]
    fn deadlines_from_a_clock_that_ran_ahead_are_pulled_back() {
        let year = 365 * 86_400_000;
        let mut index = ShardIndex::default();
        // Claimed and completed while the wall clock was a year ahead.
        assert_eq!(
            index.decide(&ID_A, &FP, 7, year, 500, 4),
            Decision::Claim { slot: 0 }
        );
        assert_eq!(
            index.decide(&ID_B, &FP, 8, year, 500, 4),
            Decision::Claim { slot: 1 }
        );
        assert!(index.complete(&ID_B, 8, 201, year + 9_000, None));
        // The clock is corrected: without clamping both would live for another year.
        assert!(index.clamp_to_horizon(1_000, 500, 9_000));
        assert!(!index.clamp_to_horizon(1_000, 500, 9_000), "idempotent");
        let reclaimed = index.reclaim(10_001);
        assert_eq!((reclaimed.lock_expired, reclaimed.expired), (1, 1));
        assert!(index.entries.is_empty());
    }

    #[test]
    fn the_lifecycle_of_a_key() {
        let mut index = ShardIndex::default();
        assert_eq!(
            index.decide(&ID_A, &FP, 7, 1000, 500, 4),
            Decision::Claim { slot: 0 }
        );
        assert_eq!(
            index.decide(&ID_A, &FP, 8, 1001, 500, 4),
            Decision::InFlight
        );
        assert_eq!(
            index.decide(&ID_A, &OTHER_FP, 8, 1001, 500, 4),
            Decision::PayloadMismatch
        );
        assert!(!index.complete(&ID_A, 8, 200, 5000, None), "not the owner");
        assert!(index.complete(&ID_A, 7, 201, 5000, None));
        assert_eq!(
            index.decide(&ID_A, &FP, 9, 4999, 500, 4),
            Decision::Replay {
                slot: 0,
                owner: 7,
                status: 201
            }
        );
        assert_eq!(
            index.decide(&ID_A, &OTHER_FP, 9, 4999, 500, 4),
            Decision::PayloadMismatch
        );
        assert!(!index.release(&ID_A, 7), "completed keys are not released");
        assert_eq!(
            index.reclaim(5000),
            Reclaimed {
                expired: 1,
                lock_expired: 0
            }
        );
        assert_eq!(
            index.decide(&ID_A, &FP, 9, 5000, 500, 4),
            Decision::Claim { slot: 0 }
        );
    }

    #[test]
    fn released_and_abandoned_claims_free_the_key() {
        let mut index = ShardIndex::default();
        index.decide(&ID_A, &FP, 7, 1000, 500, 4);
        assert!(index.release(&ID_A, 7));
        assert_eq!(
            index.decide(&ID_A, &FP, 8, 1000, 500, 4),
            Decision::Claim { slot: 0 }
        );
        assert_eq!(index.reclaim(1499), Reclaimed::default());
        assert_eq!(
            index.reclaim(1500),
            Reclaimed {
                expired: 0,
                lock_expired: 1
            }
        );
        assert!(
            !index.complete(&ID_A, 8, 200, 9000, None),
            "a reclaimed claim cannot complete"
        );
    }

    #[test]
    fn unreplayable_completions_keep_the_key_but_free_the_slot() {
        let mut index = ShardIndex::default();
        index.decide(&ID_A, &FP, 7, 1000, 500, 2);
        assert!(index.complete(&ID_A, 7, 200, 9000, Some(Unreplayable::TooLarge)));
        assert_eq!(
            index.decide(&ID_A, &FP, 8, 1000, 500, 2),
            Decision::NotReplayable {
                status: 200,
                reason: Unreplayable::TooLarge
            }
        );
        assert_eq!(
            index.decide(&ID_B, &FP, 8, 1000, 500, 2),
            Decision::Claim { slot: 0 }
        );
    }

    #[test]
    fn capacity_is_enforced_and_slots_are_reused() {
        let mut index = ShardIndex::default();
        for (i, id) in [[1u8; 16], [2; 16], [3; 16]].iter().enumerate() {
            assert_eq!(
                index.decide(id, &FP, 1, 1000, 500, 3),
                Decision::Claim { slot: i as u16 }
            );
        }
        assert_eq!(
            index.decide(&[4; 16], &FP, 1, 1000, 500, 3),
            Decision::Full { retry_after_s: 1 }
        );
        assert!(index.release(&[2; 16], 1));
        assert_eq!(
            index.decide(&[4; 16], &FP, 1, 1000, 500, 3),
            Decision::Claim { slot: 1 }
        );
        // Entries written by a config with more capacity keep their slots; new ones stay below.
        let mut shrunk = index.clone();
        shrunk.entries.retain(|e| e.slot != 0);
        assert_eq!(
            shrunk.decide(&[5; 16], &FP, 1, 1000, 500, 1),
            Decision::Full { retry_after_s: 1 }
        );
    }

    #[test]
    fn the_lowest_free_slot_is_found_across_bitmap_words() {
        let entry = |slot: u16| Entry {
            identity: [slot as u8; 16],
            fingerprint: FP,
            owner: 1,
            slot,
            status: 200,
            state: EntryState::Completed {
                expiry_ms: 9_000,
                unreplayable: (slot == NO_SLOT).then_some(Unreplayable::TooLarge),
            },
        };
        let mut index = ShardIndex {
            entries: (0..130)
                .filter(|s| *s != 64 && *s != 100)
                .map(entry)
                .collect(),
        };
        index.entries.push(entry(NO_SLOT));
        assert_eq!(index.free_slot(130), Some(64));
        index.entries.push(entry(64));
        assert_eq!(index.free_slot(130), Some(100));
        index.entries.push(entry(100));
        assert_eq!(index.free_slot(130), None);
        assert_eq!(index.free_slot(131), Some(130));
        assert_eq!(ShardIndex::default().free_slot(0), None);
    }

    const NOW: u64 = 1_000_000;
    const LOCK: u64 = 500;
    const TTL: u64 = 60_000;

    /// One generated entry: (identity byte, time kind, time offset, owner, slot, state kind).
    fn entry_of((id, when, offset, owner, slot, kind): (u8, u8, u64, u64, u16, u8)) -> Entry {
        let time = match when {
            0 => NOW - offset % 1_000,     // expired
            1 => NOW + offset % (2 * TTL), // maybe beyond its horizon
            2 => NOW + 1 + offset % LOCK,  // live in-flight range
            _ => u64::MAX - offset % 10,   // a clock that ran far ahead
        };
        Entry {
            identity: [id; 16],
            fingerprint: FP,
            owner,
            slot,
            status: 200,
            state: match kind {
                0 => EntryState::InFlight {
                    lock_deadline_ms: time,
                },
                kind => EntryState::Completed {
                    expiry_ms: time,
                    unreplayable: (kind != 1).then_some(Unreplayable::ALL[usize::from(kind) % 5]),
                },
            },
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3_000))]

        #[test]
        fn peek_encoded_answers_what_decoding_reclaiming_and_peeking_would(
            entries in proptest::collection::vec(
                (0u8..6, 0u8..4, 0u64..200_000, 0u64..100, 0u16..20, 0u8..3),
                0..12,
            ),
            // Sometimes one byte of the encoding is overwritten: a kind, the magic or the count.
            corrupt in proptest::option::weighted(
                0.1,
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
            ),
            identity in 0u8..6,
            capacity in 0usize..8,
        ) {
            let index = ShardIndex {
                entries: entries.into_iter().map(entry_of).collect(),
            };
            let mut raw = index.encode();
            if let (Some((at, byte)), false) = (corrupt, raw.is_empty()) {
                let i = at.index(raw.len());
                raw[i] = byte;
            }
            let identity = [identity; 16];
            let mut reference = ShardIndex::decode(&raw).unwrap_or_default();
            reference.clamp_to_horizon(NOW, LOCK, TTL);
            reference.reclaim(NOW);
            let answer = ShardIndex::peek_encoded(&raw, &identity, NOW, (LOCK, TTL), capacity);
            proptest::prop_assert_eq!(answer, reference.peek(&identity, NOW, capacity));
        }
    }

    #[test]
    fn peek_reports_without_changing_anything() {
        let mut index = ShardIndex::default();
        assert_eq!(index.peek(&ID_A, 1000, 1), Peek::Absent);
        index.decide(&ID_A, &FP, 7, 1000, 500, 1);
        let before = index.clone();
        assert_eq!(index.peek(&ID_A, 1000, 1), Peek::InFlight);
        assert_eq!(index.peek(&ID_B, 1000, 1), Peek::Full { retry_after_s: 1 });
        index.complete(&ID_A, 7, 200, 61_000, None);
        assert_eq!(index.peek(&ID_A, 1000, 1), Peek::Completed);
        assert_eq!(index.peek(&ID_B, 1000, 1), Peek::Full { retry_after_s: 60 });
        assert_eq!(before.entries.len(), index.entries.len());
    }

    #[test]
    fn each_reason_a_key_is_unreplayable_survives_the_encoding() {
        for (n, why) in Unreplayable::ALL.into_iter().enumerate() {
            let mut index = ShardIndex::default();
            let id = [n as u8 + 1; 16];
            index.decide(&id, &FP, 7, 1000, 500, 2);
            let status = if why == Unreplayable::OutcomeUnknown {
                0
            } else {
                201
            };
            assert!(index.complete(&id, 7, status, 9000, Some(why)));
            let mut decoded = ShardIndex::decode(&index.encode()).unwrap();
            assert_eq!(
                decoded.decide(&id, &FP, 8, 1000, 500, 2),
                Decision::NotReplayable {
                    status,
                    reason: why
                },
                "{why:?}"
            );
            let raw = index.encode();
            assert_eq!(
                ShardIndex::peek_encoded(&raw, &id, 1000, (500, 60_000), 2),
                Peek::Completed
            );
        }
    }

    #[test]
    fn renew_moves_only_a_held_claim() {
        let mut index = ShardIndex::default();
        index.decide(&ID_A, &FP, 7, 1000, 500, 2);
        assert!(!index.renew(&ID_A, 8, 5000));
        assert!(index.renew(&ID_A, 7, 5000));
        assert_eq!(index.reclaim(4999), Reclaimed::default());
        assert_eq!(index.claim_of(&ID_A, 7).map(|e| e.time()), Some(5000));
    }
}
