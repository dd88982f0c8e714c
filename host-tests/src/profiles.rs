//! Capability sets of the proxies the filter may run in. A missing capability answers
//! UNIMPLEMENTED (or NOT_FOUND for properties), the way those hosts do.

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Envoy 1.40 with the V8 runtime (its modelled behaviours are pinned in `tests/suite/host_envoy.rs`).
    Envoy,
    /// Kong's ngx_wasm_module: shared data and ticks, no Envoy stream-info properties.
    Kong,
    /// APISIX's wasm-nginx-module: no shared data, no ticks, local responses lose their headers.
    Apisix,
}

impl Profile {
    pub const ALL: [Profile; 3] = [Profile::Envoy, Profile::Kong, Profile::Apisix];

    pub fn name(self) -> &'static str {
        match self {
            Profile::Envoy => "envoy",
            Profile::Kong => "kong",
            Profile::Apisix => "apisix",
        }
    }

    pub fn parse(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn caps(self) -> Caps {
        match self {
            Profile::Envoy => Caps {
                response_flags: true,
                code_details: true,
                xds_properties: true,
                shared_data: true,
                shared_queues: true,
                ticks: true,
                metrics: true,
                local_response_headers: true,
                filter_state: true,
            },
            Profile::Kong => Caps {
                response_flags: false,
                code_details: false,
                xds_properties: false,
                shared_data: true,
                shared_queues: false,
                ticks: true,
                metrics: false,
                local_response_headers: true,
                filter_state: false,
            },
            Profile::Apisix => Caps {
                response_flags: false,
                code_details: false,
                xds_properties: false,
                shared_data: false,
                shared_queues: false,
                ticks: false,
                metrics: false,
                local_response_headers: false,
                filter_state: false,
            },
        }
    }
}

/// What a host can do; everything false answers UNIMPLEMENTED / NOT_FOUND.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// `response.flags` (Envoy's StreamInfo response flags).
    pub response_flags: bool,
    /// `response.code_details`.
    pub code_details: bool,
    /// `xds.route_name`, `xds.route_metadata…`, `xds.cluster_name`.
    pub xds_properties: bool,
    pub shared_data: bool,
    pub shared_queues: bool,
    pub ticks: bool,
    /// `proxy_define_metric` and friends; without them they answer UNIMPLEMENTED.
    pub metrics: bool,
    /// Whether `proxy_send_local_response` keeps the headers it was given.
    pub local_response_headers: bool,
    /// `proxy_set_property` on an unknown path stores filter state (Envoy's `wasm.NAME`).
    pub filter_state: bool,
}
