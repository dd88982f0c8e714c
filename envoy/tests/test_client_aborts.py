"""Client aborts against a real Envoy 1.40: 1,000 clients that leave mid-request in the
three phases (request still arriving, waiting for the upstream, during the response body), the
idempotency claims of keyed requests whose client left, and the access-log format the README
documents.

Every client is a raw loopback socket that is closed at a known point; runs are bounded in
count and time (1,000 aborts in batches of 100; about 10 s of wall time on 2 cores).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import pytest

from harness import client, paths
from harness.envoy import Envoy
from harness.results import record
from harness.upstream import ChaosUpstream
from helpers import counters_delta

PHASES = ("before_request_complete", "awaiting_upstream", "during_response")
ABORTS = 1000
BATCH = 100
# An upstream that would make Envoy retry: it resets a GET (retriable) long after the client left.
UPSTREAM_RESET_AFTER_MS = 2000
CLIENT_WAITS_MS = 300
# A response whose body stalls after its first bytes, so the client leaves mid-body.
SLOW_BODY = b"x" * 4000
SLOW_BODY_PREFIX = 1000
SLOW_BODY_STALL_MS = 3000
KEY_HEADER = "idempotency-key"


class AbortUpstream(ChaosUpstream):
    """The chaos upstream plus one action: `slow_body` sends the headers and the first bytes of
    the body, stalls, then sends the rest (the client leaves during the stall)."""

    def _act(self, conn, req, action):
        if action.get("action") != "slow_body":
            return super()._act(conn, req, action)
        status = int(action.get("status", 200))
        head = (f"HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\n"
                f"content-length: {len(SLOW_BODY)}\r\n\r\n").encode()
        conn.sendall(head + SLOW_BODY[:SLOW_BODY_PREFIX])
        end = time.monotonic() + action.get("stall_ms", SLOW_BODY_STALL_MS) / 1000
        while time.monotonic() < end and not self._stopping.is_set():
            time.sleep(0.02)
        try:
            conn.sendall(SLOW_BODY[SLOW_BODY_PREFIX:])
        except OSError:
            return False  # Envoy reset it when the client left
        return True


def _behaviour(req, attempt):
    """Per path: /brc/ never completes (its body never arrives), /au/ is reset long after the
    client left (a second attempt would be a retry and is answered at once), /dr/ stalls mid-body."""
    if req.path.startswith("/au/"):
        if attempt == 0:
            return {"action": "reset_before_headers", "delay_ms": UPSTREAM_RESET_AFTER_MS}
        return {"action": "respond", "status": 200, "body": "retried"}
    if req.path.startswith("/dr/"):
        return {"action": "slow_body"}
    return {"action": "respond", "status": 200, "body": "ok"}


@pytest.fixture
def abort_upstream():
    up = AbortUpstream(default=_behaviour).start()
    up.keep_requests = 0  # only counts and times are needed
    yield up
    up.stop()


# -- clients that leave ---------------------------------------------------------------------------
@dataclass
class Left:
    phase: str
    tag: str
    closed_at: float = 0.0
    as_planned: bool = False  # the client left at the point its phase names
    status: Optional[int] = None


def _open(port: int, method: str, path: str, tag: str, headers: dict, length: int,
          body: bytes) -> socket.socket:
    lines = [f"{method} {path} HTTP/1.1", "host: localhost", f"x-scenario-request: {tag}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if method == "POST":
        lines.append(f"content-length: {length}")
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return s


def _close(s: socket.socket, left: Left) -> Left:
    left.closed_at = time.monotonic()
    s.close()
    return left


def leave_before_request_complete(port: int, tag: str, headers: Optional[dict] = None,
                                  path: Optional[str] = None) -> Left:
    """Announces a 1,000-byte body, sends 10 bytes of it, leaves."""
    left = Left("before_request_complete", tag)
    s = _open(port, "POST", path or f"/brc/{tag}", tag, headers or {}, 1000, b'{"n":1,   ')
    time.sleep(0.05)
    left.as_planned = True
    return _close(s, left)


def leave_awaiting_upstream(port: int, tag: str, method: str = "GET", body: bytes = b"",
                            headers: Optional[dict] = None, path: Optional[str] = None,
                            wait_ms: int = CLIENT_WAITS_MS) -> Left:
    """Sends a whole request, waits without an answer, leaves."""
    left = Left("awaiting_upstream", tag)
    s = _open(port, method, path or f"/au/{tag}", tag, headers or {}, len(body), body)
    s.settimeout(wait_ms / 1000)
    try:
        s.recv(1)  # an answer, or Envoy closing: not what this client is for
    except socket.timeout:
        left.as_planned = True
    return _close(s, left)


def leave_during_response(port: int, tag: str, method: str = "GET", body: bytes = b"",
                          headers: Optional[dict] = None, path: Optional[str] = None) -> Left:
    """Reads the response headers, leaves before the body is complete."""
    left = Left("during_response", tag)
    s = _open(port, method, path or f"/dr/{tag}", tag, headers or {}, len(body), body)
    got = b""
    try:
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except socket.timeout:
        pass
    head, _, rest = got.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 "):
        left.status = int(head.split(b" ", 2)[1])
        left.as_planned = len(rest) < len(SLOW_BODY)
    return _close(s, left)


LEAVE = {"before_request_complete": leave_before_request_complete,
         "awaiting_upstream": leave_awaiting_upstream,
         "during_response": leave_during_response}


def _start_envoy(run_dir, upstream, plugin_config, access_log_format: Optional[str] = None):
    e = Envoy(plugin_config=plugin_config, upstream_port=upstream.port, concurrency=2,
              run_dir=run_dir, name="aborts")
    if access_log_format is not None:
        e.config_text = re.sub(r'inline_string: ".*"', lambda _: "inline_string: "
                               + _yaml_quoted(access_log_format), e.config_text, count=1)
        e.config_path.write_text(e.config_text)
    return e.start()


def _yaml_quoted(fmt: str) -> str:
    return '"' + fmt.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _wait_counter(envoy, before, name, n, timeout=15.0):
    def done():
        now = envoy.filter_counters()
        return now if now.get(name, 0) - before.get(name, 0) >= n else None
    return envoy.wait_for(done, timeout=timeout) or envoy.filter_counters()


# -- 1,000 aborts ---------------------------------------------------------------------------------
def test_1000_clients_that_leave_are_client_aborts_and_start_no_upstream_work(
        run_dir, abort_upstream):
    envoy = _start_envoy(run_dir, abort_upstream, {})
    try:
        t0 = time.monotonic()
        before = envoy.filter_counters()
        stats_before = envoy.stats("cluster\\.upstream\\.upstream_rq_(retry|total)$")
        mark = envoy.log_mark()
        jobs = [(PHASES[i % 3], f"a6-{i}") for i in range(ABORTS)]
        left: list = []
        # The control: a client that stays gets the retry the aborted ones never caused.
        control = {}
        stays = threading.Thread(target=lambda: control.update(r=client.request(
            envoy.port, "GET", "/au/control", {"x-scenario-request": "a6-control"})))
        stays.start()
        with ThreadPoolExecutor(max_workers=BATCH) as pool:
            for start in range(0, ABORTS, BATCH):
                batch = jobs[start:start + BATCH]
                left += pool.map(lambda job: LEAVE[job[0]](envoy.port, job[1]), batch)
        clients_s = time.monotonic() - t0
        stays.join(timeout=30)
        assert (control["r"].status, control["r"].body) == (200, b"retried"), control
        assert abort_upstream.attempts("a6-control") == 2
        planned = {p: sum(1 for l in left if l.phase == p and l.as_planned) for p in PHASES}
        assert all(l.as_planned for l in left), (
            planned, [l for l in left if not l.as_planned][:5])
        assert all(l.status == 200 for l in left if l.phase == "during_response")

        # Envoy stays up and keeps serving.
        assert envoy.alive()
        r = client.request(envoy.port, "GET", "/after", {"x-scenario-request": "a6-after"})
        assert (r.status, r.body) == (200, b"ok"), r

        after = _wait_counter(envoy, before, "resetguard.outcome.client_abort", ABORTS)
        delta = counters_delta(before, after)
        # Wait past the upstream's reset of the last 'awaiting' request: a retry would start then.
        last_close = max(l.closed_at for l in left)
        time.sleep(max(0.0, last_close + (UPSTREAM_RESET_AFTER_MS + 500) / 1000 - time.monotonic()))
        delta = counters_delta(before, envoy.filter_counters())
        stats = counters_delta(stats_before,
                               envoy.stats("cluster\\.upstream\\.upstream_rq_(retry|total)$"))

        # Counted as client aborts, by phase, and as nothing else.
        assert delta.get("resetguard.outcome.client_abort") == ABORTS, delta
        by_phase = {p: delta.get(f"resetguard.client_abort.{p}", 0) for p in PHASES}
        assert by_phase == {p: sum(1 for l in left if l.phase == p) for p in PHASES}, delta
        for other in ("upstream_reset", "truncated", "incomplete"):
            assert f"resetguard.outcome.{other}" not in delta, delta
        assert delta.get("resetguard.outcome.completed") == 2, delta  # the control, the one after
        assert "resetguard.host_errors" not in delta, delta

        # No upstream work after the aborts: no attempt for a request whose body never came, at
        # most the one attempt that was in flight otherwise, none received after the client left
        # (the upstream resets 1.7 s later, which Envoy would retry, as it did for the control),
        # and Envoy's router counted no retry but the control's.
        with abort_upstream._lock:
            times = list(abort_upstream.attempt_times)
            by_tag = dict(abort_upstream.attempts_by_tag)
        closed = {l.tag: l.closed_at for l in left}
        lags = [at - closed[tag] for at, tag in times if tag in closed]
        # A retry would come >= 1.7 s after the close; a request Envoy had already written
        # upstream when it noticed the close on a loaded machine may arrive a little after it.
        late = [lag for lag in lags if lag > 0.25]
        assert late == [], late[:5]
        brc = [l.tag for l in left if l.phase == "before_request_complete"]
        assert sum(by_tag.get(t, 0) for t in brc) == 0
        assert max(by_tag.get(l.tag, 0) for l in left) == 1
        in_flight = sum(1 for l in left if by_tag.get(l.tag, 0) == 1)
        assert stats.get("cluster.upstream.upstream_rq_retry") == 1, stats  # the control's only

        # The filter logged nothing above info, and at its default (debug) nothing at info.
        assert envoy.wasm_lines_above("info", since=mark) == []
        assert [l for l in envoy.wasm_log_lines(since=mark, min_level="info")
                if "client_abort" in l] == []

        # The access log shows the 499-class outcome and the phase for every abort.
        envoy.wait_for(lambda: len(envoy.access_log()) >= ABORTS + 2, timeout=10)
        lines = {m.group(1): line for line in envoy.access_log()
                 if (m := re.search(r" tag=(a6-\d+) ", line))}
        assert len(lines) == ABORTS
        for l in left:
            line = lines[l.tag]
            code = "200" if l.phase == "during_response" else "0"
            assert line.startswith(f"{code} DC client_abort code=499 abort_phase={l.phase} "), line
        elapsed = time.monotonic() - t0
        record("client_aborts.aborts_1000", {
            "aborts": ABORTS, "by_phase": by_phase,
            "outcome.client_abort": delta.get("resetguard.outcome.client_abort"),
            "upstream_attempts_in_flight_at_abort": in_flight,
            "max_attempt_lag_after_close_s": round(max(lags, default=0.0), 3),
            "upstream_rq_total": stats.get("cluster.upstream.upstream_rq_total", 0),
            "upstream_rq_retry_incl_control": stats.get("cluster.upstream.upstream_rq_retry", 0),
            "clients_s": round(clients_s, 2), "elapsed_s": round(elapsed, 2)})
        print(f"[client aborts] {ABORTS} aborts in {clients_s:.1f}s (test {elapsed:.1f}s): {by_phase}; "
              f"upstream attempts in flight at the abort {in_flight}, router retries "
              f"{stats.get('cluster.upstream.upstream_rq_retry', 0)} (the control's)")
    finally:
        envoy.stop()


# -- idempotency ----------------------------------------------------------------------------------
def _keyed_post(envoy, key, tag, path="/orders"):
    # The same authority as the raw clients': the key's scope includes it.
    return client.request(envoy.port, "POST", path,
                          {"host": "localhost", KEY_HEADER: key,
                           "content-type": "application/json", "x-scenario-request": tag},
                          b'{"n":1}', timeout=10)


@pytest.mark.parametrize("unknown_outcome", ["release", "complete"])
def test_a_keyed_client_that_left_is_not_stuck_behind_its_claim(run_dir, abort_upstream,
                                                               unknown_outcome):
    envoy = _start_envoy(run_dir, abort_upstream,
                         {"idempotency": {"unknown_outcome": unknown_outcome}})
    up = abort_upstream
    created = {"action": "respond", "status": 201, "headers": {"content-type": "application/json"},
               "body": '{"order":"o-1"}'}
    try:
        before = envoy.filter_counters()
        results = {}

        # Before the request was complete: never executed, never claimed.
        key = f"k6-brc-{unknown_outcome}"
        up.plan("/brc/" + key, [created])
        leave_before_request_complete(envoy.port, "brc-" + key, {KEY_HEADER: key},
                                      path="/brc/" + key)
        _wait_counter(envoy, before, "resetguard.client_abort.before_request_complete", 1)
        r = _keyed_post(envoy, key, "brc-retry", path="/brc/" + key)
        results["before_request_complete"] = (r.status, up.key_attempts(key))
        assert (r.status, up.key_attempts(key)) == (201, 1), r

        # Waiting for the upstream: it received the request, the outcome is unknown.
        key = f"k6-au-{unknown_outcome}"
        up.plan("/orders/au-" + key, [{**created, "delay_ms": 800}, created])
        leave_awaiting_upstream(envoy.port, "au-" + key, "POST", b'{"n":1}', {KEY_HEADER: key},
                                path="/orders/au-" + key, wait_ms=200)
        # The claim is finished in on_log, before the abort is counted.
        _wait_counter(envoy, before, "resetguard.client_abort.awaiting_upstream", 1)
        r = _keyed_post(envoy, key, "au-retry", path="/orders/au-" + key)
        results["awaiting_upstream"] = (r.status, up.key_attempts(key))
        if unknown_outcome == "release":
            assert (r.status, up.key_attempts(key)) == (201, 2), r  # the retry ran, not a 409
        else:
            assert r.status == 409 and ":idempotency-client-left" in r.body.decode(), r
            assert "upstream_status" not in r.body.decode(), r  # none came back
            assert up.key_attempts(key) == 1

        # During the response: it ran and its response was cut; it must not run again.
        key = f"k6-dr-{unknown_outcome}"
        left = leave_during_response(envoy.port, "dr-" + key, "POST", b'{"n":1}',
                                     {KEY_HEADER: key}, path="/dr/" + key)
        assert left.as_planned and left.status == 200, left
        _wait_counter(envoy, before, "resetguard.client_abort.during_response", 1)
        r = _keyed_post(envoy, key, "dr-retry", path="/dr/" + key)
        results["during_response"] = (r.status, up.key_attempts(key))
        assert r.status == 409 and ":idempotency-client-left" in r.body.decode(), r
        assert '"upstream_status":200' in r.body.decode(), r  # what the upstream really sent
        assert up.key_attempts(key) == 1

        # The response completed (the client read only its headers, then left): stored, replayed.
        key = f"k6-done-{unknown_outcome}"
        up.plan("/orders/done-" + key, [created])
        s = _open(envoy.port, "POST", "/orders/done-" + key, "done-" + key, {KEY_HEADER: key},
                  7, b'{"n":1}')
        assert s.recv(12).startswith(b"HTTP/1.1 201")
        s.close()
        _wait_counter(envoy, before, "resetguard.idempotency.stored", 1)
        r = _keyed_post(envoy, key, "done-retry", path="/orders/done-" + key)
        results["response_complete"] = (r.status, up.key_attempts(key))
        assert (r.status, r.header("idempotent-replayed"), r.body) == (
            201, "true", b'{"order":"o-1"}'), r
        assert up.key_attempts(key) == 1

        delta = counters_delta(before, envoy.filter_counters())
        assert "resetguard.idempotency.in_flight_conflicts" not in delta, delta
        assert delta.get("resetguard.outcome.client_abort") == 3, delta
        record(f"client_aborts.keyed_aborts.{unknown_outcome}", results)
    finally:
        envoy.stop()


# -- the README's access-log format ---------------------------------------------------------------
def _readme_format() -> str:
    text = (paths.ROOT / "README.md").read_text()
    found = re.findall(r"^(\[%START_TIME%\].*wasm\.resetguard_code:PLAIN.*)$", text, re.M)
    assert len(found) == 1, "README: one access-log format line for client aborts"
    return found[0] + "\n"


def test_the_readme_access_log_format_prints_the_abort(run_dir, abort_upstream):
    envoy = _start_envoy(run_dir, abort_upstream, {}, access_log_format=_readme_format())
    try:
        for phase in PHASES:
            LEAVE[phase](envoy.port, f"fmt-{phase}")
        client.request(envoy.port, "GET", "/fine", {"x-scenario-request": "fmt-fine"})
        envoy.wait_for(lambda: len(envoy.access_log()) >= 4, timeout=10)
        lines = envoy.access_log()
        for phase, path in zip(PHASES, ("/brc/", "/au/", "/dr/")):
            line = next(l for l in lines if path in l)
            assert "outcome=client_abort code=499 " in line, line
            assert f"abort_phase={phase} " in line, line
            assert " DC downstream_remote_disconnect " in line, line
        fine = next(l for l in lines if "/fine" in l)
        assert " 200 - via_upstream outcome=- code=- abort_phase=- " in fine, fine
        record("client_aborts.access_log_format", {"format": _readme_format().strip(),
                                            "lines": lines[:4]})
    finally:
        envoy.stop()
