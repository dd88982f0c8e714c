//! The etcd store's operations as state machines over gateway calls: each `start`s with a
//! request and is fed every answer until it is done. The glue sends the requests (callouts) and
//! feeds the answers back, in whatever callback they arrive.
//!
//! * **Claim** = create-if-absent with the in-flight lease; if the key exists, its record
//!   answers (409 in flight, 422 other payload, the replay, an unreplayable completion). An
//!   answer that leaves the outcome unknown (a timeout, a 503: etcd may still commit it) is
//!   resolved by reading the key back: our owner token there means we hold it.
//! * **Settle** = complete (replace the claim at its revision with the completed record, on the
//!   retention lease) or release (delete the claim at its revision). An unknown outcome is read
//!   back too; a claim that cannot be settled now is retried until its in-flight lease would run
//!   out, and then counted lost. A claim is only ever released by a settlement that says so, so
//!   a claim whose outcome is unknown costs a 409 until its lease expires, never a second run.

use super::gateway::{self, Failure, Kv, Request};
use super::record::{Record, State};
use crate::idempotency::index::{Fingerprint, Identity, Unreplayable, NO_SLOT};
use crate::idempotency::recorded::RecordedResponse;
use crate::idempotency::store::{Claim, Finish, Place, Ticket};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The etcd key of an identity (the identity is a hash: no raw key or scope value in etcd).
pub fn key_of(prefix: &str, identity: &Identity) -> String {
    format!("{prefix}k/{}", URL_SAFE_NO_PAD.encode(identity))
}

/// What one call gave, for the store-call counters.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Ok,
    /// A transaction whose compare failed: the key was not as this operation needed it.
    Conflict,
    Failed(Failure),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress<T> {
    Send(Request),
    Done(T),
}

/// Why a claim could not be decided: the store is unavailable (`on_unavailable` applies); or the
/// in-flight lease is gone (grant another, then the same).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ClaimFailure {
    Unavailable(Failure),
    LeaseGone,
}

#[derive(Clone, Debug)]
pub struct ClaimOp {
    key: String,
    identity: Identity,
    fingerprint: Fingerprint,
    owner: u64,
    lock_deadline_ms: u64,
    /// `Some(why)` while reading back after an unknown outcome.
    reading_back: Option<Failure>,
}

fn outcome_of<T>(result: &Result<T, Failure>, conflict: bool) -> Call {
    match result {
        Ok(_) if conflict => Call::Conflict,
        Ok(_) => Call::Ok,
        Err(f) => Call::Failed(*f),
    }
}

impl ClaimOp {
    /// `lease`: the in-flight lease the claim is attached to.
    pub fn start(
        prefix: &str,
        identity: Identity,
        fingerprint: Fingerprint,
        owner: u64,
        lease: &str,
        lock_deadline_ms: u64,
    ) -> (ClaimOp, Request) {
        let key = key_of(prefix, &identity);
        let record = Record {
            fingerprint,
            owner,
            status: 0,
            state: State::InFlight,
        };
        let value = record.encode(&identity).unwrap_or_default();
        let request = gateway::claim(&key, &value, lease);
        (
            ClaimOp {
                key,
                identity,
                fingerprint,
                owner,
                lock_deadline_ms,
                reading_back: None,
            },
            request,
        )
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    fn ticket(&self, revision: u64) -> Ticket {
        Ticket {
            identity: self.identity,
            fingerprint: self.fingerprint,
            owner: self.owner,
            slot: NO_SLOT,
            lock_deadline_ms: self.lock_deadline_ms,
            place: Place::Etcd { revision },
        }
    }

    /// What an existing key's record says to this request. `ours_possible`: only a read-back
    /// after our own unanswered write can find our claim (a failed create found the key there
    /// before it); and only in flight: nothing of ours completed it yet.
    fn verdict(&self, kv: &Kv, ours_possible: bool) -> Result<Claim, ClaimFailure> {
        // Not a record this filter wrote: leave it alone and say the store cannot answer.
        let record = Record::decode(&kv.value, &self.identity)
            .ok_or(ClaimFailure::Unavailable(Failure::BadAnswer))?;
        if ours_possible && record.owner == self.owner && record.state == State::InFlight {
            // Our own claim, written by a call whose answer we did not get.
            return Ok(Claim::Claimed(self.ticket(kv.mod_revision)));
        }
        if record.fingerprint != self.fingerprint {
            return Ok(Claim::PayloadMismatch);
        }
        Ok(match record.state {
            State::InFlight => Claim::InFlight,
            State::Replayable(response) => Claim::Replay(response),
            State::Unreplayable(reason) => Claim::NotReplayable {
                status: record.status,
                reason,
            },
        })
    }

    pub fn on_answer(
        &mut self,
        status: u16,
        body: &[u8],
    ) -> (Call, Progress<Result<Claim, ClaimFailure>>) {
        match self.reading_back {
            None => {
                let txn = gateway::parse_txn(status, body);
                let call = outcome_of(&txn, txn.as_ref().is_ok_and(|t| !t.succeeded));
                let progress = match txn {
                    Ok(t) if t.succeeded => {
                        Progress::Done(Ok(Claim::Claimed(self.ticket(t.revision))))
                    }
                    Ok(t) => Progress::Done(match t.existing {
                        Some(kv) => self.verdict(&kv, false),
                        // Created and gone within one transaction cannot be: garbage.
                        None => Err(ClaimFailure::Unavailable(Failure::BadAnswer)),
                    }),
                    Err(Failure::LeaseGone) => Progress::Done(Err(ClaimFailure::LeaseGone)),
                    Err(f) if f.maybe_applied() => {
                        self.reading_back = Some(f);
                        Progress::Send(gateway::read(&self.key))
                    }
                    Err(f) => Progress::Done(Err(ClaimFailure::Unavailable(f))),
                };
                (call, progress)
            }
            Some(why) => {
                let read = gateway::parse_range(status, body);
                let call = outcome_of(&read, false);
                let decided = match read {
                    Ok(Some(kv)) => self.verdict(&kv, true),
                    // Not written (or not yet: a write etcd may still commit becomes an in-flight
                    // claim nobody settles, freed by its lease: a 409 meanwhile, never a second
                    // run).
                    Ok(None) => Err(ClaimFailure::Unavailable(why)),
                    Err(f) => Err(ClaimFailure::Unavailable(f)),
                };
                (call, Progress::Done(decided))
            }
        }
    }
}

/// A settlement's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Complete with the upstream's response (replayable) or without one (`why`).
    Complete {
        status: u16,
        response: Option<RecordedResponse>,
        why: Option<Unreplayable>,
    },
    Release,
}

/// What a settlement needs next, when it is not done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SettleWait {
    /// A retention lease (none usable, or etcd lost the one used).
    Lease,
    /// The store failed: try again later (until `give_up_at_ms`).
    Later,
}

#[derive(Clone, Debug)]
pub struct SettleOp {
    key: String,
    identity: Identity,
    fingerprint: Fingerprint,
    owner: u64,
    revision: u64,
    settle: Settle,
    /// After this the claim's in-flight lease may be gone: a completion can no longer land.
    pub give_up_at_ms: u64,
    reading_back: bool,
    /// The lease the last completion named (to tell etcd's "lease gone" apart).
    pub lease: Option<String>,
}

impl SettleOp {
    /// `None` for a ticket of the local store.
    pub fn new(
        prefix: &str,
        ticket: &Ticket,
        settle: Settle,
        give_up_at_ms: u64,
    ) -> Option<SettleOp> {
        let Place::Etcd { revision } = ticket.place else {
            return None;
        };
        Some(SettleOp {
            key: key_of(prefix, &ticket.identity),
            identity: ticket.identity,
            fingerprint: ticket.fingerprint,
            owner: ticket.owner,
            revision,
            settle,
            give_up_at_ms,
            reading_back: false,
            lease: None,
        })
    }

    pub fn is_release(&self) -> bool {
        self.settle == Settle::Release
    }

    fn completed_record(&self) -> Option<Vec<u8>> {
        let Settle::Complete {
            status,
            response,
            why,
        } = &self.settle
        else {
            return None;
        };
        let state = match (response, why) {
            (Some(r), None) => State::Replayable(r.clone()),
            (_, why) => State::Unreplayable(why.unwrap_or(Unreplayable::NotStorable)),
        };
        let record = Record {
            fingerprint: self.fingerprint,
            owner: self.owner,
            status: *status,
            state,
        };
        Some(record.encode(&self.identity).unwrap_or_default())
    }

    /// The request that settles now (`lease`: the usable retention lease, needed to complete).
    pub fn request(&mut self, lease: Option<&str>) -> Result<Request, SettleWait> {
        self.reading_back = false;
        match self.completed_record() {
            None => Ok(gateway::release(&self.key, self.revision)),
            Some(value) => {
                let lease = lease.ok_or(SettleWait::Lease)?;
                self.lease = Some(lease.to_string());
                Ok(gateway::complete(&self.key, self.revision, &value, lease))
            }
        }
    }

    fn finished(&self) -> Finish {
        match &self.settle {
            Settle::Release => Finish::Released,
            Settle::Complete {
                response: Some(_),
                why: None,
                ..
            } => Finish::Stored,
            Settle::Complete { .. } => Finish::StoredNotReplayable,
        }
    }

    /// What the key holds says whether an earlier attempt already settled it.
    fn judge(&self, kv: Option<Kv>) -> Progress<Result<Finish, SettleWait>> {
        let record = kv
            .as_ref()
            .and_then(|kv| Record::decode(&kv.value, &self.identity).map(|r| (kv.mod_revision, r)));
        Progress::Done(match (&self.settle, record) {
            // Released, or its lease freed it: either way nothing holds the key.
            (Settle::Release, None) if kv.is_none() => Ok(Finish::Released),
            // Still our claim as written: the settlement did not land yet.
            (_, Some((rev, r)))
                if r.owner == self.owner && r.state == State::InFlight && rev == self.revision =>
            {
                Err(SettleWait::Later)
            }
            // Completed by us (an earlier attempt whose answer was lost).
            (Settle::Complete { .. }, Some((_, r)))
                if r.owner == self.owner && r.state != State::InFlight =>
            {
                Ok(self.finished())
            }
            // Gone (its lease ran out) or someone else's: this claim is lost.
            _ => Ok(Finish::Lost),
        })
    }

    pub fn on_answer(
        &mut self,
        status: u16,
        body: &[u8],
    ) -> (Call, Progress<Result<Finish, SettleWait>>) {
        if self.reading_back {
            let read = gateway::parse_range(status, body);
            let call = outcome_of(&read, false);
            return match read {
                Ok(kv) => (call, self.judge(kv)),
                Err(_) => (call, Progress::Done(Err(SettleWait::Later))),
            };
        }
        let txn = gateway::parse_txn(status, body);
        let call = outcome_of(&txn, txn.as_ref().is_ok_and(|t| !t.succeeded));
        let progress = match txn {
            Ok(t) if t.succeeded => Progress::Done(Ok(self.finished())),
            Ok(t) => self.judge(t.existing),
            Err(Failure::LeaseGone) => Progress::Done(Err(SettleWait::Lease)),
            // A response etcd will not take: keep the key completed, without a replay.
            Err(Failure::TooLarge) => match &mut self.settle {
                Settle::Complete { response, why, .. } if response.is_some() => {
                    *response = None;
                    *why = Some(Unreplayable::TooLarge);
                    match self.request(self.lease.clone().as_deref()) {
                        Ok(r) => Progress::Send(r),
                        Err(wait) => Progress::Done(Err(wait)),
                    }
                }
                _ => Progress::Done(Err(SettleWait::Later)),
            },
            Err(f) if f.maybe_applied() => {
                self.reading_back = true;
                Progress::Send(gateway::read(&self.key))
            }
            Err(_) => Progress::Done(Err(SettleWait::Later)),
        };
        (call, progress)
    }
}

#[cfg(test)]
mod tests;
