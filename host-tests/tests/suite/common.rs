//! Helpers shared by the suite's tests.

use host_tests::{Exchange, Host, Profile};

/// A host of `profile` with one worker and this config, configured successfully.
pub fn host(profile: Profile, config: &str) -> Host {
    let host = Host::builder()
        .profile(profile)
        .config(config)
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        host.configured(),
        "config {config:?} was rejected: {:?}",
        host.logs()
    );
    host
}

pub fn envoy() -> Host {
    host(Profile::Envoy, "")
}

/// The value the upstream received for `name` on attempt `i`.
pub fn upstream_header(x: &Exchange, attempt: usize, name: &str) -> Option<String> {
    let req = x.upstream.get(attempt)?;
    host_tests::request::find(&req.headers, name).map(|v| String::from_utf8_lossy(v).into_owned())
}
