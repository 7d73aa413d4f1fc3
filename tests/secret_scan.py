"""A pytest plugin: no private key the suite generated may appear in what the suite printed or logged.

It gathers every test report's captured stdout, stderr, log and failure text, and the
`*.log` files (agent.log, lab daemons) under the suite's temporary directories. The
keys are the private key files found there: `<state_dir>/keys/*`, admin keys and relay
keys (`*.key`), each searched for in base64 and hex. Lab directories are deleted at
lab teardown, so they are harvested before every teardown; pytest's own temporary
directories live until the session ends and are harvested then.

The verdict is given in pytest_sessionfinish: a key found sets the exit status to 1
(so `make test` fails) and names the key file and where it appeared, never the key. On
a whole-suite run it also fails when it found no keys or no outputs, so it cannot pass
by looking at nothing. MESHCTL_SECRET_SCAN=require forces that check on any run,
=off disables the plugin.
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SKIP_DIRS = frozenset({".git", "objects", "repo.git", "__pycache__", "site-packages"})
MAX_LOG_BYTES = 32 * 1024 * 1024  # one log larger than this is read from its tail
LAB_GLOB = "*-lab"  # lab.core.Lab's temporary directories
LAB_RUN_DIR = Path("/run/meshctl-lab")  # lab.core.RUN_DIR: one file per live lab run
TESTS_DIR = Path(__file__).resolve().parent


def secret_forms(raw: bytes) -> tuple[str, ...]:
    """The text forms a leaked key could take: base64 (with and without padding), hex."""
    b64 = base64.b64encode(raw).decode()
    return (b64, b64.rstrip("="), base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex(), raw.hex().upper())


def key_from_file(path: Path) -> bytes | None:
    """The raw private key in a meshctl key file (one base64 line), else None."""
    try:
        text = path.read_bytes()[:200].strip()
        raw = base64.b64decode(text, validate=True)
    except (OSError, binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def is_key_file(path: Path) -> bool:
    return path.suffix == ".key" or path.parent.name == "keys"


@dataclass
class SecretScan:
    keys: dict[str, str] = field(default_factory=dict)  # secret text -> the key file it came from
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    logs: dict[str, str] = field(default_factory=dict)  # log path -> last content seen
    require: bool = False

    # --- harvesting -------------------------------------------------------------------------

    def harvest(self, root: Path) -> None:
        for path in _walk(root):
            if is_key_file(path):
                raw = key_from_file(path)
                if raw is not None:
                    for form in secret_forms(raw):
                        self.keys.setdefault(form, str(path))
            elif path.suffix == ".log":
                self.logs[str(path)] = _read_tail(path)

    def harvest_labs(self) -> None:
        for lab in Path(tempfile.gettempdir()).glob(LAB_GLOB):
            if _lab_is_ours(lab):  # other sessions on this machine run labs of their own
                self.harvest(lab)

    def record_report(self, report: pytest.TestReport) -> None:
        for title, text in report.sections:
            if text:
                self.outputs.append((f"{report.nodeid}: {title}", text))
        if report.longrepr is not None:
            self.outputs.append((f"{report.nodeid}: failure text", str(report.longrepr)))

    # --- verdict ------------------------------------------------------------------------------

    def leaks(self) -> list[str]:
        found: list[str] = []
        texts = [*self.outputs, *((f"log {p}", t) for p, t in self.logs.items())]
        for where, text in texts:
            for secret, key_file in self.keys.items():
                if len(secret) >= 40 and secret in text:
                    found.append(f"the private key in {key_file} appears in {where}")
                    break
        return found

    def problems(self) -> list[str]:
        problems = self.leaks()
        if self.require and not self.keys:
            problems.append("no private key files were found under the suite's temporary directories")
        if self.require and not self.outputs and not self.logs:
            problems.append("no captured test output and no log file was collected")
        return problems


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".git")]
        for name in filenames:
            yield Path(dirpath, name)


def _lab_is_ours(lab: Path) -> bool:
    """Lab dirs are `<prefix>-<run id>-<random>-lab`; the run file `<prefix>-<run id>` holds the owner's pid."""
    run = lab.name.removesuffix("-lab").rsplit("-", 1)[0]
    try:
        owner = (LAB_RUN_DIR / run).read_text().split()[0]
    except (OSError, IndexError):
        return False
    return owner == str(os.getpid())


def _read_tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - MAX_LOG_BYTES))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


class SecretScanPlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        mode = os.environ.get("MESHCTL_SECRET_SCAN", "")
        self.scan = SecretScan(require=mode == "require" or (mode == "" and _whole_suite(config)))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        self.scan.harvest_labs()  # before fixtures delete the lab's directories
        yield

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.scan.record_report(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        factory = getattr(self.config, "_tmp_path_factory", None)
        if factory is not None:
            self.scan.harvest(factory.getbasetemp())
        self.scan.harvest_labs()
        problems = self.scan.problems()
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if problems:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            if reporter is not None:
                reporter.write_sep("=", "secret scan: FAILED", red=True)
                for problem in problems:
                    reporter.write_line(f"secret scan: {problem}")
        elif reporter is not None and self.scan.require:
            reporter.write_line(f"secret scan: {len(self.scan.keys)} key forms, {len(self.scan.outputs)} outputs "
                                f"and {len(self.scan.logs)} logs scanned, no private key found")


def _whole_suite(config: pytest.Config) -> bool:
    """The run covers the whole suite (e.g. `make test`): then finding no key is itself a failure."""
    option = config.option
    if option.keyword or option.markexpr or option.collectonly or getattr(option, "lf", False):
        return False
    return {Path(a).resolve() for a in config.args} == {TESTS_DIR}


def register(config: pytest.Config) -> None:
    if os.environ.get("MESHCTL_SECRET_SCAN") != "off":
        config.pluginmanager.register(SecretScanPlugin(config), "meshctl-secret-scan")
