//! The fleet-wide idempotency store on etcd v3, spoken over proxy callouts to etcd's JSON
//! gateway: the record kept per key, the gateway's shapes, per-bucket leases, and the claim and
//! settle operations as state machines (the glue sends and answers; nothing here does I/O).

pub mod gateway;
pub mod leases;
pub mod ops;
pub mod record;
