use crate::common::*;
use host_tests::Request;

#[test]
fn a_get_passes_and_is_counted() {
    let mut host = envoy();
    let x = host.exchange(Request::get("/items/1"));
    assert_eq!(x.status, Some(200));
    assert_eq!(x.body, b"ok");
    assert!(x.complete);
    assert_eq!(x.upstream_attempts(), 1);
    assert_eq!(upstream_header(&x, 0, "x-envoy-retry-on"), None);
    assert_eq!(host.metric("resetguard.requests.idempotent"), Some(1));
    assert_eq!(host.metric("resetguard.retry.armed_full"), Some(1));
    assert_eq!(host.metric("resetguard.outcome.completed"), Some(1));
    eprintln!("{:?}", host.logs());
    eprintln!("{:?}", host.vms[0].state().calls);
}
