"""The suite's secret scan (tests/secret_scan.py) really fails a run that leaks a key, and only then.

Each case runs a tiny suite in a child pytest with the plugin registered, in a temporary
directory of its own (outside this suite's, so the keys made there stay there).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import secret_scan

from meshctl.keys import NodePrivate, SigningKey

CONFTEST = f"""
import sys
sys.path.insert(0, {str(Path(secret_scan.__file__).parent)!r})
import secret_scan

def pytest_configure(config):
    secret_scan.register(config)
"""

PRELUDE = """
import base64, logging, sys
from meshctl.identity import load_or_create_device_keys

def _keys(tmp_path):
    keys = load_or_create_device_keys(tmp_path / "state" / "keys")
    return base64.b64encode(keys.wireguard.private_bytes_for_device()).decode()

def test_keys_and_harmless_output(tmp_path):
    _keys(tmp_path)
    print("a public line")
"""

# How a key could leak -> where the scan must say it appeared.
LEAKS = {
    "print('key', secret)": "test_stdout: Captured stdout call",
    "print(raw.hex(), file=sys.stderr)": "test_stderr_hex: Captured stderr call",
    "logging.getLogger('x').warning('key=%s', secret)": "test_logging: Captured log call",
    "assert secret == 'x'": "test_failure_text: failure text",
    "(tmp_path / 'state' / 'agent.log').write_text('private_key=' + raw.hex())": "state/agent.log",
}


def leaking_test(name: str, body: str) -> str:
    return f"def test_{name}(tmp_path):\n    secret = _keys(tmp_path)\n    raw = base64.b64decode(secret)\n    {body}\n"


def run_suite(source: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The child run's result and the text forms of the keys it generated."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "conftest.py").write_text(CONFTEST)
        (root / "test_inner.py").write_text(source)
        env = {**os.environ, "MESHCTL_SECRET_SCAN": "require"}
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 f"--basetemp={root / 'tmp'}", str(root)],
                                cwd=root, env=env, capture_output=True, text=True, timeout=120)
        found = secret_scan.SecretScan()
        found.harvest(root / "tmp")
        return result, set(found.keys)


def test_a_run_that_leaks_nothing_passes() -> None:
    result, keys = run_suite(PRELUDE)
    assert keys and result.returncode == 0, result.stdout
    assert "no private key found" in result.stdout


def test_each_leaked_key_fails_the_run_and_is_named_not_repeated() -> None:
    names = ["stdout", "stderr_hex", "logging", "failure_text", "agent_log"]
    source = PRELUDE + "".join(leaking_test(n, body) for n, body in zip(names, LEAKS, strict=True))
    result, keys = run_suite(source)
    assert keys and result.returncode == 1, result.stdout
    scan_lines = [line for line in result.stdout.splitlines() if line.startswith("secret scan: ")]
    for where in LEAKS.values():
        assert any("state/keys/wireguard.key appears in" in line and where in line for line in scan_lines), \
            (where, scan_lines)
    assert not any(key in line for key in keys for line in scan_lines)  # the verdict never repeats a key


def test_finding_nothing_to_scan_fails_when_required() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "conftest.py").write_text(CONFTEST)
        (Path(tmp) / "test_empty.py").write_text("def test_nothing():\n    pass\n")
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 f"--basetemp={Path(tmp) / 'tmp'}", tmp], cwd=tmp,
                                env={**os.environ, "MESHCTL_SECRET_SCAN": "require"},
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "no private key files were found" in result.stdout
    assert "no captured test output and no log file was collected" in result.stdout


def test_every_text_form_of_a_key_is_searched() -> None:
    for key in (NodePrivate.generate(), SigningKey.generate()):
        raw = key.private_bytes_for_device()
        forms = secret_scan.secret_forms(raw)
        assert raw.hex() in forms and raw.hex().upper() in forms
        assert any(f.rstrip("=") == f for f in forms) and all(len(f) >= 40 for f in forms)
