"""Running this interpreter in a fresh process, as a user's script would run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_python(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Runs ``python ARGS`` in ``cwd`` without the test session's PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
