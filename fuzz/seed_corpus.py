#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ (committed; rerun after a format change).

Seeds are valid and near-valid inputs of each target's input layout (see fuzz_targets/*.rs), so
libFuzzer starts from the shapes the filter really sees instead of from nothing."""
import glob
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for s in seeds:
        if isinstance(s, str):
            s = s.encode()
        name = hashlib.sha1(s).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as f:
            f.write(s)


def configs():
    seeds = ["", "{}", "{not json", "[]", '{"retry":{}}']
    for f in sorted(glob.glob(os.path.join(HERE, "..", "examples", "config", "*.json"))):
        seeds.append(open(f).read())
    for f in sorted(glob.glob(os.path.join(HERE, "..", "scenarios", "*.json"))):
        c = json.load(open(f)).get("config")
        if c is not None:
            seeds.append(c if isinstance(c, str) else json.dumps(c))
    seeds += [
        '{"retry":{"max_retries":10,"on":["reset","5xx","retriable-4xx"],"per_try_timeout_ms":3600000,'
        '"retriable_status_codes":[503,504],"idempotent_methods":["GET","PUT"],'
        '"trust_client_retry_headers":true}}',
        '{"idempotency":{"shards":1,"max_entries":65535,"max_key_length":1,"scope_headers":[],'
        '"path_prefixes":["/a"],"header":"X-Key","when_full":"pass_through","mode":"report",'
        '"unknown_outcome":"complete","ttl_seconds":1,"lock_timeout_ms":100}}',
        '{"client_abort":{"log_level":"info","filter_state":true}}',
        '{"retry":{"max_retries":1e309}}',
        '{"retry":{"max_retries":-0}}',
        '{"idempotency":{"max_entries":18446744073709551615,"shards":4294967296}}',
    ]
    return seeds


def keys():
    raw = [b'"8e03978e-40d5-43e8-bc93-6894a57f9324"', b"abc-123_x.y:z/=", b'"a\\"b\\\\c"',
           b"  padded ", b'""', b'"unterminated', b'"a";p=1', b"k\xc3\xa9", b"a,b", b"x" * 300]
    return [bytes([254]) + r for r in raw] + [bytes([3]) + b"abcd"]


def problems():
    return [bytes([i]) + struct.pack("<H", 15) + b"idempotency-key" + struct.pack("<H", 255)
            + d for i, d in enumerate([b"why \"quoted\"", b"\xff\xfe", b"\\u0000", b"\x00\x1f", b"</script>",
                                       "\u2028 \U0001f600".encode(), b"", b"{\"a\":1}"])]


def slot(identity, owner, status, headers, body):
    out = b"RGS1" + identity + struct.pack("<QHH", owner, status, len(headers))
    for n, v in headers:
        out += struct.pack("<H", len(n)) + n + struct.pack("<I", len(v)) + v
    return out + struct.pack("<I", len(body)) + body


def index(entries):
    out = b"RGI1" + struct.pack("<H", len(entries))
    for ident, fp, owner, slot_, status, kind, time in entries:
        out += ident + fp + struct.pack("<QHHBQ", owner, slot_, status, kind, time)
    return out


def stored():
    ident = bytes(range(16))
    s = slot(ident, 42, 201, [(b"content-type", b"application/json"), (b"x-empty", b"")], b"created")
    idx = index([(b"\x01" * 16, b"\x02" * 16, 7, 0, 0, 1, 10_000),
                 (b"\x03" * 16, b"\x04" * 16, 9, 1, 201, 2, 90_000),
                 (b"\x05" * 16, b"\x06" * 16, 11, 0xFFFF, 500, 3, 90_000)])
    # Mode 0: arbitrary bytes (valid values included); 1: a response to round-trip; 2: an index
    # (length-prefixed) then transitions.
    rt = (bytes([1]) + ident + struct.pack("<QH", 42, 201) + bytes([3])
          + struct.pack("<H", 12) + b"content-type" + struct.pack("<H", 4) + b"text"
          + struct.pack("<H", 10) + b"connection" + struct.pack("<H", 5) + b"x-hop"
          + struct.pack("<H", 5) + b"x-hop" + struct.pack("<H", 1) + b"1" + b"body")
    tr = (bytes([2, 3]) + struct.pack("<H", len(idx)) + idx + struct.pack("<QHH", 5_000, 1000, 60)
          + bytes([1, 2, 7, 0, 0, 0]) + bytes([1, 2, 7, 0, 0, 3, 1, 201, 0])
          + bytes([1, 2, 7, 0, 0, 0]) + bytes([9, 9, 9, 0, 0, 1]) + bytes([9, 9, 9, 0, 0, 4]))
    return [bytes([0]) + s, bytes([0]) + idx, bytes([0]) + b"RGI1\x00\x00", bytes([0]), rt, tr]


def classify():
    def case(method, name, status, flags, seen, details):
        out = struct.pack("<H", len(method)) + method + struct.pack("<H", len(name)) + name
        out += struct.pack("<H", len(status)) + status + struct.pack("<H", len(flags)) + flags
        st, headers, ended, f = seen
        out += bytes([1 if st is not None else 0]) + (struct.pack("<H", st) if st is not None else b"")
        out += bytes([headers, ended, 1 if f is not None else 0])
        out += struct.pack("<Q", f) if f is not None else b""
        return out + (bytes([1]) + details if details is not None else bytes([0]))
    return [
        case(b"GET", b"x-envoy-retry-on", b"200", struct.pack("<Q", 0), (200, 1, 1, None), None),
        case(b"POST", b"X-Envoy-Max-Retries", b"503", struct.pack("<Q", 0x10), (503, 1, 1, 0x10), b""),
        case(b"PUT", b"x-envoy-retriable-status-codes", b"99", b"", (None, 0, 0, 0x4000), None),
        case(b"get", b"x-envoy-hedge-on-per-try-timeout", b"1000", b"\x00" * 8, (None, 0, 0, None),
             b"downstream_remote_disconnect"),
        case(b"DELETE", b"idempotency-key", b"204", b"\xff" * 8, (200, 1, 0, 0x1000_0000), b"http2.remote_reset"),
        case(b"QUERY", b"x-envoy-upstream-rq-per-try-timeout-ms", b"5x0", b"", (None, 0, 0, 0x20), b"upstream_reset"),
    ]


def store_ops():
    # Per op: clock step, op (0/1 claim: identity, fingerprint; 2 complete: ticket, status,
    # header byte, body, keep; 3 release; 4 garbage over a shard; 5 peek).
    return [
        bytes([0, 0, 1, 0, 0, 0, 1, 0]),
        bytes([0, 0, 1, 0, 0, 2, 0, 1, 1, 3, 1, 2, 3, 0, 0, 1, 0]),
        bytes([0, 0, 2, 1, 0, 3, 0, 0, 0, 2, 1]),
        bytes([0, 4, 0, 10]) + b"RGI1\x01\x00" + bytes([0, 0, 1, 0]),
        bytes([200, 0, 3, 0, 200, 5, 3, 250, 0, 3, 1]),
    ]


write("config", configs())
write("idempotency_key", keys())
write("problem_json", problems())
write("stored_entries", stored())
write("classify", classify())
write("store_ops", store_ops())
