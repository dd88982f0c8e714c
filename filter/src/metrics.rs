//! The filter's counters, defined once per VM at start-up. Envoy merges same-named metrics of all
//! workers; a host without metrics leaves them undefined and counting becomes a no-op.

use crate::host;
pub use resetguard_core::counter::Counter;

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    ids: Vec<Option<u32>>,
}

impl Metrics {
    /// Defines every counter; returns how many the host refused (0 on Envoy).
    pub fn define() -> (Metrics, usize) {
        let ids: Vec<Option<u32>> = Counter::ALL
            .iter()
            .map(|c| host::define_counter(c.name()).ok())
            .collect();
        let refused = ids.iter().filter(|id| id.is_none()).count();
        (Metrics { ids }, refused)
    }

    pub fn add(&self, counter: Counter, n: i64) {
        if let Some(Some(id)) = self.ids.get(counter as usize) {
            // A failed increment loses one count; nothing else to do about it.
            let _ = host::increment_metric(*id, n);
        }
    }

    pub fn inc(&self, counter: Counter) {
        self.add(counter, 1);
    }
}
