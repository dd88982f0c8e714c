//! The key-value interface the store needs, with Envoy's shared-data semantics: `get` returns the
//! value and a CAS token; `set` with cas 0 writes unconditionally, a non-zero cas must match the
//! current token; a write to an absent key always succeeds; there is no delete and no listing.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum KvError {
    /// Someone wrote the key since it was read.
    CasMismatch,
    /// The host refused the call (UNIMPLEMENTED on hosts without shared data): the status's name.
    Unavailable(&'static str),
}

pub type KvResult<T> = Result<T, KvError>;

pub trait SharedKv {
    fn get(&self, key: &str) -> KvResult<Option<(Vec<u8>, u32)>>;
    fn set(&self, key: &str, value: &[u8], cas: u32) -> KvResult<()>;
}

/// An in-memory `SharedKv` with Envoy's exact semantics (CAS tokens from one global counter), for
/// native tests. `before_set` lets a test run another "worker" between a read and a write.
#[derive(Default)]
pub struct MemoryKv {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    #[allow(clippy::type_complexity)]
    before_set: RefCell<Option<Box<dyn FnMut(&str)>>>,
    pub sets: Cell<u64>,
}

impl MemoryKv {
    /// Installs a hook run before every `set` (not re-entered while it runs).
    pub fn on_before_set(&self, hook: impl FnMut(&str) + 'static) {
        *self.before_set.borrow_mut() = Some(Box::new(hook));
    }

    pub fn clear_hook(&self) {
        *self.before_set.borrow_mut() = None;
    }

    pub fn total_bytes(&self) -> usize {
        self.map
            .borrow()
            .iter()
            .map(|(k, (v, _))| k.len() + v.len())
            .sum()
    }

    pub fn key_count(&self) -> usize {
        self.map.borrow().len()
    }
}

impl SharedKv for MemoryKv {
    fn get(&self, key: &str) -> KvResult<Option<(Vec<u8>, u32)>> {
        Ok(self.map.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> KvResult<()> {
        // Take the hook out while it runs so the other worker's own writes do not recurse.
        let hook = self.before_set.borrow_mut().take();
        if let Some(mut hook) = hook {
            hook(key);
            let mut slot = self.before_set.borrow_mut();
            if slot.is_none() {
                *slot = Some(hook);
            }
        }
        self.sets.set(self.sets.get() + 1);
        let mut map = self.map.borrow_mut();
        if let Some((_, current)) = map.get(key) {
            if cas != 0 && cas != *current {
                return Err(KvError::CasMismatch);
            }
        }
        let next = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(next);
        map.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

/// A host without shared data: every call answers UNIMPLEMENTED.
#[derive(Copy, Clone, Debug, Default)]
pub struct NoKv;

impl SharedKv for NoKv {
    fn get(&self, _key: &str) -> KvResult<Option<(Vec<u8>, u32)>> {
        Err(KvError::Unavailable("UNIMPLEMENTED"))
    }

    fn set(&self, _key: &str, _value: &[u8], _cas: u32) -> KvResult<()> {
        Err(KvError::Unavailable("UNIMPLEMENTED"))
    }
}

/// Workers of one process share one store: tests hand each "worker" an `Rc` of the same map.
impl<T: SharedKv + ?Sized> SharedKv for std::rc::Rc<T> {
    fn get(&self, key: &str) -> KvResult<Option<(Vec<u8>, u32)>> {
        (**self).get(key)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> KvResult<()> {
        (**self).set(key, value, cas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_kv_has_envoy_semantics() {
        let kv = MemoryKv::default();
        assert_eq!(kv.get("k").unwrap(), None);
        kv.set("k", b"a", 12345).unwrap(); // absent: any cas succeeds
        let (v, cas) = kv.get("k").unwrap().unwrap();
        assert_eq!(v, b"a");
        assert_eq!(kv.set("k", b"b", cas + 1), Err(KvError::CasMismatch));
        kv.set("k", b"b", cas).unwrap();
        assert_eq!(
            kv.set("k", b"c", cas),
            Err(KvError::CasMismatch),
            "stale token"
        );
        kv.set("k", b"d", 0).unwrap(); // cas 0: unconditional
        assert_eq!(kv.get("k").unwrap().unwrap().0, b"d");
    }
}
