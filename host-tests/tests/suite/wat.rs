//! Hand-written modules for host self-tests: what the filter cannot exercise.

use host_tests::host::HostBuilder;
use host_tests::{wasm, Host};

/// A minimal proxy-wasm module: memory, a bump allocator at 0x10000, the ABI version, and
/// `body` (imports go in `imports`, functions and data in `body`).
pub fn module(imports: &str, body: &str) -> wasmtime::Module {
    let text = format!(
        r#"(module
  {imports}
  (memory (export "memory") 2)
  (global $next (mut i32) (i32.const 65536))
  (global $allocs (export "allocs") (mut i32) (i32.const 0))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (global.set $allocs (i32.add (global.get $allocs) (i32.const 1)))
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (local.get $at))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  {body}
)"#
    );
    wasm::compile(&text).unwrap_or_else(|e| panic!("bad test module: {e}"))
}

pub fn start(builder: HostBuilder, imports: &str, body: &str) -> Host {
    let m = module(imports, body);
    builder.start_module(&m).unwrap_or_else(|e| panic!("{e}"))
}

pub fn u32_at(host: &mut Host, ptr: u32) -> u32 {
    let b = host.vm(0).read_memory(ptr, 4);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads the (pointer, size) pair the host wrote at `ptr` and the bytes it points to.
pub fn handed(host: &mut Host, ptr: u32) -> (u32, Vec<u8>) {
    let (p, n) = (u32_at(host, ptr), u32_at(host, ptr + 4));
    (p, host.vm(0).read_memory(p, n))
}

/// Bytes as a WAT string literal body.
pub fn bytes(raw: &[u8]) -> String {
    raw.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A header map serialized the ABI's way, as a WAT string literal body.
pub fn pairs(list: &[(&str, &str)]) -> String {
    let owned: Vec<(Vec<u8>, Vec<u8>)> = list
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    bytes(&host_tests::abi::encode_pairs(&owned))
}

/// The `env` imports the self-test modules use, under short names.
pub const IMPORTS: &str = r#"
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
"#;
