//! Counting costs no host call on the request path: each worker accumulates, and its root
//! context hands the counts to the host on its tick, exact within one tick period.

use host_tests::Host;

#[test]
fn counts_reach_the_host_on_the_tick_not_per_request() {
    let mut host = Host::envoy("");
    let before = host.metrics_unflushed();
    for _ in 0..20 {
        let x = host.exchange(host_tests::Request::get("/a"));
        assert_eq!(x.status, Some(200));
    }
    let calls = &host.vm(0).state().calls;
    assert_eq!(
        calls.get("proxy_increment_metric"),
        None,
        "no increment on the request path"
    );
    assert_eq!(
        host.metrics_unflushed(),
        before,
        "nothing reached the host yet"
    );
    // The tick (every 250 ms on Envoy) hands over the exact totals.
    let after = host.metrics();
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    assert_eq!(delta("resetguard.requests.idempotent"), 20);
    assert_eq!(delta("resetguard.outcome.completed"), 20);
    assert_eq!(delta("resetguard.retry.armed_full"), 20);
    // And only what changed: a second flush adds nothing.
    assert_eq!(host.metrics(), after);
}
