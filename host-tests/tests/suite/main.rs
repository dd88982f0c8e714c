//! The host-tests suite: one test binary so the filter is compiled once per run.

mod common;
mod host_abi;
mod host_envoy;
mod smoke;
mod wat;
