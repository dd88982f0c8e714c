//! Envoy's shared data and shared queues: process-wide per `vm_id`, shared by every VM (worker).
//!
//! Semantics measured on Envoy 1.40: a `cas` of 0 writes unconditionally, a non-zero `cas` must
//! match the entry's token, a write to an absent key always succeeds, there is no delete.

use crate::abi::status;
use std::collections::{HashMap, VecDeque};

#[derive(Default, Debug)]
pub struct SharedData {
    entries: HashMap<(String, Vec<u8>), (Vec<u8>, u32)>,
    next_cas: u32,
    /// Fault: the next N conditional writes fail with CAS_MISMATCH whatever their token.
    pub forced_cas_mismatches: u32,
    queues: Vec<Queue>,
}

#[derive(Debug)]
struct Queue {
    vm_id: String,
    name: String,
    /// The VM and context that registered it get `proxy_on_queue_ready`.
    owner_vm: u32,
    owner_context: u32,
    items: VecDeque<Vec<u8>>,
    ready_pending: u32,
}

impl SharedData {
    fn cas(&mut self) -> u32 {
        // Tokens are never 0: 0 means "unconditional" on the write side.
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.next_cas
    }

    pub fn get(&self, vm_id: &str, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.entries
            .get(&(vm_id.to_string(), key.to_vec()))
            .cloned()
    }

    /// Returns the ABI status of the write.
    pub fn set(&mut self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> i32 {
        let id = (vm_id.to_string(), key.to_vec());
        let exists = self.entries.contains_key(&id);
        if exists && cas != 0 && self.forced_cas_mismatches > 0 {
            self.forced_cas_mismatches -= 1;
            return status::CAS_MISMATCH;
        }
        if let Some((_, current)) = self.entries.get(&id) {
            if cas != 0 && cas != *current {
                return status::CAS_MISMATCH;
            }
        }
        let token = self.cas();
        self.entries.insert(id, (value.to_vec(), token));
        status::OK
    }

    pub fn len(&self, vm_id: &str) -> usize {
        self.entries.keys().filter(|(v, _)| v == vm_id).count()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Registers (or re-registers, as Envoy does) a queue; the token is its index + 1.
    pub fn register_queue(&mut self, vm_id: &str, name: &str, vm: u32, context: u32) -> u32 {
        if let Some(i) = self
            .queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
        {
            self.queues[i].owner_vm = vm;
            self.queues[i].owner_context = context;
            return i as u32 + 1;
        }
        self.queues.push(Queue {
            vm_id: vm_id.to_string(),
            name: name.to_string(),
            owner_vm: vm,
            owner_context: context,
            items: VecDeque::new(),
            ready_pending: 0,
        });
        self.queues.len() as u32
    }

    pub fn resolve_queue(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.queues
            .iter()
            .position(|q| q.vm_id == vm_id && q.name == name)
            .map(|i| i as u32 + 1)
    }

    pub fn enqueue(&mut self, token: u32, value: &[u8]) -> i32 {
        match self.queue_mut(token) {
            None => status::NOT_FOUND,
            Some(q) => {
                q.items.push_back(value.to_vec());
                q.ready_pending += 1;
                status::OK
            }
        }
    }

    pub fn dequeue(&mut self, token: u32) -> Result<Vec<u8>, i32> {
        let q = self.queue_mut(token).ok_or(status::NOT_FOUND)?;
        q.items.pop_front().ok_or(status::EMPTY)
    }

    /// Takes the queue-ready notifications due to one VM: (context, token) pairs.
    pub fn take_ready(&mut self, vm: u32) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for (i, q) in self.queues.iter_mut().enumerate() {
            if q.owner_vm == vm {
                for _ in 0..q.ready_pending {
                    out.push((q.owner_context, i as u32 + 1));
                }
                q.ready_pending = 0;
            }
        }
        out
    }

    /// Puts back one queue-ready notification that was taken but not yet delivered.
    pub fn enqueue_notification(&mut self, token: u32) {
        if let Some(q) = self.queue_mut(token) {
            q.ready_pending += 1;
        }
    }

    fn queue_mut(&mut self, token: u32) -> Option<&mut Queue> {
        let index = (token as usize).checked_sub(1)?;
        self.queues.get_mut(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_cas_rules() {
        let mut s = SharedData::default();
        assert_eq!(s.get("vm", b"k"), None);
        // An absent key accepts any token.
        assert_eq!(s.set("vm", b"k", b"a", 77), status::OK);
        let (_, cas) = s.get("vm", b"k").unwrap();
        assert_ne!(cas, 0);
        assert_eq!(s.set("vm", b"k", b"b", cas + 1), status::CAS_MISMATCH);
        assert_eq!(s.set("vm", b"k", b"b", cas), status::OK);
        assert_eq!(s.set("vm", b"k", b"c", cas), status::CAS_MISMATCH);
        assert_eq!(s.set("vm", b"k", b"d", 0), status::OK);
        assert_eq!(s.get("vm", b"k").unwrap().0, b"d");
        // Another vm_id is another store.
        assert_eq!(s.get("other", b"k"), None);
    }
}
