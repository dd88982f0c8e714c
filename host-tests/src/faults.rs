//! Host faults a test can inject: each forces a class of host calls to answer a given status,
//! to prove the filter degrades instead of trapping.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Every header-map call answers this status.
    pub headers: Option<i32>,
    /// Every `proxy_get_property` answers NOT_FOUND.
    pub properties_missing: bool,
    /// `proxy_http_call` answers this status at once.
    pub http_call: Option<i32>,
    /// `proxy_get_shared_data` answers this status.
    pub shared_get: Option<i32>,
    /// `proxy_set_shared_data` answers this status.
    pub shared_set: Option<i32>,
    /// Every buffer call answers this status.
    pub buffers: Option<i32>,
    /// `proxy_log` answers this status (the line is still recorded).
    pub log: Option<i32>,
    /// Metric calls answer this status.
    pub metrics: Option<i32>,
}

impl Faults {
    /// A random fault set drawn from one random word (the hostile driver's host faults): each
    /// class of host call fails with its own small probability, answering one of the statuses a
    /// real host gives (NOT_FOUND, BAD_ARGUMENT, INTERNAL_FAILURE, UNIMPLEMENTED, or a CAS
    /// mismatch for shared-data writes). Often none at all, so faulty and healthy calls mix.
    pub fn sample(word: u64) -> Faults {
        use crate::abi::status;
        const STATUSES: [i32; 4] = [
            status::NOT_FOUND,
            status::BAD_ARGUMENT,
            status::INTERNAL_FAILURE,
            status::UNIMPLEMENTED,
        ];
        // Four bits per class: a 1-in-16 chance to fail, and two more bits pick the status.
        let class = |i: u32| -> Option<i32> {
            let bits = (word >> (i * 6)) & 0x3f;
            (bits & 0xf == 0).then(|| STATUSES[(bits >> 4) as usize])
        };
        Faults {
            headers: class(0),
            properties_missing: class(1).is_some(),
            http_call: class(2),
            shared_get: class(3),
            shared_set: class(4).map(|s| {
                if s == status::NOT_FOUND {
                    status::CAS_MISMATCH
                } else {
                    s
                }
            }),
            buffers: class(5),
            log: class(6),
            metrics: class(7),
        }
    }

    pub fn any(&self) -> bool {
        *self != Faults::default()
    }
}
