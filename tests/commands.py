"""Runs this checkout's commands in a subprocess, as a user would (``python tools/x.py ...``).

PYTHONPATH points at this checkout's root, or the subprocess would import whichever hybrid_jax is
installed in the venv instead of the code under test.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_python(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python ARGS...`` from the repository root -> the finished process (text stdout/stderr)."""
    environment = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=environment, capture_output=True,
                          text=True, timeout=timeout)


def assert_clean_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """A refusal as a user should see it: non-zero exit, one ``error: ...`` line naming ``words``,
    no Python traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
