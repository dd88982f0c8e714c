//! The host-tests suite: one test binary so the filter is compiled once per run.

mod common;
mod corpus;
mod cost;
mod filter_abort;
mod filter_config;
mod filter_decision;
mod filter_etcd;
mod filter_idem_glue;
mod filter_metrics;
mod filter_outcome;
mod filter_retry;
mod filter_robust;
mod filter_route_override;
mod fuzz;
mod host_abi;
mod host_envoy;
mod host_etcd;
mod host_stop_all;
mod hostile;
mod security_claims;
mod smoke;
mod wat;
