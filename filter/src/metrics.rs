//! The filter's counters, defined once per VM at start-up. Envoy merges same-named metrics of all
//! workers; a host without metrics leaves them undefined and counting becomes a no-op.
//!
//! Counting costs no host call on the request path: each worker accumulates in its own memory and
//! the root context flushes to the host on its tick (`FLUSH_PERIOD_MS`), and when the VM stops,
//! so `/stats` is exact within one period. On a host without ticks every count goes to the host
//! at once.

use crate::host;
pub use resetguard_core::counter::Counter;
use std::cell::RefCell;
use std::rc::Rc;

/// How often the root context hands the accumulated counts to the host.
pub const FLUSH_PERIOD_MS: u32 = 250;

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    ids: Rc<Vec<Option<u32>>>,
    /// Counts not yet handed to the host, by counter; `None` when every count goes at once.
    pending: Option<Rc<RefCell<Vec<i64>>>>,
}

impl Metrics {
    /// Defines every counter; returns how many the host refused (0 on Envoy). `batched`: the
    /// root context flushes on its tick.
    pub fn define(batched: bool) -> (Metrics, usize) {
        let ids: Vec<Option<u32>> = Counter::ALL
            .iter()
            .map(|c| host::define_counter(c.name()).ok())
            .collect();
        let refused = ids.iter().filter(|id| id.is_none()).count();
        let pending = batched.then(|| Rc::new(RefCell::new(vec![0; ids.len()])));
        (
            Metrics {
                ids: Rc::new(ids),
                pending,
            },
            refused,
        )
    }

    pub fn add(&self, counter: Counter, n: i64) {
        let index = counter as usize;
        match self.pending.as_ref().map(|p| p.try_borrow_mut()) {
            Some(Ok(mut pending)) => {
                if let Some(slot) = pending.get_mut(index) {
                    *slot += n;
                }
            }
            _ => self.send(index, n),
        }
    }

    pub fn inc(&self, counter: Counter) {
        self.add(counter, 1);
    }

    fn send(&self, index: usize, n: i64) {
        if let Some(Some(id)) = self.ids.get(index) {
            // A failed increment loses a count; nothing else to do about it.
            let _ = host::increment_metric(*id, n);
        }
    }

    /// Hands every accumulated count to the host.
    pub fn flush(&self) {
        let Some(Ok(mut pending)) = self.pending.as_ref().map(|p| p.try_borrow_mut()) else {
            return;
        };
        for (index, n) in pending.iter_mut().enumerate() {
            if *n != 0 {
                self.send(index, std::mem::take(n));
            }
        }
    }
}
