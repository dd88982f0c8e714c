"""Every example under examples/ is loadable: plugin JSON configs and the configs embedded in the
Kubernetes manifests go through a real Envoy's `--mode validate` (on_configure runs); the static
bootstrap validates with the built .wasm."""

import json

import yaml

import pytest

from harness import paths
from harness.envoy import plugin_config_text, render_config, validate_text

EX = paths.EXAMPLES_DIR
JSON_FILES = sorted(EX.rglob("*.json"))
MANIFESTS = [EX / "istio" / "wasmplugin.yaml", EX / "envoy-gateway" / "envoyextensionpolicy.yaml"]


def _validate_plugin_config(config, run_dir, name):
    text = render_config("resetguard.yaml", PLUGIN_CONFIG=plugin_config_text(config))
    res = validate_text(text, run_dir, name)
    assert res.returncode == 0, (res.stdout + res.stderr)[-2500:]


def test_examples_exist():
    names = {p.name for p in JSON_FILES}
    assert {"minimal.json", "strict.json", "idempotency.json"} <= names
    assert all(p.is_file() for p in MANIFESTS)
    assert (EX / "envoy" / "bootstrap.yaml").is_file()


@pytest.mark.parametrize("path", JSON_FILES, ids=[p.stem for p in JSON_FILES])
def test_json_example_loads_in_envoy(path, run_dir):
    config = json.loads(path.read_text())  # parseable JSON
    assert isinstance(config, dict)
    _validate_plugin_config(path.read_text(), run_dir, path.stem)


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.parent.name for p in MANIFESTS])
def test_manifest_plugin_config_loads_in_envoy(path, run_dir):
    docs = [d for d in yaml.safe_load_all(path.read_text())
            if d["kind"] in ("WasmPlugin", "EnvoyExtensionPolicy")]
    assert len(docs) == 1, path
    doc = docs[0]
    spec = doc["spec"]
    if doc["kind"] == "WasmPlugin":
        assert doc["apiVersion"].startswith("extensions.istio.io/")
        config = spec["pluginConfig"]
    else:
        assert doc["kind"] == "EnvoyExtensionPolicy"
        assert doc["apiVersion"].startswith("gateway.envoyproxy.io/")
        config = spec["wasm"][0]["config"]
    _validate_plugin_config(config, run_dir, path.stem)


def test_static_bootstrap_example_validates(run_dir):
    text = (EX / "envoy" / "bootstrap.yaml").read_text()
    assert "/etc/envoy/resetguard.wasm" in text
    text = text.replace("/etc/envoy/resetguard.wasm", str(paths.require_wasm()))
    res = validate_text(text, run_dir, "bootstrap")
    assert res.returncode == 0, (res.stdout + res.stderr)[-2500:]
