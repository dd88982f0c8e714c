"""The etcd v3 JSON gateway shapes resetguard's fleet-wide idempotency store relies on, pinned
against the installed etcd (Debian's etcd-server, started on loopback by harness/etcd.py).

`host-tests/etcd/gateway_cases.json` holds the request/answer cases; the mock host's etcd model
(host-tests/src/etcd.rs) must pass the very same file (suite `host_etcd`), so the model cannot
drift from what etcd really answers. Beyond the cases this file measures what a model can only be
told: the exact request limit, when a lease's key really goes, how long an election takes after
the leader is SIGKILLed, and what etcd answers, and when, with 2 of 3 members gone. Run with -s to
see the figures.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import etcd_cases, paths
from harness.etcd import Etcd, b64, etcd_version

CASES = etcd_cases.load()
MAX_REQUEST_BYTES = 1_572_864


@pytest.fixture(scope="module")
def one():
    """One member for every case of the file (each case reads its own baseline revision)."""
    run_dir = paths.RUN_DIR / "tests" / f"etcd-gateway-{int(time.time() * 1000) % 10**8}"
    cluster = Etcd(1, run_dir=run_dir).start()
    yield cluster
    cluster.stop()


def test_installed_etcd_is_3_4_or_later():
    major, minor = (int(x) for x in etcd_version().split(".")[:2])
    assert (major, minor) >= (3, 4), etcd_version()


@pytest.mark.parametrize("case", CASES["cases"], ids=[c["name"] for c in CASES["cases"]])
def test_gateway_case(one, case):
    send = one.members[0].send
    ctx = etcd_cases.Context(etcd_cases.baseline(send))
    failures = etcd_cases.run_steps(send, case["steps"], ctx)
    assert not failures, "\n".join(failures)


def _varint_len(v: int) -> int:
    return max(1, (v.bit_length() + 6) // 7)


def _field(field: int, n: int) -> int:
    return _varint_len(field << 3) + _varint_len(n) + n


def raft_request_size(member_id: int, op_len: int) -> int:
    """etcd 3.4 wraps a write in InternalRaftRequest{header(100): {ID(1)}, op}; the request ID is
    (member_id & 0xffff) << 48 | ms << 8 | n (host-tests/src/etcd/wire.rs, the model's copy)."""
    low = member_id & 0xFFFF
    id_len = (48 + low.bit_length() + 6) // 7 if low else 7
    header = 1 + id_len
    return _varint_len(100 << 3) + _varint_len(header) + header + _field(4, op_len)


def test_request_limit_is_the_raft_request_size(one):
    """The largest value a put on a 3-byte key takes: bisected, then derived from the member ID
    the way the model computes it (the limit a client sees moves by a byte or two with it)."""
    member_id = int(one.range("baseline")["header"]["member_id"])
    lo, hi = MAX_REQUEST_BYTES - 64, MAX_REQUEST_BYTES
    assert one.put("big", b"x" * lo).status == 200
    assert one.put("big", b"x" * hi).status == 400
    while hi - lo > 1:
        mid = (lo + hi) // 2
        r = one.put("big", b"x" * mid)
        assert r.status in (200, 400), r
        lo, hi = (mid, hi) if r.status == 200 else (lo, mid)
    one.post("/v3/kv/deleterange", {"key": b64("big")})

    def put_size(value_len):
        return _field(1, 3) + _field(2, value_len)

    expected = max(v for v in range(MAX_REQUEST_BYTES - 64, MAX_REQUEST_BYTES)
                   if raft_request_size(member_id, put_size(v)) <= MAX_REQUEST_BYTES)
    framing = raft_request_size(member_id, put_size(lo)) - put_size(lo)
    print(f"\n[etcd] request limit: a put on a 3-byte key takes a {lo:,}-byte value, not {hi:,} "
          f"(--max-request-bytes {MAX_REQUEST_BYTES:,}; member id low 16 bits "
          f"{member_id & 0xFFFF:#06x} -> {framing} bytes of raft framing); the model's formula "
          f"says {expected:,}")
    assert lo == expected


def test_a_key_goes_with_its_lease_after_the_ttl(one):
    lease = one.lease_id(2)
    start = time.monotonic()
    assert one.put("expiring", "v", lease=lease).status == 200
    gone_after = None
    while time.monotonic() - start < 6:
        if not one.kvs("expiring"):
            gone_after = time.monotonic() - start
            break
        time.sleep(0.05)
    print(f"\n[etcd] a key on a 2 s lease was gone after {gone_after:.2f} s" if gone_after else
          "\n[etcd] a key on a 2 s lease outlived 6 s")
    assert gone_after is not None and 2.0 <= gone_after <= 4.0


def test_leader_sigkill_elects_another_and_the_old_one_rejoins(etcd_cluster):
    old = etcd_cluster.leader()
    assert etcd_cluster.create_if_absent("before-kill", "v", member=old).get("succeeded") is True
    killed_at = time.monotonic()
    etcd_cluster.kill(old)
    new = etcd_cluster.leader(timeout=20)
    elected = time.monotonic() - killed_at
    r = etcd_cluster.create_if_absent("after-kill", "v", member=new)
    written = time.monotonic() - killed_at
    assert new is not old and r.status == 200 and r.get("succeeded") is True, r
    etcd_cluster.restart(old)
    back = etcd_cluster.get("after-kill", member=old)
    print(f"\n[etcd] leader {old.name} SIGKILLed: {new.name} elected after {elected:.2f} s, "
          f"first claim on it done after {written:.2f} s; {old.name} restarted with its data")
    assert back is not None and back["value"] == b"v"
    assert etcd_cluster.get("before-kill", member=old) is not None


def test_quorum_loss_answers_after_the_timeout_and_a_503_write_may_commit(etcd_cluster):
    """2 of 3 members SIGKILLed, the leader kept: first the old leader still leads (writes and
    linearizable reads 503 code 14 after the timeout, and those writes stay in its log), then it
    steps down (writes 500 code 2, dropped). One member back: the 503 write was committed."""
    section = CASES["quorum_lost"]
    wait_s = section["quorum_timeout_ms"] / 1000
    keep = etcd_cluster.leader()
    send = keep.send
    ctx = etcd_cases.Context(etcd_cases.baseline(send))
    failures = etcd_cases.run_steps(send, section["setup"], ctx)
    assert not failures, "\n".join(failures)

    pool = ThreadPoolExecutor(max_workers=8)
    figures = {}

    def phase(name):
        steps = section[name]
        requests = [etcd_cases.request_of(s, ctx) for s in steps]
        futures = [pool.submit(send, *req, timeout=30) for req in requests]
        out = []
        times = {}
        for step, fut in zip(steps, futures):
            status, raw, seconds = fut.result()
            serializable = "serializable" in json.dumps(step.get("body"))
            label = step["post"].rsplit("/", 1)[-1] + (" (serializable)" if serializable else "")
            times[label] = f"{status} in {seconds:.2f}s"
            out.extend(etcd_cases.check(step, status, raw, ctx))
            if step["delayed"] and not wait_s - 1 <= seconds <= wait_s + 2:
                out.append(f"{label}: answered after {seconds:.2f} s, not ~{wait_s} s")
            if not step["delayed"] and seconds > 1:
                out.append(f"{label}: took {seconds:.2f} s")
        figures[name] = times
        return out

    try:
        followers = etcd_cluster.followers()
        killed = etcd_cluster.lose_quorum(keep=keep)
        assert sorted(m.name for m in killed) == sorted(m.name for m in followers)
        failures += phase("leader_stale")
        stepped_down = keep.status() or {}
        assert not stepped_down.get("leader"), f"{keep.name} still leads alone: {stepped_down}"
        failures += phase("no_leader")
    finally:
        pool.shutdown(wait=True)
    back_at = time.monotonic()
    etcd_cluster.restart(killed[0], wait=False)
    etcd_cluster.wait_healthy([keep, killed[0]], timeout=30)
    recovered = time.monotonic() - back_at
    failures += etcd_cases.run_steps(send, section["after"], ctx)
    etcd_cluster.restart(killed[1])
    print(f"\n[etcd] quorum lost (2 of 3 SIGKILLed): {json.dumps(figures)}; one member back "
          f"-> healthy after {recovered:.2f} s, the write answered 503 was committed, the one "
          f"answered 500 was not")
    assert not failures, "\n".join(failures)
