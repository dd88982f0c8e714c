//! Hand-written WASI preview 1: a deterministic clock (the host's virtual clock), a seeded
//! `random_get`, captured `fd_write`, no environment, no arguments, no files.

use super::enter;
use crate::memory::{read, write, write_u32, write_u64};
use crate::state::VmState;
use wasmtime::{Caller, Linker};

type C<'a> = Caller<'a, VmState>;
const M: &str = "wasi_snapshot_preview1";

const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;

pub const PROVIDED: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "random_get",
    "fd_write",
    "fd_read",
    "fd_close",
    "fd_seek",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "proc_exit",
    "sched_yield",
];

fn ok_or_fault(r: Result<(), crate::memory::MemError>) -> i32 {
    if r.is_ok() {
        SUCCESS
    } else {
        EFAULT
    }
}

/// Zero counts: no arguments, no environment variables.
fn sizes(mut c: C, count: i32, size: i32) -> i32 {
    ok_or_fault(write_u32(&mut c, count, 0).and_then(|()| write_u32(&mut c, size, 0)))
}

fn fd_write(mut c: C, fd: i32, iovs: i32, n: i32, written: i32) -> i32 {
    enter(&mut c, "fd_write");
    let mut out = Vec::new();
    for i in 0..n {
        let Ok(iov) = read(&mut c, iovs + i * 8, 8) else {
            return EFAULT;
        };
        let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
        let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
        match read(&mut c, ptr, len) {
            Ok(bytes) => out.extend(bytes),
            Err(_) => return EFAULT,
        }
    }
    {
        let state = c.data();
        let mut shared = state.shared();
        match fd {
            1 => shared.stdout.extend_from_slice(&out),
            2 => shared.stderr.extend_from_slice(&out),
            _ => return EBADF,
        }
    }
    ok_or_fault(write_u32(&mut c, written, out.len() as u32))
}

fn random_get(mut c: C, ptr: i32, len: i32) -> i32 {
    enter(&mut c, "random_get");
    let bytes: Vec<u8> = {
        let state = c.data();
        let mut shared = state.shared();
        (0..len.max(0) as usize / 8 + 1)
            .flat_map(|_| shared.next_random().to_le_bytes())
            .take(len.max(0) as usize)
            .collect()
    };
    ok_or_fault(write(&mut c, ptr, &bytes))
}

fn clock_time_get(mut c: C, id: i32, _precision: i64, out: i32) -> i32 {
    enter(&mut c, "clock_time_get");
    if !(0..=3).contains(&id) {
        return EINVAL;
    }
    let now = c.data().shared().now_ns;
    ok_or_fault(write_u64(&mut c, out, now))
}

pub fn link(l: &mut Linker<VmState>) -> wasmtime::Result<()> {
    l.func_wrap(M, "args_get", |_: C, _: i32, _: i32| SUCCESS)?;
    l.func_wrap(M, "args_sizes_get", sizes)?;
    l.func_wrap(M, "environ_get", |_: C, _: i32, _: i32| SUCCESS)?;
    l.func_wrap(M, "environ_sizes_get", sizes)?;
    l.func_wrap(M, "clock_res_get", |mut c: C, _: i32, out: i32| {
        ok_or_fault(write_u64(&mut c, out, 1))
    })?;
    l.func_wrap(M, "clock_time_get", clock_time_get)?;
    l.func_wrap(M, "random_get", random_get)?;
    l.func_wrap(M, "fd_write", fd_write)?;
    l.func_wrap(M, "fd_read", |_: C, _: i32, _: i32, _: i32, _: i32| EBADF)?;
    l.func_wrap(M, "fd_close", |_: C, _: i32| EBADF)?;
    l.func_wrap(M, "fd_seek", |_: C, _: i32, _: i64, _: i32, _: i32| EBADF)?;
    l.func_wrap(M, "fd_fdstat_get", |_: C, _: i32, _: i32| EBADF)?;
    l.func_wrap(M, "fd_prestat_get", |_: C, _: i32, _: i32| EBADF)?;
    l.func_wrap(M, "fd_prestat_dir_name", |_: C, _: i32, _: i32, _: i32| {
        EBADF
    })?;
    l.func_wrap(M, "sched_yield", |_: C| SUCCESS)?;
    // Exiting a proxy VM is fatal: trap with the code so the test names it.
    l.func_wrap(M, "proc_exit", |_: C, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::format_err!("the module called proc_exit({code})"))
    })?;
    Ok(())
}
