#!/usr/bin/env bash
# tests/autobahn/setup_env.sh - installs Autobahn|Testsuite (`wstest`) for
# tests/test_autobahn.py into a Python 2.7 virtualenv, .cache/autobahn/venv.
#
# wstest runs on Python 2.7 only. The interpreter is $AUTOBAHN_PYTHON27 when
# set, else the newest pyenv 2.7.x, else python2.7 on PATH. The venv is
# created by virtualenv 20.15 (installed with `pip --target` into a scratch
# folder, then removed) and filled from tests/autobahn/requirements-py27.txt
# with --no-deps (the file is the whole lock). It is rebuilt only when the pin
# files or the interpreter change; when up to date this takes ~0.1 s.
# Concurrent callers (tests/run.sh, pytest by hand) serialize on a flock.
#
# Called by tests/run.sh (setup stage) and by tests/test_autobahn.py itself.
# Last line of output on success: "wstest: /path/to/wstest".
# Exit status: 0 ready; 2 no Python 2.7 found (the test then skips);
#              1 install failed (log: .cache/autobahn/setup.log).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
HERE=$ROOT/tests/autobahn
DEST=$ROOT/.cache/autobahn
VENV=$DEST/venv
BOOT=$DEST/bootstrap
LOG=$DEST/setup.log

say() { printf '[autobahn] %s\n' "$*"; }

find_python27() {
    local py d best=""
    if [[ -n ${AUTOBAHN_PYTHON27:-} ]]; then
        printf '%s\n' "$AUTOBAHN_PYTHON27"
        return
    fi
    local pyenv_dir
    pyenv_dir=$( (pyenv root) 2>/dev/null || printf '%s' "${PYENV_ROOT:-$HOME/.pyenv}")
    for d in "$pyenv_dir"/versions/2.7.*; do
        [[ $(basename "$d") =~ ^2\.7\.[0-9]+$ && -x $d/bin/python ]] || continue
        best=$(printf '%s\n%s\n' "$best" "$d" | sed '/^$/d' | sort -V | tail -n1)
    done
    if [[ -n $best ]]; then
        printf '%s\n' "$best/bin/python"
    elif py=$(command -v python2.7); then
        printf '%s\n' "$py"
    fi
}

PY=$(find_python27 || true)
if [[ -z $PY ]] || ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
    say "no Python 2.7 found (pyenv 2.7.x, python2.7 or \$AUTOBAHN_PYTHON27)"
    exit 2
fi

mkdir -p "$DEST"
exec 9>"$DEST/.lock"
flock 9

KEY=$( { cat "$HERE/requirements-py27.txt" "$HERE/bootstrap-py27.txt"
         printf '%s\n' "$PY"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
if [[ -f $VENV/.req-hash && $(<"$VENV/.req-hash") == "$KEY" && -x $VENV/bin/wstest ]] &&
    "$VENV/bin/python" -c 'import autobahntestsuite' 2>/dev/null; then
    say "venv up to date ($VENV)"
    echo "wstest: $VENV/bin/wstest"
    exit 0
fi

say "building $VENV from $PY (log: $LOG)"
t0=$SECONDS
rm -rf "$VENV" "$BOOT"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
unset PYTHONPATH PYTHONHOME
if { "$PY" -m pip install --no-deps --target "$BOOT" -r "$HERE/bootstrap-py27.txt" &&
     PYTHONPATH=$BOOT "$PY" -m virtualenv --no-periodic-update --no-download "$VENV" &&
     "$VENV/bin/python" -m pip install --no-deps --no-warn-script-location \
         -r "$HERE/requirements-py27.txt" &&
     "$VENV/bin/wstest" --autobahnversion; } >"$LOG" 2>&1; then
    rm -rf "$BOOT"
    printf '%s\n' "$KEY" >"$VENV/.req-hash"
    say "ready in $((SECONDS - t0))s: $("$VENV/bin/wstest" --autobahnversion 2>&1 | tr '\n' ' ')"
    echo "wstest: $VENV/bin/wstest"
else
    # pip's index warnings are noise; show the end of the rest.
    grep -v 'is ignored: it is neither a file nor a directory' "$LOG" | tail -n 30 >&2 || true
    say "FAILED (full log: $LOG)" >&2
    rm -rf "$VENV" "$BOOT"
    exit 1
fi
