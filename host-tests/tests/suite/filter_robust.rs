//! The filter never traps: on every host profile, under host faults, and on generated input.

use crate::common::*;
use host_tests::abi::status;
use host_tests::faults::Faults;
use host_tests::{Host, Profile, Request, UpstreamAction};

#[test]
fn every_profile_passes_requests_and_still_arms_retries_without_metrics() {
    for profile in Profile::ALL {
        let mut h = host(profile, "");
        let x = h.exchange(Request::get("/").upstream(vec![
            UpstreamAction::ResetBeforeHeaders,
            UpstreamAction::ok("ok"),
        ]));
        assert_eq!(
            (x.status, x.upstream_attempts()),
            (Some(200), 2),
            "{profile:?}"
        );
        let x =
            h.exchange(Request::post("/", "b").upstream(vec![UpstreamAction::ResetBeforeHeaders]));
        assert_eq!(
            (x.status, x.upstream_attempts()),
            (Some(503), 1),
            "{profile:?}"
        );
        let x = h.exchange(
            Request::get("/").upstream(vec![UpstreamAction::ResetMidBody {
                status: 200,
                headers: vec![],
                body_prefix: b"p".to_vec(),
            }]),
        );
        assert!(!x.complete);
        if profile != Profile::Envoy {
            assert!(h.metrics().is_empty(), "{profile:?} has no metrics");
            assert!(
                h.logs().iter().any(|l| l.message.contains("refused")),
                "{profile:?}: the missing metrics are logged once"
            );
        }
    }
}

fn faulty(f: impl FnOnce(&mut Faults)) -> Host {
    let h = envoy();
    f(&mut h.shared().faults);
    h
}

fn run_mix(h: &mut Host) {
    for r in [
        Request::get("/a").header("x-envoy-retry-on", "5xx"),
        Request::post("/b", "body"),
        Request::get("/c").upstream(vec![UpstreamAction::ResetBeforeHeaders]),
        Request::get("/d")
            .upstream(vec![UpstreamAction::Respond {
                status: 200,
                headers: vec![],
                body: b"x".to_vec(),
                delay_ms: 50,
            }])
            .abort_after(5),
    ] {
        let x = h.try_exchange(r).unwrap_or_else(|e| panic!("{e}"));
        assert!(x.status.is_some() || x.client_aborted);
    }
}

#[test]
fn host_faults_never_trap_the_filter() {
    type Inject = Box<dyn Fn(&mut Faults)>;
    let faults: Vec<(&str, Inject)> = vec![
        (
            "header calls fail",
            Box::new(|f| f.headers = Some(status::INTERNAL_FAILURE)),
        ),
        (
            "header calls BAD_ARGUMENT",
            Box::new(|f| f.headers = Some(status::BAD_ARGUMENT)),
        ),
        (
            "properties missing",
            Box::new(|f| f.properties_missing = true),
        ),
        (
            "http_call fails",
            Box::new(|f| f.http_call = Some(status::INTERNAL_FAILURE)),
        ),
        (
            "shared data get fails",
            Box::new(|f| f.shared_get = Some(status::INTERNAL_FAILURE)),
        ),
        (
            "shared data set fails",
            Box::new(|f| f.shared_set = Some(status::CAS_MISMATCH)),
        ),
        (
            "buffers fail",
            Box::new(|f| f.buffers = Some(status::INTERNAL_FAILURE)),
        ),
        (
            "log fails",
            Box::new(|f| f.log = Some(status::INTERNAL_FAILURE)),
        ),
        (
            "metrics fail",
            Box::new(|f| f.metrics = Some(status::INTERNAL_FAILURE)),
        ),
    ];
    for (name, fault) in faults {
        let mut h = faulty(|f| fault(f));
        run_mix(&mut h);
        assert!(h.vms[0].trapped().is_none(), "{name}");
    }
}

#[test]
fn header_failures_fail_open_and_are_counted() {
    let mut h = faulty(|f| f.headers = Some(status::INTERNAL_FAILURE));
    let x = h.exchange(Request::get("/"));
    assert_eq!(x.status, Some(200));
    assert!(h.metric("resetguard.host_errors").unwrap_or(0) >= 1);
}

#[test]
fn cas_mismatch_storms_across_workers_never_trap() {
    let mut h = Host::builder().workers(2).config("").start().unwrap();
    h.shared().shared.forced_cas_mismatches = 10_000;
    for i in 0..40 {
        let r = Request::post("/pay", "x").header("idempotency-key", &format!("k{}", i % 3));
        let x = h.exchange_on(i % 2, r);
        assert!(x.status.is_some());
    }
}

#[test]
fn a_config_with_unreadable_plugin_buffer_is_rejected_not_trapped() {
    // Faults apply from the first call on: build the host, then fault and reconfigure a new VM.
    let h = Host::builder().config("{}").start().unwrap();
    h.shared().faults.buffers = Some(status::INTERNAL_FAILURE);
    let module = host_tests::wasm::filter_module().unwrap();
    let vm = host_tests::Vm::start(h.handle(), 9, h.vms[0].state().setup.clone(), module).unwrap();
    assert!(!vm.configured);
}
