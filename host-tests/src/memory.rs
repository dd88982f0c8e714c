//! Guest memory access for host calls: bounds-checked reads and writes, and buffers handed to the
//! module through its own allocator (`proxy_on_memory_allocate`), as Envoy does.

use crate::abi::status;
use crate::state::VmState;
use wasmtime::{Caller, Extern, Memory};

/// The name host-to-module allocations are counted under in `VmState::calls`.
pub const ALLOCATE: &str = "proxy_on_memory_allocate";

/// Why a host call could not touch guest memory; maps to an ABI status (never a host panic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemError(pub i32);

pub type MemResult<T> = Result<T, MemError>;

fn memory<T>(caller: &mut Caller<'_, T>) -> MemResult<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(MemError(status::INTERNAL_FAILURE)),
    }
}

/// Copies `len` bytes at `ptr` out of the module (BAD_ARGUMENT when out of bounds).
pub fn read<T>(caller: &mut Caller<'_, T>, ptr: i32, len: i32) -> MemResult<Vec<u8>> {
    let mem = memory(caller)?;
    let (start, len) = (ptr as u32 as usize, len as u32 as usize);
    let end = start
        .checked_add(len)
        .ok_or(MemError(status::BAD_ARGUMENT))?;
    mem.data(&*caller)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(MemError(status::BAD_ARGUMENT))
}

pub fn write<T>(caller: &mut Caller<'_, T>, ptr: i32, bytes: &[u8]) -> MemResult<()> {
    let mem = memory(caller)?;
    let start = ptr as u32 as usize;
    let end = start
        .checked_add(bytes.len())
        .ok_or(MemError(status::BAD_ARGUMENT))?;
    mem.data_mut(&mut *caller)
        .get_mut(start..end)
        .ok_or(MemError(status::BAD_ARGUMENT))?
        .copy_from_slice(bytes);
    Ok(())
}

pub fn write_u32<T>(caller: &mut Caller<'_, T>, ptr: i32, value: u32) -> MemResult<()> {
    write(caller, ptr, &value.to_le_bytes())
}

pub fn write_u64<T>(caller: &mut Caller<'_, T>, ptr: i32, value: u64) -> MemResult<()> {
    write(caller, ptr, &value.to_le_bytes())
}

/// Allocates `bytes.len()` in the module via `proxy_on_memory_allocate`, copies the bytes in, and
/// stores the pointer and size at `ptr_out` / `size_out`. An allocator that returns 0 or traps is
/// reported as INTERNAL_FAILURE (a trap inside the allocator still traps the call).
pub fn hand_over(
    caller: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ptr_out: i32,
    size_out: i32,
) -> wasmtime::Result<MemResult<()>> {
    let alloc = match caller.get_export("proxy_on_memory_allocate") {
        Some(Extern::Func(f)) => f,
        _ => match caller.get_export("malloc") {
            Some(Extern::Func(f)) => f,
            _ => return Ok(Err(MemError(status::INTERNAL_FAILURE))),
        },
    };
    if bytes.is_empty() {
        // Envoy (proxy-wasm-cpp-host) allocates nothing for an empty value: pointer 0, size 0.
        return Ok(write_u32(caller, ptr_out, 0).and_then(|()| write_u32(caller, size_out, 0)));
    }
    let alloc = alloc.typed::<i32, i32>(&*caller)?;
    // Counted with the imports: each allocation is one more crossing into the module (crate::fuel).
    *caller.data_mut().calls.entry(ALLOCATE).or_insert(0) += 1;
    let ptr = alloc.call(&mut *caller, bytes.len() as i32)?;
    if ptr == 0 {
        return Ok(Err(MemError(status::INTERNAL_FAILURE)));
    }
    Ok(write(caller, ptr, bytes)
        .and_then(|()| write_u32(caller, ptr_out, ptr as u32))
        .and_then(|()| write_u32(caller, size_out, bytes.len() as u32)))
}
