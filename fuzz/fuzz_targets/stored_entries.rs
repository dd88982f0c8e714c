//! The store's binary values in shared data (any plugin with the same vm_id can write them, so
//! they are untrusted input): decoding arbitrary bytes never panics; encode/decode round-trips;
//! a slot only decodes for the identity and owner that wrote it; a decoded index survives every
//! transition with its invariants (bounded entries, unique slots below capacity).
#![no_main]

use libfuzzer_sys::fuzz_target;
use resetguard_core::idempotency::index::{Decision, ShardIndex, Unreplayable, NO_SLOT};
use resetguard_core::idempotency::recorded::{is_stored_header, RecordedResponse};
use resetguard_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    match input.u8() % 3 {
        0 => arbitrary_bytes(input.rest()),
        1 => recorded_round_trip(&mut input),
        _ => index_transitions(&mut input),
    }
});

fn arbitrary_bytes(raw: &[u8]) {
    let identity: [u8; 16] = raw
        .get(4..20)
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; 16]);
    let owner = raw
        .get(20..28)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    if let Some(r) = RecordedResponse::decode(raw, &identity, owner) {
        assert_eq!(r.encode(&identity, owner).as_deref(), Some(raw));
    }
    if let Some(index) = ShardIndex::decode(raw) {
        if !raw.is_empty() {
            assert_eq!(
                index.encode(),
                raw,
                "decode then encode is not the identity"
            );
        }
    }
}

fn recorded_round_trip(input: &mut Input<'_>) {
    let identity: [u8; 16] = std::array::from_fn(|_| input.u8());
    let owner = input.u64();
    let status = input.u16();
    let mut pairs = Vec::new();
    for _ in 0..input.u8() % 12 {
        pairs.push((input.bytes(40).to_vec(), input.bytes(200).to_vec()));
    }
    let mut recorded = RecordedResponse::from_headers(status, pairs.clone());
    // Hop-by-hop and proxy headers never reach a stored response.
    for (name, _) in &recorded.headers {
        assert!(is_stored_header(name), "{name:?} was kept");
    }
    recorded.body = input.rest().to_vec();
    let Some(raw) = recorded.encode(&identity, owner) else {
        return;
    };
    assert_eq!(
        RecordedResponse::decode(&raw, &identity, owner).as_ref(),
        Some(&recorded)
    );
    let mut other = identity;
    other[0] ^= 1;
    assert_eq!(RecordedResponse::decode(&raw, &other, owner), None);
    assert_eq!(RecordedResponse::decode(&raw, &identity, owner ^ 1), None);
    assert_eq!(
        RecordedResponse::decode(&raw[..raw.len() - 1], &identity, owner),
        None
    );
}

fn index_transitions(input: &mut Input<'_>) {
    let capacity = usize::from(input.u8() % 16) + 1;
    let raw = input.bytes(53 * 20 + 6);
    let Some(mut index) = ShardIndex::decode(raw) else {
        return;
    };
    let mut now = input.u64() >> 16;
    let lock = u64::from(input.u16()) + 100;
    let ttl = u64::from(input.u16()) * 1000 + 1000;
    while !input.is_empty() {
        let identity: [u8; 16] = [input.u8(); 16];
        let fingerprint: [u8; 16] = [input.u8(); 16];
        let owner = u64::from(input.u8());
        now = now.saturating_add(u64::from(input.u16()));
        index.clamp_to_horizon(now, lock, ttl);
        index.reclaim(now);
        let before = index.entries.len();
        match input.u8() % 5 {
            0 | 1 => {
                let decision = index.decide(&identity, &fingerprint, owner, now, lock, capacity);
                if let Decision::Claim { slot } = decision {
                    assert!(before < capacity && usize::from(slot) < capacity);
                    assert!(index.claim_of(&identity, owner).is_some());
                } else {
                    assert_eq!(index.entries.len(), before);
                }
            }
            2 => {
                let _ = index.renew(&identity, owner, now + lock);
            }
            3 => {
                let unreplayable = match input.u8() % 6 {
                    0 => None,
                    n => Some(Unreplayable::ALL[usize::from(n - 1)]),
                };
                if index.complete(&identity, owner, input.u16(), now + ttl, unreplayable) {
                    assert!(index.claim_of(&identity, owner).is_none());
                }
            }
            _ => {
                if index.release(&identity, owner) {
                    assert_eq!(index.entries.len(), before - 1);
                }
            }
        }
        // Entries this run added use distinct slots below capacity (decoded ones may not: that
        // is the store's input, not its output).
        let raw = index.encode();
        assert_eq!(ShardIndex::decode(&raw).as_ref(), Some(&index));
    }
    let _ = NO_SLOT;
}
