"""The program's promise about Python versions (SPEC section 1).

* vermin (run by the venv's own interpreter) finds nothing in amdgpu_top_web.py that needs more than Python 3.8;
* started by an interpreter older than 3.8 (pyenv's 2.7, 3.6 and 3.7, where
  present) it exits non-zero with a readable message naming Python 3.8, not a
  traceback.

Both are skipped until amdgpu_top_web.py exists.  Note for the program: an old
interpreter compiles the whole file before running any of it, so a
`sys.version_info` check alone cannot help once the file uses newer syntax;
the first syntax error the old parser meets must itself carry the message
(Python prints the offending source line), e.g. near the top:

    _needs = (_py38 := "amdgpu_top_web needs Python 3.8 or newer")

which is a SyntaxError on 2.7 and 3.0-3.7 whose printed line names 3.8.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAM = os.path.join(REPO, "amdgpu_top_web.py")

needs_program = pytest.mark.skipif(
    not os.path.exists(PROGRAM), reason="amdgpu_top_web.py does not exist yet"
)


def _pyenv_root():
    return os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")


def _old_pythons():
    """Newest pyenv interpreter of each minor older than 3.8: {"2.7": path}."""
    found = {}
    for path in glob.glob(os.path.join(_pyenv_root(), "versions", "*", "bin", "python")):
        name = os.path.basename(os.path.dirname(os.path.dirname(path)))
        m = re.match(r"^(\d+)\.(\d+)\.(\d+)$", name)
        if not m:
            continue
        key = tuple(int(x) for x in m.groups())
        if key[:2] >= (3, 8):
            continue
        minor = "%d.%d" % key[:2]
        if minor not in found or key > found[minor][0]:
            found[minor] = (key, path)
    return {minor: path for minor, (_, path) in found.items()}


OLD_PYTHONS = _old_pythons()
# Always list 2.7 so its absence shows up as a skip, not as a missing test.
OLD_MINORS = sorted(set(OLD_PYTHONS) | {"2.7"}, key=lambda v: tuple(map(int, v.split("."))))


@needs_program
def test_vermin_finds_nothing_newer_than_3_8():
    try:
        import vermin  # noqa: F401  (only to know it is installed)
    except ImportError:
        pytest.skip("vermin is not installed in this interpreter (tests/run.sh installs it)")
    proc = subprocess.run(
        # vermin has no __main__ module: call its console entry point.
        [sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())",
         "--no-config-file", "--no-tips", "--violations", "-t=3.8-", PROGRAM],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        universal_newlines=True, timeout=120,
    )
    # --violations lists only what needs a newer Python than the target, and
    # exits 1 when the target is not met.
    assert proc.returncode == 0, "vermin: amdgpu_top_web.py needs more than Python 3.8:\n" + proc.stdout
    assert "Target versions not met" not in proc.stdout, proc.stdout


@needs_program
@pytest.mark.parametrize("minor", OLD_MINORS)
def test_too_old_python_gets_a_readable_message(minor):
    python = OLD_PYTHONS.get(minor)
    if python is None:
        pytest.skip("no pyenv Python %s under %s" % (minor, _pyenv_root()))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env.pop("PYTHONHOME", None)
    proc = subprocess.run(
        [python, PROGRAM, "--help"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=REPO, env=env, timeout=60,
    )
    out = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode != 0, "Python %s ran amdgpu_top_web.py (exit 0):\n%s" % (minor, out)
    assert "3.8" in out, "Python %s: the message does not name Python 3.8:\n%s" % (minor, out)
    assert "Traceback" not in out, "Python %s: a traceback instead of a message:\n%s" % (minor, out)
