"""etcd v3 for the end-to-end tests: one member or an N-member cluster on 127.0.0.1, data on
tmpfs, stopped by PID, plus small helpers for its JSON gateway (what the filter speaks through
`dispatch_http_call`).

Binaries: Debian's `etcd-server` / `etcd-client` (scripts/bootstrap installs them), or
`RESETGUARD_ETCD` / `RESETGUARD_ETCDCTL`. Ports: free loopback ports picked by binding port 0 and
releasing it just before etcd binds (a start that loses the race is retried on new ports). Data:
`/dev/shm/resetguard-etcd-*/<member>` (or `RESETGUARD_ETCD_DATA`), removed by `stop()` (and, if the
owning process was killed first, by the next start); a member killed alone keeps its data so
`restart()` brings it back as itself.

Every started cluster is registered with the harness's stop-all (`harness.envoy.stop_all`, run at
exit and by conftest's session finish) like Envoy processes are, and each member is spawned with
PR_SET_PDEATHSIG(SIGKILL): it dies with the Python thread that spawned it (so spawn and restart
from the test's main thread), also when pytest itself is killed.

Gateway facts the helpers rely on (pinned by envoy/tests/test_etcd_gateway.py): keys and values
are base64, int64 fields (revisions, lease IDs, TTLs) are JSON strings, a txn whose compare failed
has no `succeeded` field at all.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Optional

from . import envoy as _envoy
from . import paths
from .process import terminate

_PR_SET_PDEATHSIG = 1

# Active health checks of the etcd members for envoy/configs/resetguard-etcd.yaml
# (`ETCD_HEALTH_CHECKS`), a YAML flow list: etcd's /health answers 200 {"health":"true"} only with
# a leader and a read through raft, which it waits up to 1 s for (hence the timeout), else 503.
ENVOY_HEALTH_CHECKS = ("[{timeout: 1.5s, interval: 0.5s, no_traffic_interval: 0.5s, "
                       "unhealthy_threshold: 1, healthy_threshold: 1, "
                       "http_health_check: {path: /health}}]")


class EtcdError(RuntimeError):
    pass


def etcd_binary() -> str:
    return os.environ.get("RESETGUARD_ETCD") or shutil.which("etcd") or "/usr/bin/etcd"


def etcdctl_binary() -> str:
    return os.environ.get("RESETGUARD_ETCDCTL") or shutil.which("etcdctl") or "/usr/bin/etcdctl"


def require_etcd() -> str:
    path = etcd_binary()
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"no etcd at {path}. Install it with scripts/bootstrap (Debian's etcd-server and "
            f"etcd-client) or point RESETGUARD_ETCD at an etcd 3.4+ binary.")
    return path


def etcd_version() -> str:
    out = subprocess.run([require_etcd(), "--version"], capture_output=True, text=True,
                         timeout=10).stdout
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return out.strip()


def _data_root() -> Path:
    explicit = os.environ.get("RESETGUARD_ETCD_DATA")
    if explicit:
        return Path(explicit)
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else paths.RUN_DIR


def _sweep_orphans(root: Path) -> None:
    """Removes data left by a harness process that was killed before its stop() (its members
    died with it: PR_SET_PDEATHSIG)."""
    for d in root.glob("resetguard-etcd-*"):
        try:
            pid = int((d / "owner.pid").read_text())
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            continue


def _free_ports(n: int) -> list:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


# -- base64 and int64 --------------------------------------------------------------------------
def b64(data) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode("ascii")


def unb64(text: Optional[str]) -> bytes:
    return base64.b64decode(text or "")


def decode_kv(kv: dict) -> dict:
    """A gateway kv with key/value decoded and the int64 strings as ints (absent fields are 0,
    as the gateway omits zero values)."""
    return {
        "key": unb64(kv.get("key")),
        "value": unb64(kv.get("value")),
        "create_revision": int(kv.get("create_revision", 0)),
        "mod_revision": int(kv.get("mod_revision", 0)),
        "version": int(kv.get("version", 0)),
        "lease": int(kv.get("lease", 0)),
    }


class GatewayReply:
    """One gateway answer: HTTP status, the parsed JSON body (None if not JSON), the raw body and
    how long it took."""

    def __init__(self, status: int, raw: bytes, seconds: float):
        self.status = status
        self.raw = raw
        self.seconds = seconds
        try:
            self.json = json.loads(raw.decode("utf-8")) if raw else None
        except ValueError:
            self.json = None

    def __repr__(self):
        return f"GatewayReply({self.status}, {self.raw[:300]!r}, {self.seconds:.3f}s)"

    def __getitem__(self, name):
        return (self.json or {})[name]

    def get(self, name, default=None):
        return (self.json or {}).get(name, default)


def gateway_post(port: int, path: str, body, timeout: float = 15.0) -> GatewayReply:
    """POSTs `body` (a dict is JSON-encoded; bytes are sent as they are) to the gateway."""
    data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
    return gateway_request(port, "POST", path, bytes(data), timeout)


def gateway_request(port: int, method: str, path: str, data: bytes = b"",
                    timeout: float = 15.0) -> GatewayReply:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 data=data if method != "GET" else None, method=method,
                                 headers={"content-type": "application/json"})
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return GatewayReply(r.status, r.read(), time.monotonic() - start)
    except urllib.error.HTTPError as e:
        return GatewayReply(e.code, e.read(), time.monotonic() - start)


class Member:
    def __init__(self, cluster: "Etcd", name: str, client_port: int, peer_port: int,
                 data_dir: Path, log_path: Path):
        self.cluster = cluster
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None
        self._log_file = None

    def __repr__(self):
        state = "up" if self.alive() else "down"
        return f"<etcd member {self.name} client={self.client_port} peer={self.peer_port} {state}>"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, initial_cluster: str, state: str) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")
        cmd = [require_etcd(), "--name", self.name, "--data-dir", str(self.data_dir),
               "--listen-client-urls", self.client_url,
               "--advertise-client-urls", self.client_url,
               "--listen-peer-urls", self.peer_url,
               "--initial-advertise-peer-urls", self.peer_url,
               "--initial-cluster", initial_cluster,
               "--initial-cluster-state", state,
               "--initial-cluster-token", self.cluster.token,
               "--logger", "zap", "--log-outputs", "stderr",
               *self.cluster.extra_args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def kill(self) -> None:
        """SIGKILL (no clean shutdown); the data stays for restart()."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self) -> None:
        if self.proc is not None:
            terminate(self.proc)

    def close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def healthy(self, timeout: float = 2.0) -> bool:
        """Whether the member's gateway answers and says it has a leader (`/health`)."""
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=timeout) as r:
                return r.status == 200 and json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def status(self, timeout: float = 3.0) -> Optional[dict]:
        """`/v3/maintenance/status`: member_id (in header), leader, raftTerm… or None if down."""
        try:
            r = gateway_post(self.client_port, "/v3/maintenance/status", {}, timeout=timeout)
        except (OSError, urllib.error.URLError):
            return None
        return r.json if r.status == 200 else None

    def post(self, path: str, body, timeout: float = 15.0) -> GatewayReply:
        return gateway_post(self.client_port, path, body, timeout=timeout)

    def send(self, method: str, path: str, data: bytes, timeout: float = 15.0):
        """(status, raw body, seconds): the shape harness/etcd_cases.py sends through."""
        r = gateway_request(self.client_port, method, path, data, timeout)
        return r.status, r.raw, r.seconds

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


class Etcd:
    """An etcd cluster of `size` members on loopback. `start()` waits until every member's
    gateway answers healthy; `stop()` kills every member by PID and removes the data."""

    def __init__(self, size: int = 1, *, run_dir: Optional[Path] = None, name: str = "etcd",
                 extra_args: tuple = ()):
        if size < 1:
            raise ValueError("an etcd cluster has at least one member")
        self.size = size
        self.name = name
        self.token = f"resetguard-{uuid.uuid4().hex[:12]}"
        self.run_dir = Path(run_dir or paths.RUN_DIR / f"{name}-{uuid.uuid4().hex[:8]}")
        self.data_root = _data_root() / f"resetguard-etcd-{self.token.rsplit('-', 1)[1]}"
        self.extra_args = tuple(extra_args)
        self.members: list = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- lifecycle -------------------------------------------------------------------------------
    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def start(self, timeout: float = 30.0, attempts: int = 3) -> "Etcd":
        require_etcd()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _sweep_orphans(self.data_root.parent)
        self.data_root.mkdir(parents=True, exist_ok=True)
        (self.data_root / "owner.pid").write_text(str(os.getpid()))
        _envoy.register_running(self)
        last = None
        for attempt in range(attempts):
            ports = _free_ports(2 * self.size)
            self.members = [
                Member(self, f"m{i}", ports[2 * i], ports[2 * i + 1], self.data_root / f"m{i}",
                       self.run_dir / f"m{i}-{attempt}.log")
                for i in range(self.size)]
            initial = self._initial_cluster()
            for m in self.members:
                m._spawn(initial, "new")
            try:
                self.wait_healthy(timeout=timeout)
                return self
            except EtcdError as e:
                last = e
                self._kill_all()
                for m in self.members:
                    shutil.rmtree(m.data_dir, ignore_errors=True)
                # Lost a port race? Then some member exited at once: try new ports.
                if all(m.alive() for m in self.members):
                    break
        self.stop()
        raise last

    def _kill_all(self) -> None:
        for m in self.members:
            m.kill()
            m.close_log()

    def stop(self) -> None:
        """Kills every member (SIGKILL by PID: test data needs no clean shutdown) and removes the
        data directories."""
        self._kill_all()
        shutil.rmtree(self.data_root, ignore_errors=True)
        _envoy.unregister_running(self)

    def wait_healthy(self, members=None, timeout: float = 30.0) -> None:
        """Waits until each of `members` (default: every live one) answers `/health` true."""
        members = list(members if members is not None else [m for m in self.members if m.alive()])
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending:
            for m in list(pending):
                if not m.alive():
                    raise EtcdError(f"{m} exited with {m.proc.returncode}; log tail:\n"
                                    f"{m.log_tail()}")
                if m.healthy(timeout=1.0):
                    pending.remove(m)
            if pending:
                if time.monotonic() > deadline:
                    tails = "\n".join(f"--- {m}\n{m.log_tail(15)}" for m in pending)
                    raise EtcdError(f"etcd not healthy within {timeout}s:\n{tails}")
                time.sleep(0.05)

    def alive_members(self) -> list:
        return [m for m in self.members if m.alive()]

    def leader(self, timeout: float = 10.0) -> Member:
        """The member that says it is the leader (waits through an election)."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.alive_members():
                st = m.status(timeout=1.0)
                me = (st or {}).get("header", {}).get("member_id")
                if st and st.get("leader") and st["leader"] == me:
                    return m
            if time.monotonic() > deadline:
                raise EtcdError(f"no leader within {timeout}s")
            time.sleep(0.05)

    def followers(self) -> list:
        leader = self.leader()
        return [m for m in self.alive_members() if m is not leader]

    def kill(self, member: Member) -> Member:
        """SIGKILLs one member (its data stays for restart)."""
        member.kill()
        return member

    def kill_leader(self) -> Member:
        return self.kill(self.leader())

    def lose_quorum(self, keep: Optional[Member] = None) -> list:
        """Kills members until fewer than a majority is left (2 of 3), keeping `keep` (default: a
        follower) alive; answers the killed members."""
        if keep is None:
            followers = self.followers()
            keep = followers[0] if followers else self.alive_members()[0]
        killed = []
        majority = self.size // 2 + 1
        for m in self.alive_members():
            if len(self.alive_members()) < majority:
                break
            if m is not keep:
                killed.append(self.kill(m))
        return killed

    def restart(self, *members: Member, wait: bool = True, timeout: float = 30.0) -> None:
        """Starts stopped members again on their ports with their data; with `wait`, waits until
        every live member is healthy (which needs a quorum back)."""
        for m in members or [m for m in self.members if not m.alive()]:
            if m.alive():
                continue
            m._spawn(self._initial_cluster(), "existing")
        if wait:
            self.wait_healthy(timeout=timeout)

    # -- gateway ---------------------------------------------------------------------------------
    def member(self, member: Optional[Member] = None) -> Member:
        if member is not None:
            return member
        alive = self.alive_members()
        if not alive:
            raise EtcdError("no etcd member is running")
        return alive[0]

    @property
    def port(self) -> int:
        """The client port of the first live member (what a single-member test points Envoy at)."""
        return self.member().client_port

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    def envoy_endpoints(self) -> str:
        """Every member's client port as the `lb_endpoints` of an Envoy cluster, a YAML flow list
        (`ETCD_ENDPOINTS` of envoy/configs/resetguard-etcd.yaml)."""
        return "[" + ", ".join(
            "{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: %d}}}}"
            % m.client_port for m in self.members) + "]"

    def envoy_values(self, health_checks: bool = False) -> dict:
        """The template values of envoy/configs/resetguard-etcd.yaml for this cluster (with
        `health_checks`, ENVOY_HEALTH_CHECKS on the etcd cluster)."""
        values = {"ETCD_ENDPOINTS": self.envoy_endpoints()}
        if health_checks:
            values["ETCD_HEALTH_CHECKS"] = ENVOY_HEALTH_CHECKS
        return values

    def post(self, path: str, body, member: Optional[Member] = None,
             timeout: float = 15.0) -> GatewayReply:
        return self.member(member).post(path, body, timeout=timeout)

    def range(self, key, *, prefix: bool = False, serializable: bool = False,
              member: Optional[Member] = None, timeout: float = 15.0) -> GatewayReply:
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key if isinstance(key, bytes) else key.encode()))
        if serializable:
            body["serializable"] = True
        return self.post("/v3/kv/range", body, member, timeout)

    def kvs(self, key, *, prefix: bool = False, member: Optional[Member] = None) -> list:
        """Decoded kvs under `key` (or its prefix): what the filter stored."""
        r = self.range(key, prefix=prefix, member=member)
        if r.status != 200:
            raise EtcdError(f"range {key!r}: {r}")
        return [decode_kv(kv) for kv in r.get("kvs", [])]

    def get(self, key, member: Optional[Member] = None) -> Optional[dict]:
        kvs = self.kvs(key, member=member)
        return kvs[0] if kvs else None

    def put(self, key, value, lease: Optional[str] = None, member: Optional[Member] = None,
            timeout: float = 15.0) -> GatewayReply:
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return self.post("/v3/kv/put", body, member, timeout)

    def txn(self, compare: list, success: list, failure: list = (),
            member: Optional[Member] = None, timeout: float = 15.0) -> GatewayReply:
        return self.post("/v3/kv/txn", {"compare": list(compare), "success": list(success),
                                        "failure": list(failure)}, member, timeout)

    def create_if_absent(self, key, value, lease: Optional[str] = None,
                         member: Optional[Member] = None, timeout: float = 15.0) -> GatewayReply:
        """The filter's claim: put if the key's create_revision is 0, else read it back."""
        put = {"key": b64(key), "value": b64(value)}
        if lease:
            put["lease"] = str(lease)
        return self.txn([{"key": b64(key), "result": "EQUAL", "target": "CREATE",
                          "create_revision": "0"}],
                        [{"request_put": put}], [{"request_range": {"key": b64(key)}}],
                        member, timeout)

    def lease_grant(self, ttl: int, member: Optional[Member] = None,
                    timeout: float = 15.0) -> GatewayReply:
        return self.post("/v3/lease/grant", {"TTL": ttl}, member, timeout)

    def lease_id(self, ttl: int, member: Optional[Member] = None) -> str:
        r = self.lease_grant(ttl, member)
        if r.status != 200:
            raise EtcdError(f"lease grant: {r}")
        return r["ID"]

    def etcdctl(self, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess:
        env = dict(os.environ, ETCDCTL_API="3")
        return subprocess.run([etcdctl_binary(), "--endpoints", self.endpoints, *args],
                              capture_output=True, text=True, timeout=timeout, env=env)


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key with this prefix"."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[:i + 1])
    return b"\0"
