#!/usr/bin/env bash
# Offline checks of the deployment files (Dockerfile, deploy/: compose, Prometheus, Grafana,
# Helm chart) against each other and the Rust sources; see scripts/check_deploy.py.
# The first run pip-installs the checkers into the project's venv (once; PyPI), later runs
# need no network. Usage: scripts/check-deploy.sh   (BITNET_PYENV=DIR picks another venv)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${BITNET_PYENV:-$HOME/.cache/bitnet-pyenv}
# helm-python-sdk: Helm 4's Go SDK as a shared library (lint, render, schema);
# kubernetes-validate: Kubernetes JSON schemas; check-jsonschema: ships the Compose spec schema;
# dockerfile: BuildKit's Dockerfile parser.
reqs=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 check-jsonschema==0.39.0 dockerfile==3.4.0
      pyyaml jsonschema)

if [ ! -x "$venv/bin/python" ]; then
  echo "[check-deploy] creating the venv $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" - "${reqs[@]}" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for r in sys.argv[1:]:
    name, _, want = r.partition("==")
    if want and version(name) != want or not want and not version(name):
        sys.exit(1)
PY
then
  echo "[check-deploy] installing ${reqs[*]} into $venv (PyPI, once)"
  "$venv/bin/pip" install -q --disable-pip-version-check "${reqs[@]}"
fi
exec "$venv/bin/python" scripts/check_deploy.py "$@"
