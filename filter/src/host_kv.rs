//! The proxy's shared data as the store's key-value space (process-wide per `vm_id`).

use crate::host::{self, HostError};
use resetguard_core::idempotency::shared_kv::{KvError, KvResult, SharedKv};

#[derive(Copy, Clone, Debug, Default)]
pub struct HostKv;

impl SharedKv for HostKv {
    fn get(&self, key: &str) -> KvResult<Option<(Vec<u8>, u32)>> {
        host::shared_data(key).map_err(|e| KvError::Unavailable(e.name()))
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> KvResult<()> {
        match host::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(HostError::CAS_MISMATCH) => Err(KvError::CasMismatch),
            Err(e) => Err(KvError::Unavailable(e.name())),
        }
    }
}
