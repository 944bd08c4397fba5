#!/usr/bin/env bash
# Time the README's first command (pip install -e . && edge-rnn quickstart) in a brand-new venv on a
# machine without a system OpenBLAS: Debian's is hidden behind an empty bind mount, so only what pip
# installs can be used. Needs root and a private mount namespace:
#   flock /tmp/heavy.lock unshare -m scripts/time_first_run.sh "$PWD" /tmp/quickstart.log
set -euo pipefail
SRC=$1; LOG=$2
mkdir -p /tmp/empty-openblas
rm -rf /tmp/freshvenv /tmp/fresh-src && mkdir -p /tmp/fresh-src
git -C "$SRC" archive HEAD | tar -x -C /tmp/fresh-src
mount --bind /tmp/empty-openblas /usr/lib/x86_64-linux-gnu/openblas-pthread
cd /tmp/fresh-src
python -m venv /tmp/freshvenv
. /tmp/freshvenv/bin/activate
t0=$(date +%s.%N)
pip install -q -e . > /tmp/fresh-pip.log 2>&1
t1=$(date +%s.%N)
edge-rnn quickstart > "$LOG" 2>&1
t2=$(date +%s.%N)
python -c "import edge_rnn, ctypes.util; print('blas loaded:', edge_rnn._blas.loaded); print('system openblas visible:', edge_rnn._blas._find())"
python - "$t0" "$t1" "$t2" <<'P'
import sys; t0, t1, t2 = map(float, sys.argv[1:])
print(f"install {t1-t0:.1f} s, quickstart {t2-t1:.1f} s, total {t2-t0:.1f} s")
P
