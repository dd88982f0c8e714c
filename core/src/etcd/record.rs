//! What the etcd store keeps under a key: the claim's fingerprint and owner token, its state,
//! the upstream's status, and for a replayable key the recorded response.
//!
//! Layout: `RGE1` | kind (u8: 1 in flight, 2 completed and replayable, 3..=7 completed without a
//! replayable copy, as `Unreplayable::kind`) | fingerprint (16) | owner (u64) | status (u16) |
//! the recorded response (kind 2 only, `RecordedResponse::encode`).

use crate::idempotency::index::{Fingerprint, Identity, Unreplayable};
use crate::idempotency::recorded::RecordedResponse;

const MAGIC: &[u8; 4] = b"RGE1";
const IN_FLIGHT: u8 = 1;
const REPLAYABLE: u8 = 2;
const HEADER_LEN: usize = 4 + 1 + 16 + 8 + 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    InFlight,
    Replayable(RecordedResponse),
    Unreplayable(Unreplayable),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub fingerprint: Fingerprint,
    pub owner: u64,
    /// The upstream's status (0 while in flight, or when none came back).
    pub status: u16,
    pub state: State,
}

impl Record {
    /// `None` when the response cannot be encoded (more headers than the format counts).
    pub fn encode(&self, identity: &Identity) -> Option<Vec<u8>> {
        let kind = match &self.state {
            State::InFlight => IN_FLIGHT,
            State::Replayable(_) => REPLAYABLE,
            State::Unreplayable(why) => why.kind(),
        };
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(MAGIC);
        out.push(kind);
        out.extend_from_slice(&self.fingerprint);
        out.extend_from_slice(&self.owner.to_le_bytes());
        out.extend_from_slice(&self.status.to_le_bytes());
        if let State::Replayable(response) = &self.state {
            out.extend_from_slice(&response.encode(identity, self.owner)?);
        }
        Some(out)
    }

    /// `None` unless the value is intact and, for a replayable key, its response belongs to this
    /// identity and owner.
    pub fn decode(raw: &[u8], identity: &Identity) -> Option<Record> {
        let header = raw.get(..HEADER_LEN)?;
        if header.get(..4)? != MAGIC {
            return None;
        }
        let kind = *header.get(4)?;
        let fingerprint: Fingerprint = header.get(5..21)?.try_into().ok()?;
        let owner = u64::from_le_bytes(header.get(21..29)?.try_into().ok()?);
        let status = u16::from_le_bytes(header.get(29..31)?.try_into().ok()?);
        let rest = raw.get(HEADER_LEN..)?;
        let state = match kind {
            IN_FLIGHT if rest.is_empty() => State::InFlight,
            REPLAYABLE => State::Replayable(RecordedResponse::decode(rest, identity, owner)?),
            kind if rest.is_empty() => State::Unreplayable(Unreplayable::of_kind(kind)?),
            _ => return None,
        };
        Some(Record {
            fingerprint,
            owner,
            status,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: Identity = [3; 16];

    fn record(state: State) -> Record {
        Record {
            fingerprint: [9; 16],
            owner: 42,
            status: 201,
            state,
        }
    }

    #[test]
    fn every_state_round_trips_for_its_own_identity_only() {
        let response = RecordedResponse {
            status: 201,
            headers: vec![(b"set-cookie".to_vec(), b"a=1".to_vec())],
            body: b"made".to_vec(),
        };
        let mut states = vec![State::InFlight, State::Replayable(response)];
        states.extend(Unreplayable::ALL.map(State::Unreplayable));
        for state in states {
            let r = record(state);
            let raw = r.encode(&ID).unwrap();
            assert_eq!(Record::decode(&raw, &ID), Some(r.clone()));
            for cut in 0..raw.len() {
                assert_eq!(Record::decode(&raw[..cut], &ID), None);
            }
            if matches!(r.state, State::Replayable(_)) {
                assert_eq!(
                    Record::decode(&raw, &[4; 16]),
                    None,
                    "another identity's slot"
                );
            }
        }
        assert_eq!(Record::decode(b"not a record at all, no", &ID), None);
    }

    proptest::proptest! {
        /// Anyone who can write to etcd can write garbage under the prefix: decoding never panics.
        #[test]
        fn decoding_arbitrary_values_never_panics(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let _ = Record::decode(&raw, &ID);
            let mut prefixed = MAGIC.to_vec();
            prefixed.extend_from_slice(&raw);
            let _ = Record::decode(&prefixed, &ID);
        }
    }
}
