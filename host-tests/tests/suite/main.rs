//! The host-tests suite: one test binary so the filter is compiled once per run.

mod common;
mod filter_config;
mod filter_outcome;
mod filter_retry;
mod host_abi;
mod host_envoy;
mod smoke;
mod wat;
mod filter_robust;
mod fuzz;
