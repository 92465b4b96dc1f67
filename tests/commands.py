"""Runs the project's commands as a user would: a subprocess, with this checkout's code.

``PYTHONPATH`` points at this checkout, so the command runs the code under test whatever copy of
hybrid_jax is installed, and the test's XLA/compilation-cache environment (tests/conftest.py) is
inherited, so a command's compiled programs are shared with the other commands of the session.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def run(args: list[str], *, cwd: str | os.PathLike = REPO, timeout: float = 900, check: bool = True,
        **extra_env: str) -> subprocess.CompletedProcess:
    """Runs ``args`` (``python`` means this interpreter); on failure the error shows the output."""
    args = [sys.executable if a in ("python", "python3", ".venv/bin/python") and i == 0 else a
            for i, a in enumerate(args)]
    result = subprocess.run(args, cwd=cwd, env=environment(**extra_env), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n--- stdout\n{result.stdout[-6000:]}"
                             f"\n--- stderr\n{result.stderr[-6000:]}")
    return result


def run_python(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """``python ARGS...`` from the repository root -> the finished process (not checked)."""
    return run(["python", *args], timeout=timeout, check=False, **env)


def assert_clean_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """A refusal as a user should see it: non-zero exit, one ``error: ...`` line naming ``words``,
    no Python traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)
