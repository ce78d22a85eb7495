#!/usr/bin/env bash
# `make data`: restore data/ from the DVC remote (default: ../shared/dvc-remote, see .dvc/config).
set -uo pipefail
cd "$(dirname "$0")/.."
DVC=.venv/bin/dvc
url=$($DVC remote list 2>/dev/null | awk '$1=="shared"{print $2}')
if [ -n "$url" ] && [ "${url#*://}" = "$url" ]; then   # a local path remote: check it before pulling
  path=$url; case $path in /*) ;; *) path=.dvc/$url ;; esac
  if [ ! -d "$path" ]; then
    cat >&2 <<MSG
error: the DVC remote '$url' (resolved: $(cd .dvc && realpath -m "$url")) does not exist.
  The sample data lives in ../shared/dvc-remote beside this clone. Either put the project's shared/ folder
  beside the clone, or point DVC at your own remote (full COCO/LVIS: see README, "Your own data"):
      .venv/bin/dvc remote add -d -f mine <url>      # s3://..., ssh://..., /path/to/remote
      make data
MSG
    exit 2
  fi
fi
if ! $DVC pull -q data.dvc; then
  echo "error: 'dvc pull' failed (remote: ${url:-none}). Check the remote with '.venv/bin/dvc remote list' or" \
       "add your own: '.venv/bin/dvc remote add -d -f mine <url>'." >&2
  exit 2
fi
echo "[data] data/ is up to date ($(find data -type f | wc -l) files)"
