//! The sharded store end to end over an in-memory shared data with Envoy's CAS semantics: any
//! sequence of claims, completions, releases, clock jumps and garbage written over shard indexes
//! (any plugin with the same vm_id can write them) never panics, never grows the store beyond its
//! keys, and never replays a response that was not stored for that very identity (nor, while the
//! indexes are intact, for another payload).
#![no_main]

use libfuzzer_sys::fuzz_target;
use resetguard_core::idempotency::recorded::RecordedResponse;
use resetguard_core::idempotency::shared_kv::{MemoryKv, SharedKv};
use resetguard_core::idempotency::index::Unreplayable;
use resetguard_core::idempotency::store::{
    Claim, Completion, IdempotencyStore, ShardedStore, StoreLimits, Ticket,
};
use resetguard_fuzz::Input;

const SHARDS: u32 = 2;
const PER_SHARD: usize = 3;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let store = ShardedStore::new(
        MemoryKv::default(),
        StoreLimits {
            shards: SHARDS,
            entries_per_shard: PER_SHARD,
            lock_timeout_ms: 200,
            ttl_ms: 1_000,
        },
    );
    if store.init([7; 16]).is_err() {
        return;
    }
    let mut now = 1_000_000u64;
    let mut tickets: Vec<Ticket> = Vec::new();
    // (identity, fingerprint, response) of every response stored so far.
    let mut stored: Vec<([u8; 16], [u8; 16], RecordedResponse)> = Vec::new();
    let mut corrupted = false;
    let mut claims = 0u64;
    while !input.is_empty() {
        now = now.saturating_add(u64::from(input.u8()) * 10);
        match input.u8() % 6 {
            0 | 1 => {
                let identity = [input.u8() % 6; 16];
                let fingerprint = [input.u8() % 2; 16];
                // Owners are 64 random bits per claim in the filter: never equal, so unique here.
                claims += 1;
                let owner = claims;
                match store.claim(&identity, &fingerprint, owner, now) {
                    Ok(report) => match report.value {
                        Claim::Claimed(ticket) => {
                            assert!(usize::from(ticket.slot) < PER_SHARD, "{ticket:?}");
                            tickets.push(ticket);
                        }
                        Claim::Replay(response) => assert!(
                            stored.iter().any(|(i, f, r)| *i == identity
                                && (corrupted || *f == fingerprint)
                                && *r == response),
                            "replayed a response never stored for this identity: {response:?}"
                        ),
                        _ => {}
                    },
                    Err(e) => assert!(corrupted, "store error on intact data: {e:?}"),
                }
            }
            2 if !tickets.is_empty() => {
                let ticket = tickets.remove(usize::from(input.u8()) % tickets.len());
                let response = RecordedResponse {
                    status: 200 + u16::from(input.u8() % 5),
                    headers: vec![(b"x-n".to_vec(), vec![input.u8()])],
                    body: input.bytes(32).to_vec(),
                };
                let keep = input.bool();
                let status = response.status;
                let completion = if keep {
                    Completion::Response(&response)
                } else {
                    Completion::Unreplayable(Unreplayable::ALL[usize::from(input.u8()) % 5])
                };
                if store.complete(&ticket, status, completion, now).is_ok() && keep
                {
                    stored.push((ticket.identity, ticket.fingerprint, response));
                }
            }
            3 if !tickets.is_empty() => {
                let ticket = tickets.remove(usize::from(input.u8()) % tickets.len());
                let _ = store.release(&ticket, now);
            }
            4 => {
                // Garbage over a shard index (a valid index, a truncated one, or random bytes).
                corrupted = true;
                let shard = input.u8() % SHARDS as u8;
                let key = format!("resetguard/v1/{SHARDS}/shard/{shard}");
                let _ = store.kv().set(&key, input.bytes(200), 0);
            }
            _ => {
                let identity = [input.u8() % 6; 16];
                let _ = store.peek(&identity, now);
            }
        }
        let bound = 1 + SHARDS as usize * (1 + PER_SHARD);
        assert!(
            store.kv().key_count() <= bound,
            "{} keys",
            store.kv().key_count()
        );
    }
});
