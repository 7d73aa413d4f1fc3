"""Finding 8 of issue 21: the coordination repository's CI needs MESHCTL_URL (where a meshctl
binary is published), and nothing told the admin. The README says it where a mesh is created;
the CI jobs fail with a line naming it while it is unset, and install the binary once it is."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "coord-repo-template"


def _block_after(lines: list[str], start: int) -> str:
    """The YAML block scalar (`key: |` or `- |`) opening at line `start`."""
    indent = len(lines[start]) - len(lines[start].lstrip())
    body = []
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line)
    return textwrap.dedent("\n".join(body))


def github_install_step() -> str:
    lines = (TEMPLATE / ".github" / "workflows" / "meshctl-verify.yml").read_text().splitlines()
    step = next(i for i, ln in enumerate(lines) if ln.strip() == "- name: Install meshctl")
    run = next(i for i in range(step, len(lines)) if lines[i].strip() == "run: |")
    env = "\n".join(lines[step:run])
    assert "MESHCTL_URL: ${{ vars.MESHCTL_URL }}" in env  # the repository variable reaches the step
    return _block_after(lines, run)


def gitlab_install_step() -> str:
    lines = (TEMPLATE / ".gitlab-ci.yml").read_text().splitlines()
    blocks = [_block_after(lines, i) for i, ln in enumerate(lines) if ln.strip() == "- |"]
    (install,) = [b for b in blocks if "MESHCTL_URL" in b]
    return install


def run_step(script: str, url: str, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    script = script.replace("bin=/usr/local/bin", f"bin={bin_dir}")
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MESHCTL_URL": url})


@pytest.mark.parametrize("step", [github_install_step, gitlab_install_step], ids=["github", "gitlab"])
def test_ci_says_when_meshctl_url_is_missing_and_installs_when_set(step: object, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("needs curl (Debian package curl), as the CI jobs do")
    script = step()  # type: ignore[operator]
    assert "bin=/usr/local/bin" in script
    r = run_step(script, "", tmp_path)
    assert r.returncode == 1
    assert "MESHCTL_URL is not set" in r.stdout and "the URL of a meshctl binary" in r.stdout
    published = tmp_path / "published-meshctl"
    published.write_text("#!/bin/sh\necho 'meshctl 0.1.0'\n")
    r = run_step(script, published.as_uri(), tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "meshctl 0.1.0"
    assert os.access(tmp_path / "meshctl", os.X_OK)


def test_readmes_tell_the_admin_to_set_meshctl_url() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Real use on real machines"):]
    assert "`MESHCTL_URL`" in section[:section.index("**2. Each device asks to join**")]
    assert "`MESHCTL_URL`" in (TEMPLATE / "README.md").read_text()
