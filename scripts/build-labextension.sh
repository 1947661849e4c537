#!/usr/bin/env bash
# Rebuilds the prebuilt JupyterLab / Notebook 7 extension from labextension/
# (TypeScript) into awf_kernel/labextension/, which is committed: installing
# the package needs no node. Needs node (Debian's nodejs) and jupyterlab (for
# jlpm and jupyter-builder); @jupyterlab/* packages come from the npm registry.
# Ends by writing build-stamp.json (see scripts/labextension_stamp.py).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[awf-labext] $*" >&2; }

if ! command -v node >/dev/null 2>&1; then
  log "apt-get install nodejs"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs
fi
if ! python3 -c 'import jupyterlab' 2>/dev/null; then
  log "pip install jupyterlab"
  python3 -m pip install -q --disable-pip-version-check 'jupyterlab>=4,<5'
fi

cd labextension
log "jlpm install"
jlpm install --immutable
log "tsc"
rm -rf lib tsconfig.tsbuildinfo
jlpm build:lib
log "jupyter-builder build -> awf_kernel/labextension"
rm -rf ../awf_kernel/labextension
jlpm build:labextension
cd ..
python3 scripts/labextension_stamp.py write
log "done: commit labextension/ and awf_kernel/labextension/"
