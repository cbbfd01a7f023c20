"""The ``conductor_url`` fixture gives a live server (proves the test harness, not the SDK)."""

from __future__ import annotations

import json

import urllib3


def test_version_and_health(conductor_url: str) -> None:
    assert conductor_url.endswith("/api")
    http = urllib3.PoolManager(timeout=urllib3.Timeout(total=10.0), retries=False)

    version = http.request("GET", f"{conductor_url}/version")
    assert version.status == 200
    text = version.data.decode().strip()
    assert text
    assert text[0].isdigit(), text

    root = conductor_url.removesuffix("/api")
    health = http.request("GET", f"{root}/health")
    assert health.status == 200
    assert json.loads(health.data)["healthy"] is True
