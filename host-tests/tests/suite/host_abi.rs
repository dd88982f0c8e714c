//! The host's ABI behaviour, checked with hand-written modules (the filter cannot reach these).

use crate::wat::{handed, start, IMPORTS};
use host_tests::imports::{ENV_IMPORTS, WASI_IMPORTS};
use host_tests::{wasm, Host, Profile, Request, VmError};

#[test]
fn a_missing_import_fails_loudly() {
    let m = crate::wat::module(
        r#"(import "env" "proxy_bogus_call" (func (param i32) (result i32)))"#,
        "",
    );
    match Host::builder().start_module(&m) {
        Err(VmError::Load(msg)) => assert!(msg.contains("env.proxy_bogus_call"), "{msg}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a module with an unknown import loaded"),
    }
}

#[test]
fn every_import_of_the_filter_is_provided() {
    let module = wasm::filter_module().unwrap_or_else(|e| panic!("{e}"));
    let mut count = 0;
    for import in module.imports() {
        let known = match import.module() {
            "env" => ENV_IMPORTS.contains(&import.name()),
            "wasi_snapshot_preview1" => WASI_IMPORTS.contains(&import.name()),
            _ => false,
        };
        assert!(
            known,
            "unprovided import {}.{}",
            import.module(),
            import.name()
        );
        count += 1;
    }
    assert!(count >= 30, "only {count} imports: is this the filter?");
}

const HEADER_PROBE: &str = r#"
  (data (i32.const 1024) "x-absent")
  (data (i32.const 1040) "x-present")
  (func (export "probe_absent") (result i32)
    (call $get_header (i32.const 0) (i32.const 1024) (i32.const 8) (i32.const 64) (i32.const 68)))
  (func (export "probe_present") (result i32)
    (call $get_header (i32.const 0) (i32.const 1040) (i32.const 9) (i32.const 72) (i32.const 76)))
  (func (export "probe_response_map") (result i32)
    (call $get_header (i32.const 2) (i32.const 1040) (i32.const 9) (i32.const 80) (i32.const 84)))
"#;

#[test]
fn a_missing_header_is_not_found_and_values_come_from_the_module_allocator() {
    let mut host = start(Host::builder(), IMPORTS, HEADER_PROBE);
    let flight = host
        .vm(0)
        .begin(Request::get("/").header("X-Present", "yes"))
        .unwrap();
    let ctx = flight.context;
    let vm = host.vm(0);
    assert_eq!(vm.call(ctx, "probe_absent", &[]).unwrap(), Some(1));
    assert_eq!(
        vm.read_memory(64, 8),
        vec![0; 8],
        "NOT_FOUND must not write pointers"
    );
    assert_eq!(vm.call(ctx, "probe_present", &[]).unwrap(), Some(0));
    let (ptr, value) = handed(&mut host, 72);
    assert!(ptr >= 65536, "value not in the module's allocation: {ptr}");
    assert_eq!(value, b"yes");
    // The response map does not exist before the response: BAD_ARGUMENT, as in Envoy.
    assert_eq!(
        host.vm(0).call(ctx, "probe_response_map", &[]).unwrap(),
        Some(2)
    );
    // From a root context there is no stream at all.
    assert_eq!(host.vm(0).call(1, "probe_present", &[]).unwrap(), Some(2));
    host.vm(0).finish(flight).unwrap();
}

const SHARED_PROBE: &str = r#"
  (data (i32.const 1024) "key")
  (data (i32.const 1032) "other")
  (data (i32.const 1100) "ab")
  (func (export "set") (param $v i32) (param $cas i32) (result i32)
    (call $set_shared (i32.const 1024) (i32.const 3) (i32.add (i32.const 1100) (local.get $v)) (i32.const 1) (local.get $cas)))
  (func (export "set_other") (param $cas i32) (result i32)
    (call $set_shared (i32.const 1032) (i32.const 5) (i32.const 1100) (i32.const 1) (local.get $cas)))
  (func (export "get") (result i32)
    (call $get_shared (i32.const 1024) (i32.const 3) (i32.const 64) (i32.const 68) (i32.const 72)))
"#;

#[test]
fn shared_data_is_process_wide_with_envoy_cas_rules() {
    let mut host = start(Host::builder().workers(2), IMPORTS, SHARED_PROBE);
    let get = |host: &mut Host, vm: usize| -> (i32, Vec<u8>, u32) {
        let s = host.vm(vm).call(1, "get", &[]).unwrap().unwrap();
        let p = host.vm(vm).read_memory(64, 12);
        let (ptr, len) = (
            u32::from_le_bytes(p[0..4].try_into().unwrap()),
            u32::from_le_bytes(p[4..8].try_into().unwrap()),
        );
        let cas = u32::from_le_bytes(p[8..12].try_into().unwrap());
        (s, host.vm(vm).read_memory(ptr, len), cas)
    };
    assert_eq!(get(&mut host, 1).0, 1, "absent key: NOT_FOUND");
    // A write to an absent key succeeds whatever the token.
    assert_eq!(host.vm(0).call(1, "set_other", &[12345]).unwrap(), Some(0));
    assert_eq!(host.vm(0).call(1, "set", &[0, 0]).unwrap(), Some(0));
    let (status, value, cas) = get(&mut host, 1);
    assert_eq!(
        (status, value.as_slice()),
        (0, &b"a"[..]),
        "worker 1 sees worker 0's write"
    );
    assert_ne!(cas, 0);
    assert_eq!(
        host.vm(1).call(1, "set", &[1, cas as i32 + 1]).unwrap(),
        Some(8)
    );
    assert_eq!(
        host.vm(1).call(1, "set", &[1, cas as i32]).unwrap(),
        Some(0)
    );
    assert_eq!(
        host.vm(0).call(1, "set", &[0, cas as i32]).unwrap(),
        Some(8),
        "stale token"
    );
    assert_eq!(
        host.vm(0).call(1, "set", &[0, 0]).unwrap(),
        Some(0),
        "cas 0 is unconditional"
    );
    assert_eq!(get(&mut host, 0).1, b"a");
    // Another vm_id would be another store; a host without shared data answers UNIMPLEMENTED.
    let mut apisix = start(
        Host::builder().profile(Profile::Apisix),
        IMPORTS,
        SHARED_PROBE,
    );
    assert_eq!(apisix.vm(0).call(1, "set", &[0, 0]).unwrap(), Some(12));
    assert_eq!(apisix.vm(0).call(1, "get", &[]).unwrap(), Some(12));
}
