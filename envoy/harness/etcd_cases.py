"""Runs `host-tests/etcd/gateway_cases.json` against a real etcd: the same cases the mock host's
etcd model must pass (host-tests/tests/suite/host_etcd.rs has the Rust twin of this runner), so
the model cannot drift from the real gateway. The file's "about" describes the step and pattern
language; keep both runners in step when extending it.
"""

from __future__ import annotations

import json
import re
import time

from . import paths
from .etcd import b64

CASES_PATH = paths.ROOT / "host-tests" / "etcd" / "gateway_cases.json"
BASELINE_KEY = "baseline"
_INT = re.compile(r"^-?[0-9]+$")


def load() -> dict:
    return json.loads(CASES_PATH.read_text())


class Context:
    """Saved variables and the case's baseline revision."""

    def __init__(self, base: int = 0):
        self.vars: dict = {}
        self.base = base


def render(t, ctx: Context):
    if isinstance(t, dict):
        if set(t) == {"$b64"}:
            return b64(t["$b64"])
        if set(t) == {"$b64_repeat"}:
            text, n = t["$b64_repeat"]
            return b64(text * n)
        if set(t) == {"$var"}:
            return ctx.vars[t["$var"]]
        return {k: render(v, ctx) for k, v in t.items()}
    if isinstance(t, list):
        return [render(v, ctx) for v in t]
    return t


def request_of(step: dict, ctx: Context):
    """(method, path, body bytes) of a step."""
    method = step.get("method", "POST")
    if "raw" in step:
        body = step["raw"].encode()
    elif "body" in step:
        body = json.dumps(render(step["body"], ctx)).encode()
    else:
        body = b""
    return method, step["post"], body


def _header_ok(actual, rev, ctx, where, out):
    if not isinstance(actual, dict):
        out.append(f"{where}: expected a header object, got {actual!r}")
        return
    want = {"cluster_id", "member_id", "revision", "raft_term"}
    if set(actual) != want:
        out.append(f"{where}: header keys {sorted(actual)} != {sorted(want)}")
    for k in want:
        if not (isinstance(actual.get(k), str) and _INT.match(actual[k])):
            out.append(f"{where}.{k}: {actual.get(k)!r} is not an int64 string")
    if rev != "any" and actual.get("revision") != str(ctx.base + rev):
        out.append(f"{where}.revision: {actual.get('revision')!r} != baseline {ctx.base} + {rev}")


def match(p, a, ctx: Context, where: str = "$") -> list:
    """Mismatches of actual `a` against pattern `p` (empty: it matches)."""
    out: list = []
    if p == "$any":
        return out
    if p == "$int64":
        if not (isinstance(a, str) and _INT.match(a)):
            out.append(f"{where}: {a!r} is not an int64 string")
        return out
    if p == "$string":
        if not isinstance(a, str):
            out.append(f"{where}: {a!r} is not a string")
        return out
    if isinstance(p, dict) and len(p) == 1 and next(iter(p)).startswith("$"):
        (op, arg), = p.items()
        if op == "$header":
            _header_ok(a, arg, ctx, where, out)
        elif op == "$rev":
            if a != str(ctx.base + arg):
                out.append(f"{where}: {a!r} != baseline {ctx.base} + {arg}")
        elif op == "$b64":
            if a != b64(arg):
                out.append(f"{where}: {a!r} != base64 of {arg!r}")
        elif op == "$var":
            if a != ctx.vars.get(arg):
                out.append(f"{where}: {a!r} != saved {arg} {ctx.vars.get(arg)!r}")
        elif op == "$between":
            lo, hi = arg
            if not (isinstance(a, str) and _INT.match(a) and lo <= int(a) <= hi):
                out.append(f"{where}: {a!r} not a decimal string from {lo} to {hi}")
        else:
            out.append(f"{where}: unknown pattern {op}")
        return out
    if isinstance(p, dict):
        if not isinstance(a, dict):
            return [f"{where}: expected an object, got {a!r}"]
        if set(p) != set(a):
            out.append(f"{where}: keys {sorted(a)} != expected {sorted(p)}")
        for k in p:
            if k in a:
                out.extend(match(p[k], a[k], ctx, f"{where}.{k}"))
        return out
    if isinstance(p, list):
        if not isinstance(a, list) or len(a) != len(p):
            return [f"{where}: expected {len(p)} items, got {a!r}"]
        for i, (pi, ai) in enumerate(zip(p, a)):
            out.extend(match(pi, ai, ctx, f"{where}[{i}]"))
        return out
    if p != a or type(p) is not type(a):
        out.append(f"{where}: {a!r} != {p!r}")
    return out


def dotted(value, path: str):
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def check(step: dict, status: int, raw: bytes, ctx: Context) -> list:
    """Mismatches of one answer against its step; saves the step's variables."""
    out = []
    label = f"{step.get('method', 'POST')} {step['post']}"
    if status != step["status"]:
        out.append(f"{label}: status {status} != {step['status']}: {raw[:300]!r}")
    if "text" in step and raw.decode("utf-8", "replace") != step["text"]:
        out.append(f"{label}: body {raw[:200]!r} != {step['text']!r}")
    if "ends_with" in step and not raw.decode("utf-8", "replace").endswith(step["ends_with"]):
        out.append(f"{label}: body does not end with {step['ends_with']!r}: {raw[-40:]!r}")
    if "reply" in step:
        try:
            body = json.loads(raw.decode("utf-8"))
        except ValueError:
            return out + [f"{label}: not JSON: {raw[:200]!r}"]
        out.extend(f"{label}: {m}" for m in match(step["reply"], body, ctx))
        for name, path in step.get("save", {}).items():
            try:
                ctx.vars[name] = dotted(body, path)
            except (KeyError, IndexError, TypeError):
                out.append(f"{label}: cannot save {name} from {path}")
    return out


def baseline(send) -> int:
    status, raw, _ = send("POST", "/v3/kv/range", json.dumps({"key": b64(BASELINE_KEY)}).encode())
    if status != 200:
        raise AssertionError(f"baseline range answered {status}: {raw[:200]!r}")
    return int(json.loads(raw)["header"]["revision"])


def run_steps(send, steps: list, ctx: Context, sleep=lambda ms: time.sleep(ms / 1000)) -> list:
    """Runs steps in order through `send(method, path, body) -> (status, raw, seconds)`."""
    failures = []
    for step in steps:
        if "sleep_ms" in step:
            sleep(step["sleep_ms"])
            continue
        status, raw, _ = send(*request_of(step, ctx))
        failures.extend(check(step, status, raw, ctx))
    return failures
