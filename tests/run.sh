#!/usr/bin/env bash
# tests/run.sh - the one test command of amdgpu_top_web.
#
# From a fresh machine it installs what the tests need and runs the whole suite
# on every CPython 3.8-3.13 found under pyenv:
#   1. Debian packages the tests use, if missing (apt-get as root or with sudo):
#      strace, w3m, chromium (+ fonts-liberation), promtool (prometheus),
#      systemd-analyze (systemd), Node.js + npm (nodejs npm) when there is no npm,
#      python3 + python3-venv when python3 cannot make a virtualenv;
#   2. one virtualenv per Python in .venv/py3.X, rebuilt only when the pins
#      (tests/requirements*.txt, tests/constraints.txt) change;
#   3. the page's ES-module packages into .cache/vendor/node_modules (npm),
#      and NVIDIA's nvml.h (wheel nvidia-nvml-dev) into .cache/nvml-dev for the
#      stand-in libnvidia-ml.so.1 of tests/nvml (its licence forbids committing it);
#   4. pytest: the whole suite on the main Python (3.11); on the others
#      `-m "not browser and not main_python"` (no browser tests, and not the
#      Autobahn, load and end-to-end sysfs-fault runs: black-box runs whose
#      code paths smaller tests cover on every Python, see tests/pytest.ini);
#      then a summary table and one closing line
#      "ci: N passed, N failed, N skipped" summed over all versions.
# Without pyenv it tests the one python3 on PATH (whole suite; it needs the venv
# module: Debian's python3-venv). Without npm and no way to install it, the
# browser tests skip (a warning says so). Time: setup ~1-2 min the first time
# (seconds after), then pytest per Python: ~40-45 min for all six on 2 cores
# (a clean-clone run: 42 min; ~50 min before the main_python split), the
# main one (browser and main_python tests too) the longest; PYTHONS=3.11 runs one.
#
# Usage:  ./tests/run.sh [pytest args...]     e.g. ./tests/run.sh tests/test_x.py -k foo
# Knobs (environment):
#   PYTHONS="3.11"        only these minor versions (space or comma separated)
#   PYTEST_ARGS="-x -v"   extra pytest arguments (word-split), before the CLI args
#   SKIP_APT=1            never touch Debian packages (developer machine, no root)
#   SKIP_NPM=1            don't install the npm packages (browser tests then skip)
#   PYTEST_TIMEOUT=1500   seconds allowed for one pytest run
# Exit status: 0 when every selected version passed (or collected no tests),
# 1 otherwise; every version is run before deciding.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

ALL_MINORS=(3.8 3.9 3.10 3.11 3.12 3.13)
MAIN_MINOR=3.11                    # runs the whole suite, browser tests included
APT_PACKAGES=(strace w3m chromium fonts-liberation prometheus systemd)
NODE_PACKAGES=(nodejs npm)         # only when there is no npm command (NodeSource's nodejs has it)
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-1500}

VENV_ROOT=$ROOT/.venv
CACHE=$ROOT/.cache
JUNIT_DIR=$CACHE/junit
LOG_DIR=$CACHE/logs
VENDOR=$CACHE/vendor

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1   # Debian's /usr/bin/chromium is used
export HYPOTHESIS_STORAGE_DIRECTORY=$CACHE/hypothesis   # not .hypothesis/ in the repo

SETUP_PROBLEMS=()                  # failures outside pytest; they fail the run

say()  { printf '[run.sh] %s\n' "$*"; }
warn() { printf '[run.sh] WARNING: %s\n' "$*" >&2; }
banner() { printf '\n========== %s ==========\n' "$*"; }

# Print the sha256 of the given files' contents plus any extra strings.
hash_of() {
    local files=() f
    for f in "$@"; do [[ -f $f ]] && files+=("$f"); done
    # (cat with no file would read stdin, hence the guard)
    { ((${#files[@]} == 0)) || cat "${files[@]}"; printf '%s\n' "$@"; } |
        sha256sum | cut -c1-16
}

# ---------------------------------------------------------------- 1. apt ----
setup_apt() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        # Not `dpkg -s`: it succeeds for a removed package whose config remains.
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] ||
            missing+=("$p")
    done
    command -v npm >/dev/null || missing+=("${NODE_PACKAGES[@]}")
    # No pyenv: the tests run on Debian's python3, whose venv module is a package.
    python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3 python3-venv)
    if ((${#missing[@]} == 0)); then
        say "apt: ${APT_PACKAGES[*]} already installed"
        return
    fi
    if [[ ${SKIP_APT:-0} == 1 ]]; then
        warn "apt: SKIP_APT=1, not installing ${missing[*]} (tests needing them will skip)"
        return
    fi
    local sudo=()
    if ((EUID != 0)); then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            warn "apt: not root and no passwordless sudo; missing: ${missing[*]}"
            warn "apt: install them by hand or set SKIP_APT=1 to silence this"
            return
        fi
    fi
    say "apt: installing ${missing[*]}"
    # Only what is missing, no Recommends (chromium's pull in systemd, avahi...).
    if "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >"$LOG_DIR/apt.log" 2>&1; then
        say "apt: done"
    else
        tail -n 30 "$LOG_DIR/apt.log" >&2 || true
        warn "apt: installing ${missing[*]} FAILED"
        SETUP_PROBLEMS+=("apt install ${missing[*]}")
    fi
}

# ------------------------------------------------------------ 2. pythons ----
PYENV_DIR=$( (pyenv root) 2>/dev/null || printf '%s' "${PYENV_ROOT:-$HOME/.pyenv}")

# Newest pyenv CPython X.Y.* with a working bin/python, or nothing.
find_pyenv_python() {
    local minor=$1 d best=""
    for d in "$PYENV_DIR"/versions/"$minor".*; do
        # Only plain X.Y.Z (skip -dev, t free-threaded, envs...).
        [[ $(basename "$d") =~ ^${minor//./\\.}\.[0-9]+$ && -x $d/bin/python ]] || continue
        best=$(printf '%s\n%s\n' "$best" "$d" | sed '/^$/d' | sort -V | tail -n1)
    done
    [[ -n $best ]] && printf '%s\n' "$best/bin/python"
}

declare -A PY_EXE=()               # minor -> base interpreter
ORDER=()                           # minors to test, in order
discover_pythons() {
    local wanted=() m exe
    if [[ -n ${PYTHONS:-} ]]; then
        read -r -a wanted <<<"${PYTHONS//,/ }"
    else
        wanted=("${ALL_MINORS[@]}")
    fi
    for m in "${ALL_MINORS[@]}"; do
        exe=$(find_pyenv_python "$m" || true)
        [[ -n $exe ]] && PY_EXE[$m]=$exe
    done
    if [[ -z ${PY_EXE[$MAIN_MINOR]:-} ]]; then
        # No pyenv 3.11: the main run (whole suite) falls back to python3.
        if exe=$(command -v python3); then
            m=$("$exe" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
            warn "python: no pyenv $MAIN_MINOR under $PYENV_DIR; main version is python3 ($m, $exe)"
            PY_EXE[$m]=${PY_EXE[$m]:-$exe}
            MAIN_MINOR=$m
            [[ -z ${PYTHONS:-} && " ${wanted[*]} " != *" $m "* ]] && wanted+=("$m")
        else
            warn "python: neither pyenv $MAIN_MINOR nor python3 found"
        fi
    fi
    for m in "${wanted[@]}"; do
        if [[ -n ${PY_EXE[$m]:-} ]]; then
            ORDER+=("$m")
        else
            warn "python: $m not found under $PYENV_DIR/versions, skipping it"
        fi
    done
    if ((${#ORDER[@]} == 0)); then
        echo "[run.sh] ERROR: no Python to test with (PYTHONS=${PYTHONS:-all})" >&2
        exit 1
    fi
}

# Create or reuse .venv/pyX.Y; prints nothing on reuse.  Returns 1 on failure.
setup_venv() {
    local m=$1 base=${PY_EXE[$1]} venv=$VENV_ROOT/py$1 req key
    req=$ROOT/tests/requirements.txt
    [[ $m == "$MAIN_MINOR" ]] && req=$ROOT/tests/requirements-main.txt
    # The key covers every pin file and the exact base interpreter.
    key=$(hash_of "$ROOT"/tests/requirements*.txt "$ROOT/tests/constraints.txt" \
        "$base" "$("$base" -VV 2>&1)" "$req")
    if [[ -f $venv/.req-hash && $(<"$venv/.req-hash") == "$key" ]] &&
        "$venv/bin/python" -c '' 2>/dev/null; then
        say "venv py$m: up to date ($("$venv/bin/python" -V 2>&1))"
        return 0
    fi
    local t0=$SECONDS log=$LOG_DIR/pip-py$m.log
    say "venv py$m: building from $base with $(basename "$req")"
    rm -rf "$venv"
    if "$base" -m venv "$venv" >"$log" 2>&1 &&
        "$venv/bin/python" -m pip install -q --progress-bar off -r "$req" >>"$log" 2>&1; then
        printf '%s\n' "$key" >"$venv/.req-hash"
        say "venv py$m: ready in $((SECONDS - t0))s"
    else
        tail -n 30 "$log" >&2 || true
        warn "venv py$m: FAILED (full log: $log)"
        rm -rf "$venv"
        return 1
    fi
}

# ---------------------------------------------------------------- 3. npm ----
# The page's ES modules (preact, htm, zustand, pico), pinned in
# tests/package.json, land in .cache/vendor/node_modules; the tests serve them
# from APP_VENDOR_DIR in place of the CDN.
setup_npm() {
    if [[ ${SKIP_NPM:-0} == 1 ]]; then
        warn "npm: SKIP_NPM=1, not installing the page's packages (browser tests will skip)"
        return
    fi
    if ! command -v npm >/dev/null; then
        warn "**************************************************************"
        warn "npm: NOT FOUND - the page's packages are not installed;"
        warn "npm: tests that need them (browser tests) will SKIP"
        warn "**************************************************************"
        return
    fi
    local key
    key=$(hash_of "$ROOT/tests/package.json" "$ROOT/tests/package-lock.json")
    if [[ -f $VENDOR/.pkg-hash && $(<"$VENDOR/.pkg-hash") == "$key" && -d $VENDOR/node_modules ]]; then
        say "npm: .cache/vendor up to date"
        export APP_VENDOR_DIR=$VENDOR/node_modules
        return
    fi
    say "npm: installing tests/package.json into .cache/vendor"
    rm -rf "$VENDOR"
    mkdir -p "$VENDOR"
    cp "$ROOT/tests/package.json" "$VENDOR/"
    local cmd=(npm install)
    if [[ -f $ROOT/tests/package-lock.json ]]; then
        cp "$ROOT/tests/package-lock.json" "$VENDOR/"
        cmd=(npm ci)
    fi
    # --loglevel=error hides npm's warnings about the machine's own ~/.npmrc.
    if (cd "$VENDOR" && "${cmd[@]}" --no-audit --no-fund --ignore-scripts \
        --loglevel=error) >"$LOG_DIR/npm.log" 2>&1; then
        printf '%s\n' "$key" >"$VENDOR/.pkg-hash"
        export APP_VENDOR_DIR=$VENDOR/node_modules
        say "npm: installed into .cache/vendor/node_modules"
    else
        tail -n 30 "$LOG_DIR/npm.log" >&2 || true
        warn "npm: ${cmd[*]} FAILED (full log: $LOG_DIR/npm.log)"
        SETUP_PROBLEMS+=("npm ${cmd[*]}")
    fi
}

# ----------------------------------------------------------- 3b. nvml.h ----
# tests/nvml/fake_nvml.c (a stand-in libnvidia-ml.so.1) is compiled against
# NVIDIA's own nvml.h, shipped only in the PyPI wheel nvidia-nvml-dev, whose
# licence forbids committing it: fetch the pinned wheel once (stamp file) into
# .cache/nvml-dev and unpack it there with the main venv's Python.
NVML_DEV_PIN=nvidia-nvml-dev==13.5.37
NVML_DEV=$CACHE/nvml-dev
setup_nvml_dev() {
    local py=$VENV_ROOT/py$MAIN_MINOR/bin/python log=$LOG_DIR/nvml-dev.log hdr
    "$py" -c '' 2>/dev/null || py=python3
    if [[ -f $NVML_DEV/.stamp && $(<"$NVML_DEV/.stamp") == "$NVML_DEV_PIN" ]] &&
        hdr=$(find "$NVML_DEV/pkg" -name nvml.h -print -quit 2>/dev/null) && [[ -n $hdr ]]; then
        say "nvml.h: .cache/nvml-dev up to date ($NVML_DEV_PIN)"
        export NVML_HEADER_DIR=${hdr%/nvml.h}
        return
    fi
    say "nvml.h: fetching $NVML_DEV_PIN into .cache/nvml-dev"
    rm -rf "$NVML_DEV"
    mkdir -p "$NVML_DEV/whl"
    if "$py" -m pip download -q --no-deps --only-binary=:all: -d "$NVML_DEV/whl" \
            "$NVML_DEV_PIN" >"$log" 2>&1 &&
        "$py" -m zipfile -e "$(find "$NVML_DEV/whl" -name '*.whl' -print -quit)" \
            "$NVML_DEV/pkg" >>"$log" 2>&1 &&
        hdr=$(find "$NVML_DEV/pkg" -name nvml.h -print -quit) && [[ -n $hdr ]]; then
        printf '%s\n' "$NVML_DEV_PIN" >"$NVML_DEV/.stamp"
        export NVML_HEADER_DIR=${hdr%/nvml.h}
        say "nvml.h: ${NVML_HEADER_DIR#"$ROOT"/}/nvml.h"
    else
        tail -n 30 "$log" >&2 || true
        warn "nvml.h: installing $NVML_DEV_PIN FAILED (full log: $log); NVML tests will skip"
        SETUP_PROBLEMS+=("nvml.h ($NVML_DEV_PIN)")
    fi
}

# >>> autobahn block (tests/test_autobahn.py's setup; edit only inside) >>>>>>
# Autobahn|Testsuite (wstest) runs on Python 2.7: tests/autobahn/setup_env.sh
# builds .cache/autobahn/venv from the pyenv 2.7.x (rebuilt only when its pins
# change; ~0.5 s when up to date). No Python 2.7 -> a warning, and the test
# skips; a failed install is a setup problem. The test calls the same script,
# so a plain `pytest` works too.
setup_autobahn() {
    local rc=0
    bash "$ROOT/tests/autobahn/setup_env.sh" || rc=$?
    case $rc in
        0) ;;
        2) warn "autobahn: no Python 2.7; tests/test_autobahn.py will SKIP" ;;
        *) warn "autobahn: setup FAILED (log: .cache/autobahn/setup.log)"
           SETUP_PROBLEMS+=("autobahn (Python 2.7 wstest venv)") ;;
    esac
}
# <<< autobahn block <<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<

# ------------------------------------------------------------- 4. pytest ----
declare -A RESULT=() COUNTS=()
TOTAL_PASSED=0 TOTAL_FAILED=0 TOTAL_SKIPPED=0

# "passed failed skipped" from a junit xml file (failed = failures + errors).
junit_counts() {
    "$1" - "$2" <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = s = 0
for su in suites:
    t += int(su.get("tests", 0))
    f += int(su.get("failures", 0)) + int(su.get("errors", 0))
    s += int(su.get("skipped", 0))
print(t - f - s, f, s)
PY
}

run_pytest() {
    local m=$1 py=$VENV_ROOT/py$1/bin/python junit=$JUNIT_DIR/py$1.xml
    local args=(-c tests/pytest.ini --rootdir "$ROOT" -q -ra -p no:cacheprovider
        --junitxml "$junit" -o junit_suite_name="py$m")
    [[ $m == "$MAIN_MINOR" ]] || args+=(-m "not browser and not main_python")
    local extra=()
    [[ -n ${PYTEST_ARGS:-} ]] && read -r -a extra <<<"$PYTEST_ARGS"
    args+=(${extra[@]+"${extra[@]}"} ${CLI_ARGS[@]+"${CLI_ARGS[@]}"})

    banner "pytest on Python $m ($("$py" -V 2>&1))"
    rm -f "$junit"
    local rc=0
    timeout --kill-after=30 "$PYTEST_TIMEOUT" "$py" -m pytest "${args[@]}" </dev/null || rc=$?

    local p=0 f=0 s=0
    if [[ -f $junit ]]; then
        read -r p f s < <(junit_counts "$py" "$junit" || true) || true
        p=${p:-0} f=${f:-0} s=${s:-0}
    fi
    case $rc in
        0) RESULT[$m]=passed ;;
        5) RESULT[$m]="ok (no tests collected)"
           say "py$m: pytest collected no tests (exit 5); counted as success" ;;
        124|137) RESULT[$m]="FAILED (timeout ${PYTEST_TIMEOUT}s)" ;;
        *) RESULT[$m]="FAILED (exit $rc)" ;;
    esac
    # A run that failed without reporting a failed test (crash, timeout,
    # usage error) still counts as one failure in the closing line.
    if [[ $rc != 0 && $rc != 5 && $f == 0 ]]; then f=1; fi
    COUNTS[$m]="$p passed, $f failed, $s skipped"
    TOTAL_PASSED=$((TOTAL_PASSED + p))
    TOTAL_FAILED=$((TOTAL_FAILED + f))
    TOTAL_SKIPPED=$((TOTAL_SKIPPED + s))
}

# --------------------------------------------------------------- main -------
CLI_ARGS=("$@")
mkdir -p "$JUNIT_DIR" "$LOG_DIR" "$VENV_ROOT"
T_START=$SECONDS

banner "setup"
setup_apt
discover_pythons
say "python: testing ${ORDER[*]} (main: $MAIN_MINOR)"
for m in "${ORDER[@]}"; do
    setup_venv "$m" || RESULT[$m]="FAILED (venv setup)"
done
setup_npm
setup_nvml_dev
setup_autobahn                     # autobahn block (see above)
T_SETUP=$((SECONDS - T_START))
say "setup took ${T_SETUP}s"

for m in "${ORDER[@]}"; do
    if [[ -n ${RESULT[$m]:-} ]]; then  # venv setup failed: nothing to run
        COUNTS[$m]="0 passed, 1 failed, 0 skipped"
        TOTAL_FAILED=$((TOTAL_FAILED + 1))
        continue
    fi
    run_pytest "$m"
done

banner "summary"
status=0
printf '%-8s %-30s %s\n' python result counts
for m in "${ORDER[@]}"; do
    label=$m
    [[ $m == "$MAIN_MINOR" ]] && label="$m*"
    printf '%-8s %-30s %s\n' "$label" "${RESULT[$m]}" "${COUNTS[$m]}"
    [[ ${RESULT[$m]} == FAILED* ]] && status=1
done
echo "(* main version: whole suite; others: -m \"not browser and not main_python\")"
for p in ${SETUP_PROBLEMS[@]+"${SETUP_PROBLEMS[@]}"}; do
    echo "setup problem: $p"
    status=1
done
((${#SETUP_PROBLEMS[@]} == 0)) || TOTAL_FAILED=$((TOTAL_FAILED + ${#SETUP_PROBLEMS[@]}))
echo "setup ${T_SETUP}s, total $((SECONDS - T_START))s"
echo "ci: $TOTAL_PASSED passed, $TOTAL_FAILED failed, $TOTAL_SKIPPED skipped"
exit "$status"
