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
