"""Autobahn|Testsuite conformance of the WebSocket stack (RFC 6455).

`wstest -m fuzzingclient` (Autobahn|Testsuite, Python 2.7, installed into
.cache/autobahn/venv by tests/autobahn/setup_env.sh) runs cases 1.* to 7.*,
9.* and 10.* against an echo server assembled from amdgpu_top_web's own
pieces (tests/autobahn/echo_server.py: check_upgrade, build_upgrade_response
and the production Hub with an echo protocol and a 16 MiB message cap).
12.*/13.* (permessage-deflate) are excluded: the server offers no extension.

Every case must end OK, NON-STRICT or INFORMATIONAL (behavior and
behaviorClose); the failure lists every other one. The reports stay in
.cache/autobahn/reports/py3.X/servers/ (index.json and one HTML page per case).
Takes ~20 s (9.* sends messages up to 16 MiB); skipped only when no
Python 2.7 is found. Marked main_python: tests/run.sh runs it on the main
Python only, as a black-box conformance run; the codec it drives
(FrameDecoder, encode_frame, the close codes, UTF-8 checks) is unit-tested
on every Python by test_codec.py and test_outqueue.py, the hub's sockets by
test_server.py.
"""

import collections
import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
HERE = os.path.join(TESTS, "autobahn")
SETUP = os.path.join(HERE, "setup_env.sh")
SPEC_TEMPLATE = os.path.join(HERE, "fuzzingclient.json")
CACHE = os.path.join(REPO, ".cache", "autobahn")
AGENT = "amdgpu_top_web"

ACCEPTED = ("OK", "NON-STRICT", "INFORMATIONAL")
# Cases per group in autobahntestsuite 25.10.1 (pinned): a shorter report
# means wstest stopped early or the selection changed.
EXPECTED_CASES = {"1": 16, "2": 11, "3": 7, "4": 10, "5": 20, "6": 145, "7": 37,
                  "9": 54, "10": 1}
SETUP_TIMEOUT_S = 900
WSTEST_TIMEOUT_S = 600


def _load_echo_server():
    spec = importlib.util.spec_from_file_location(
        "autobahn_echo_server", os.path.join(HERE, "echo_server.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _clean_env():
    """The environment for Python 2.7 tools: no variable of this Python's."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH",
                 "VIRTUAL_ENV", "PYTEST_CURRENT_TEST"):
        env.pop(name, None)
    return env


def _tail(path, lines=40):
    try:
        with open(path, "r", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError as exc:
        return "(no %s: %s)" % (path, exc)


@pytest.fixture(scope="module")
def wstest():
    """Path of wstest, installing it on first use (fast when installed)."""
    proc = subprocess.run(["bash", SETUP], cwd=REPO, env=_clean_env(),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=SETUP_TIMEOUT_S)
    out = proc.stdout.decode("utf-8", "replace")
    if proc.returncode == 2:
        pytest.skip("Autobahn|Testsuite (wstest) needs Python 2.7: " + out.strip())
    assert proc.returncode == 0, "tests/autobahn/setup_env.sh failed (rc=%d):\n%s" % (
        proc.returncode, out)
    path = out.strip().splitlines()[-1].split("wstest: ", 1)[-1]
    assert os.access(path, os.X_OK), out
    return path


def _case_key(case_id):
    return [int(part) for part in case_id.split(".")]


def _describe(outdir, case_id, result):
    """One line for a case that is not accepted, with the suite's verdict."""
    detail = ""
    try:
        with open(os.path.join(outdir, result["reportfile"])) as handle:
            report = json.load(handle)
        detail = " | %s | %s | %s" % (
            report.get("description", "").replace("\n", " ")[:120],
            report.get("result", ""), report.get("resultClose", ""))
    except (OSError, ValueError, KeyError):
        pass
    return "%s: behavior=%s behaviorClose=%s remoteCloseCode=%s%s" % (
        case_id, result.get("behavior"), result.get("behaviorClose"),
        result.get("remoteCloseCode"), detail)


def _summary(results):
    """'group: N OK, N NON-STRICT ...' per case group, for the log."""
    by_group = collections.OrderedDict()
    for case_id in sorted(results, key=_case_key):
        result = results[case_id]
        by_group.setdefault(case_id.split(".")[0], collections.Counter())[
            "%s/%s" % (result["behavior"], result["behaviorClose"])] += 1
    return "\n".join("%5s.*: %s" % (group, ", ".join(
        "%d %s" % (n, verdict) for verdict, n in sorted(counts.items())))
        for group, counts in by_group.items())


@pytest.mark.slow
@pytest.mark.main_python
def test_autobahn_fuzzingclient(wstest):
    echo_server = _load_echo_server()
    tag = "py%d.%d" % sys.version_info[:2]
    run_dir = os.path.join(CACHE, "reports", tag)
    outdir = os.path.join(run_dir, "servers")
    os.makedirs(run_dir, exist_ok=True)
    for name in os.listdir(run_dir):      # never judge a stale report
        path = os.path.join(run_dir, name)
        if os.path.isdir(path):
            for inner in os.listdir(path):
                os.unlink(os.path.join(path, inner))
        else:
            os.unlink(path)

    server = echo_server.EchoServer().start()
    try:
        with open(SPEC_TEMPLATE) as handle:
            spec = json.load(handle)
        spec["outdir"] = outdir
        spec["servers"][0]["url"] = server.url
        spec_path = os.path.join(run_dir, "fuzzingclient.json")
        with open(spec_path, "w") as handle:
            json.dump(spec, handle, indent=2)

        log_path = os.path.join(run_dir, "wstest.log")
        started = time.monotonic()
        with open(log_path, "wb") as log:
            try:
                rc = subprocess.run([wstest, "-m", "fuzzingclient", "-s", spec_path],
                                    cwd=run_dir, env=_clean_env(), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT,
                                    timeout=WSTEST_TIMEOUT_S).returncode
            except subprocess.TimeoutExpired:
                pytest.fail("wstest ran past %ds; its log:\n%s" % (
                    WSTEST_TIMEOUT_S, _tail(log_path)))
        elapsed = time.monotonic() - started
        hub_alive = server.hub.is_alive()
        hub_stats = dict(server.hub.stats)
        # Every connection the suite opened must be gone and its slot released.
        deadline = time.monotonic() + 5.0
        while server.hub.client_count() and time.monotonic() < deadline:
            time.sleep(0.05)
        leftover_clients = server.hub.client_count()
        leftover_slots = server.hub.slots.taken
    finally:
        server.stop()

    index_path = os.path.join(outdir, "index.json")
    assert rc == 0 and os.path.exists(index_path), (
        "wstest exited %d without a report; its log:\n%s" % (rc, _tail(log_path)))
    with open(index_path) as handle:
        results = json.load(handle)[AGENT]

    summary = _summary(results)
    print("\nAutobahn|Testsuite: %d cases in %.1fs on %s (report: %s)\n%s\nhub stats: %s"
          % (len(results), elapsed, tag, outdir, summary, hub_stats))

    bad = [_describe(outdir, case_id, results[case_id])
           for case_id in sorted(results, key=_case_key)
           if results[case_id].get("behavior") not in ACCEPTED
           or results[case_id].get("behaviorClose") not in ACCEPTED]
    assert not bad, "%d Autobahn case(s) not OK/NON-STRICT/INFORMATIONAL " \
        "(reports in %s):\n%s\n\nper group:\n%s" % (len(bad), outdir, "\n".join(bad), summary)

    counts = collections.Counter(case_id.split(".")[0] for case_id in results)
    assert dict(counts) == EXPECTED_CASES, (
        "cases run per group differ from the selection (wstest stopped early?): %s; "
        "log:\n%s" % (dict(counts), _tail(log_path)))

    assert hub_alive, "the hub thread died during the run"
    assert not server.handshake_errors, server.handshake_errors
    assert leftover_clients == 0, "%d connection(s) still open in the hub" % leftover_clients
    assert leftover_slots == 0, "%d hub slot(s) never released" % leftover_slots
