"""The official `openai` Node SDK (tests/node/) against a live SeekServe: `node --test`
runs tests/node/openai_sdk.test.mjs with the server's URL in SEEKSERVE_BASE_URL. The SDK is
installed into tests/node/node_modules (gitignored) by `npm ci` on the first run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.api.live import LiveServer

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def _installed() -> bool:
    """node_modules holds the locked openai version (a changed lock file reinstalls)."""
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    return marker.is_file() and marker.stat().st_mtime >= lock.stat().st_mtime


@pytest.fixture(scope="module")
def node_sdk() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed: the openai Node SDK test needs Node.js 20+")
    if not _installed():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    return NODE_DIR


def test_openai_node_sdk(node_sdk: Path, server: LiveServer):
    result = subprocess.run(
        ["node", "--test", "--test-reporter=tap", "openai_sdk.test.mjs"],
        cwd=node_sdk,
        env={**os.environ, "SEEKSERVE_BASE_URL": server.base_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# pass 5" in result.stdout and "# fail 0" in result.stdout, result.stdout
