"""Tests for configuration (APP_* variables and flags, SPEC §6) and for the
command line as a user runs it: exit codes, one-line errors, --help,
--version and --once --json."""

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import amdgpu_top_web as atw
from amdgpu_top_web import SETTINGS, ConfigError, parse_config

REPO = Path(__file__).resolve().parent.parent
PROGRAM = REPO / "amdgpu_top_web.py"
SYS = REPO / "testdata" / "sys"
SHARE = REPO / "testdata" / "share"

SETTING_BY_ENV = {s.env: s for s in SETTINGS}

# SPEC §6: every variable and its documented default (as the user types it).
SPEC_DEFAULTS = {
    "APP_LISTEN_ADDR": ":8080",
    "APP_SAMPLE_INTERVAL": "250ms",
    "APP_ALLOWED_ORIGINS": "",
    "APP_DEFAULT_GPU": "auto",
    "APP_ENABLE_PROMETHEUS": "false",
    "APP_LOG_LEVEL": "INFO",
    "APP_SYSFS_ROOT": "/sys",
    "APP_PROC_ROOT": "/proc",
    # APP_DEV_ROOT and APP_DEBUGFS_ROOT were reserved and never read: removed
    # (test_reserved_roots_are_gone)
    "APP_WS_MAX_CLIENTS": "1024",
    "APP_WS_WRITE_TIMEOUT": "3s",
    "APP_WS_READ_TIMEOUT": "30s",
    "APP_PROC_ENABLE": "true",
    "APP_PROC_SCAN_INTERVAL": "2s",
    "APP_PROC_MAX_PIDS": "5000",
    "APP_PROC_MAX_FDS_PER_PID": "64",
    "APP_VENDOR_DIR": "",
}

# The typed Config value of each default. Settings not listed here (added
# later) are still checked to parse from their default.
TYPED_DEFAULTS = {
    "APP_SAMPLE_INTERVAL": ("interval_s", 0.25),
    "APP_ALLOWED_ORIGINS": ("allowed_origins", None),
    "APP_DEFAULT_GPU": ("default_gpu", "auto"),
    "APP_ENABLE_PROMETHEUS": ("enable_prometheus", False),
    "APP_LOG_LEVEL": ("log_level", "INFO"),
    "APP_SYSFS_ROOT": ("sysfs_root", "/sys"),
    "APP_PROC_ROOT": ("proc_root", "/proc"),
    "APP_SHARE_ROOT": ("share_root", "/usr/share"),
    "APP_WS_MAX_CLIENTS": ("ws_max_clients", 1024),
    "APP_WS_WRITE_TIMEOUT": ("ws_write_timeout_s", 3.0),
    "APP_WS_READ_TIMEOUT": ("ws_read_timeout_s", 30.0),
    "APP_PROC_ENABLE": ("proc_enable", True),
    "APP_PROC_SCAN_INTERVAL": ("proc_scan_interval_s", 2.0),
    "APP_PROC_MAX_PIDS": ("proc_max_pids", 5000),
    "APP_PROC_MAX_FDS_PER_PID": ("proc_max_fds_per_pid", 64),
    "APP_VENDOR_DIR": ("vendor_dir", None),
}


# --- helpers ---------------------------------------------------------------

def config_error(argv, environ):
    with pytest.raises(ConfigError) as info:
        parse_config(argv, environ)
    return str(info.value)


def clean_env(**extra):
    """os.environ without any APP_* (a developer's shell must not leak in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("APP_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run_program(args, tmp_path, timeout=60, **env):
    return subprocess.run(
        [sys.executable, str(PROGRAM)] + list(args), cwd=str(tmp_path), env=clean_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
        timeout=timeout)


# --- defaults ----------------------------------------------------------------

def test_every_spec_variable_is_a_setting_with_the_spec_default():
    for env, default in SPEC_DEFAULTS.items():
        assert env in SETTING_BY_ENV, env
        assert SETTING_BY_ENV[env].default == default, env


def test_every_setting_has_a_flag_and_a_config_field():
    flags = [s.flag for s in SETTINGS]
    assert len(set(flags)) == len(flags)
    assert all(f.startswith("--") for f in flags)
    assert all(s.env.startswith("APP_") for s in SETTINGS)
    config = parse_config([], {})
    for setting in SETTINGS:
        if setting.env != "APP_LISTEN_ADDR":
            assert hasattr(config, setting.field), setting.field


@pytest.mark.parametrize("setting", SETTINGS, ids=[s.env for s in SETTINGS])
def test_default_of_every_setting(setting):
    config = parse_config([], {})
    if setting.env == "APP_LISTEN_ADDR":
        assert (config.listen_host, config.listen_port) == ("", 8080)
    elif setting.env in TYPED_DEFAULTS:
        field, value = TYPED_DEFAULTS[setting.env]
        assert getattr(config, field) == value
    else:
        # a setting this file does not know yet: its default must still parse
        assert hasattr(config, setting.field)
    # the default given explicitly gives the same Config (the demo's settings need --demo)
    mode = ["--demo"] if setting.field in atw.DEMO_ONLY_FIELDS else []
    config = parse_config(mode, {})
    assert parse_config(mode, {setting.env: setting.default}) == config
    assert parse_config(mode + [setting.flag, setting.default], {}) == config


def test_mode_flags_default_off():
    config = parse_config([], {})
    assert (config.demo, config.once, config.json, config.show_help, config.show_version) == (
        False, False, False, False, False)
    config = parse_config(["--demo", "--once", "--json"], {})
    assert (config.demo, config.once, config.json) == (True, True, True)


def test_json_needs_once():
    message = config_error(["--json"], {})
    assert message.startswith("--json")


def test_unrelated_environment_is_ignored():
    assert parse_config([], {"PATH": "/bin", "APP_UNKNOWN_THING": "x"}) == parse_config([], {})


# --- env vs flag ----------------------------------------------------------------

# (variable, a good raw value, config field, typed value)
GOOD_VALUES = [
    ("APP_SAMPLE_INTERVAL", "500ms", "interval_s", 0.5),
    ("APP_ALLOWED_ORIGINS", "*", "allowed_origins", "*"),
    ("APP_DEFAULT_GPU", "card1", "default_gpu", "card1"),
    ("APP_ENABLE_PROMETHEUS", "true", "enable_prometheus", True),
    ("APP_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("APP_SYSFS_ROOT", "/tmp/fake-sys", "sysfs_root", "/tmp/fake-sys"),
    ("APP_PROC_ROOT", "/tmp/fake-proc", "proc_root", "/tmp/fake-proc"),
    ("APP_SHARE_ROOT", "/tmp/fake-share", "share_root", "/tmp/fake-share"),
    ("APP_WS_MAX_CLIENTS", "10", "ws_max_clients", 10),
    ("APP_WS_WRITE_TIMEOUT", "1.5s", "ws_write_timeout_s", 1.5),
    ("APP_WS_READ_TIMEOUT", "250ms", "ws_read_timeout_s", 0.25),
    ("APP_PROC_ENABLE", "false", "proc_enable", False),
    ("APP_PROC_SCAN_INTERVAL", "5s", "proc_scan_interval_s", 5.0),
    ("APP_PROC_MAX_PIDS", "100", "proc_max_pids", 100),
    ("APP_PROC_MAX_FDS_PER_PID", "8", "proc_max_fds_per_pid", 8),
    ("APP_VENDOR_DIR", "/opt/vendor", "vendor_dir", "/opt/vendor"),
]


@pytest.mark.parametrize("env,raw,field,value", GOOD_VALUES, ids=[g[0] for g in GOOD_VALUES])
def test_env_and_flag_set_the_same_field(env, raw, field, value):
    flag = SETTING_BY_ENV[env].flag
    assert getattr(parse_config([], {env: raw}), field) == value
    assert getattr(parse_config([flag, raw], {}), field) == value
    assert getattr(parse_config(["%s=%s" % (flag, raw)], {}), field) == value


@pytest.mark.parametrize("env,raw,field,value", GOOD_VALUES, ids=[g[0] for g in GOOD_VALUES])
def test_flag_wins_over_env(env, raw, field, value):
    setting = SETTING_BY_ENV[env]
    default = parse_config([], {})
    config = parse_config([setting.flag, setting.default], {env: raw})
    assert getattr(config, field) == getattr(default, field)
    config = parse_config([setting.flag, raw], {env: setting.default})
    assert getattr(config, field) == value


def test_flag_wins_even_over_a_bad_env_value():
    config = parse_config(["--interval", "1s"], {"APP_SAMPLE_INTERVAL": "abc"})
    assert config.interval_s == 1.0


def test_listen_flag_wins_over_env():
    config = parse_config(["--listen", "127.0.0.1:9"], {"APP_LISTEN_ADDR": ":1234"})
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 9)


# --- value forms -------------------------------------------------------------

@pytest.mark.parametrize("raw,seconds", [
    ("250ms", 0.25), ("2s", 2.0), ("1.5s", 1.5), ("100ms", 0.1), ("2000ms", 2.0),
    (" 500ms ", 0.5), ("1", 1.0), ("0.75s", 0.75),
])
def test_interval_durations(raw, seconds):
    assert parse_config([], {"APP_SAMPLE_INTERVAL": raw}).interval_s == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["99ms", "2.5s", "2001ms", "0", "0ms", "abc", "", "-1s",
                                 "1h", "1.5 seconds", "s", "1e3ms", "nan", "inf"])
def test_interval_out_of_bounds_or_malformed(raw):
    message = config_error([], {"APP_SAMPLE_INTERVAL": raw})
    assert message.startswith("APP_SAMPLE_INTERVAL")
    message = config_error(["--interval=%s" % raw], {})
    assert message.startswith("--interval")


@pytest.mark.parametrize("env", ["APP_WS_MAX_CLIENTS", "APP_PROC_MAX_PIDS",
                                 "APP_PROC_MAX_FDS_PER_PID"])
@pytest.mark.parametrize("raw", ["x", "0", "-1", "1.5", "", "ten", "0x10"])
def test_bad_counts(env, raw):
    assert config_error([], {env: raw}).startswith(env)
    flag = SETTING_BY_ENV[env].flag
    assert config_error(["%s=%s" % (flag, raw)], {}).startswith(flag)


@pytest.mark.parametrize("raw,value", [("1", 1), ("64", 64), (" 12 ", 12), ("1000000", 1000000)])
def test_good_counts(raw, value):
    assert parse_config([], {"APP_WS_MAX_CLIENTS": raw}).ws_max_clients == value


@pytest.mark.parametrize("env,raw", [
    ("APP_WS_WRITE_TIMEOUT", "soon"), ("APP_WS_READ_TIMEOUT", "-5s"),
    ("APP_PROC_SCAN_INTERVAL", "100ms"), ("APP_PROC_SCAN_INTERVAL", "2m"),
])
def test_bad_durations_of_other_settings(env, raw):
    assert config_error([], {env: raw}).startswith(env)


@pytest.mark.parametrize("raw,value", [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("off", False),
])
def test_bools(raw, value):
    config = parse_config([], {"APP_ENABLE_PROMETHEUS": raw, "APP_PROC_ENABLE": raw})
    assert config.enable_prometheus is value
    assert config.proc_enable is value


@pytest.mark.parametrize("raw", ["maybe", "", "2", "enabled"])
def test_bad_bools(raw):
    assert config_error([], {"APP_ENABLE_PROMETHEUS": raw}).startswith("APP_ENABLE_PROMETHEUS")
    assert config_error(["--proc-enable", raw], {}).startswith("--proc-enable")


@pytest.mark.parametrize("argv,prometheus,procs", [
    (["--enable-prometheus", "--demo"], True, True),           # a bare switch is true
    (["--demo", "--enable-prometheus"], True, True),
    (["--enable-prometheus", "false", "--demo"], False, True),
    (["--enable-prometheus=off", "--no-proc-enable"], False, False),
    (["--proc-enable", "--enable-prometheus", "yes"], True, True),
    (["--no-enable-prometheus"], False, True),
])
def test_boolean_settings_work_as_bare_switches(argv, prometheus, procs):
    config = parse_config(argv, {"APP_ENABLE_PROMETHEUS": "true", "APP_PROC_ENABLE": "true"}
                          if "--no-enable-prometheus" in argv else {})
    assert (config.enable_prometheus, config.proc_enable) == (prometheus, procs)


def test_bare_switches_from_the_command_line(tmp_path):
    result = run_program(["--enable-prometheus", "--demo", "--once", "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert [g["vendor"] for g in json.loads(result.stdout)["gpus"]] == ["amd", "amd", "nvidia"]


@pytest.mark.parametrize("raw,level", [
    ("DEBUG", "DEBUG"), ("info", "INFO"), ("Warning", "WARNING"), ("error", "ERROR"),
])
def test_log_levels(raw, level):
    assert parse_config([], {"APP_LOG_LEVEL": raw}).log_level == level


@pytest.mark.parametrize("raw", ["verbose", "", "TRACE", "5"])
def test_bad_log_levels(raw):
    assert config_error([], {"APP_LOG_LEVEL": raw}).startswith("APP_LOG_LEVEL")


@pytest.mark.parametrize("raw,origins", [
    ("", None),
    ("*", "*"),
    (" * ", "*"),
    ("https://dash.example.com", ("https://dash.example.com",)),
    ("https://A.Example.COM, http://b.example:8080",
     ("https://a.example.com", "http://b.example:8080")),
    ("HTTP://Host:80", ("http://host",)),
    ("https://host:443/", ("https://host",)),
    ("http://192.168.1.5:8080,https://[::1]:8443",
     ("http://192.168.1.5:8080", "https://[::1]:8443")),
])
def test_origins(raw, origins):
    assert parse_config([], {"APP_ALLOWED_ORIGINS": raw}).allowed_origins == origins


@pytest.mark.parametrize("raw", [
    "ftp://host", "example.com", "https://host/path", "https://", "https://a,",
    "*,https://a", "https://host:99999", "javascript:alert(1)",
])
def test_bad_origins(raw):
    assert config_error([], {"APP_ALLOWED_ORIGINS": raw}).startswith("APP_ALLOWED_ORIGINS")
    assert config_error(["--allowed-origins", raw], {}).startswith("--allowed-origins")


@pytest.mark.parametrize("raw,host,port", [
    (":8080", "", 8080),
    ("8080", "", 8080),
    ("127.0.0.1:9", "127.0.0.1", 9),
    ("[::1]:8080", "::1", 8080),
    ("0.0.0.0:80", "0.0.0.0", 80),
    ("localhost:65535", "localhost", 65535),
    (" :8080 ", "", 8080),
])
def test_listen_addr_forms(raw, host, port):
    config = parse_config([], {"APP_LISTEN_ADDR": raw})
    assert (config.listen_host, config.listen_port) == (host, port)


@pytest.mark.parametrize("raw", [
    "host:99999", "host:", "", "http", "[::1]", "[::1]8080", ":-1", "host:80x", "::1",
])
def test_bad_listen_addr(raw):
    assert config_error([], {"APP_LISTEN_ADDR": raw}).startswith("APP_LISTEN_ADDR")
    assert config_error(["--listen", raw], {}).startswith("--listen")


@pytest.mark.parametrize("raw", ["card 1", "../etc", "", "a" * 65, "card1;rm"])
def test_bad_default_gpu(raw):
    assert config_error([], {"APP_DEFAULT_GPU": raw}).startswith("APP_DEFAULT_GPU")


@pytest.mark.parametrize("env", ["APP_SYSFS_ROOT", "APP_PROC_ROOT", "APP_SHARE_ROOT"])
def test_empty_root_paths_rejected(env):
    assert config_error([], {env: ""}).startswith(env)


def test_error_message_is_one_line_and_quotes_the_value():
    message = config_error([], {"APP_SAMPLE_INTERVAL": "1\n2"})
    assert message.startswith("APP_SAMPLE_INTERVAL")
    assert "\n" not in message


@pytest.mark.parametrize("argv", [["--bogus"], ["--interval"], ["positional"]])
def test_command_line_errors_are_config_errors(argv):
    message = config_error(argv, {})
    assert "\n" not in message
    assert argv[0] in message


# --- the program as a user runs it ------------------------------------------

@pytest.mark.parametrize("env,raw", [
    ("APP_SAMPLE_INTERVAL", "abc"),
    ("APP_SAMPLE_INTERVAL", "5s"),
    ("APP_LISTEN_ADDR", "host:99999"),
    ("APP_WS_MAX_CLIENTS", "-1"),
    ("APP_ALLOWED_ORIGINS", "ftp://x"),
])
def test_bad_env_exits_2_with_one_line(env, raw, tmp_path):
    result = run_program([], tmp_path, **{env: raw})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert env in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args,flag", [
    (["--interval", "50ms"], "--interval"),
    (["--listen", "[::1]"], "--listen"),
    (["--log-level=chatty"], "--log-level"),
    (["--bogus-flag"], "--bogus-flag"),
    (["--json"], "--json"),
])
def test_bad_flag_exits_2_with_one_line(args, flag, tmp_path):
    result = run_program(args, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0]
    assert "Traceback" not in result.stderr


def test_help_lists_every_variable_and_its_default(tmp_path):
    result = run_program(["--help"], tmp_path, COLUMNS="80")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())     # argparse wraps lines
    for setting in SETTINGS:
        assert setting.env in text, setting.env
        assert setting.flag in text, setting.flag
        near = text[text.index(setting.env):][:len(setting.env) + 40]
        if setting.default:
            assert setting.default in near, (setting.env, near)
        else:
            assert "''" in near or "empty" in near.lower() or "none" in near.lower(), near
    for flag in ("--demo", "--once", "--json", "--version", "--help"):
        assert flag in text


def test_short_help_flag(tmp_path):
    result = run_program(["-h"], tmp_path)
    assert result.returncode == 0
    assert "APP_SAMPLE_INTERVAL" in result.stdout


def test_version(tmp_path):
    result = run_program(["--version"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == atw.__version__


def once_json(tmp_path, *extra, **env):
    result = run_program(["--once", "--json"] + list(extra), tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


RX6900XT_SLOW = {"vram_total_bytes": 17163091968, "vis_vram_total_bytes": 17163091968,
                 "gtt_total_bytes": 16786171904, "power_cap_w": 289.0,
                 "pcie_gen": 4, "pcie_speed_gts": 16.0, "pcie_width": 16}
RX6900XT_FAST = {"gpu_busy_pct": 3, "mem_busy_pct": 0, "sclk_mhz": 500, "mclk_mhz": 1000,
                 "temp_c": 56.0, "temp_junction_c": 59.0, "temp_mem_c": 54.0, "power_w": 36.0,
                 "vram_used_bytes": 668274688, "runtime_status": "active"}
PHOENIX_SLOW = {"vram_total_bytes": 4294967296, "gtt_total_bytes": 31433977856}
PHOENIX_FAST = {"gpu_busy_pct": 0, "sclk_mhz": 800, "temp_c": 25.0, "power_w": 3.103,
                "vddnb_mv": 615, "gtt_used_bytes": 211398656, "runtime_status": "active"}


def check_multi_gpu_snapshot(snapshot):
    assert snapshot["version"] == atw.__version__
    intel, gpus = snapshot["gpus"][0], snapshot["gpus"][1:]
    # card0: the synthetic i915 iGPU with only PCI files: found, every value null
    assert (intel["id"], intel["vendor"], intel["driver"]) == ("card0", "intel", "i915")
    assert intel["name"] == "Intel GPU 8086:3e92" and intel["apu"] is True
    assert set(intel["metrics"].values()) == {None}
    assert [g["id"] for g in gpus] == ["card1", "card2"]
    assert [g["vendor"] for g in gpus] == ["amd", "amd"]
    assert [g["name"] for g in gpus] == ["AMD Radeon RX 6900 XT", "AMD Phoenix1"]
    assert [g["pci"] for g in gpus] == ["0000:0c:00.0", "0000:64:00.0"]
    assert [g["apu"] for g in gpus] == [False, True]
    assert [g["demo"] for g in gpus] == [False, False]
    for gpu in snapshot["gpus"]:
        assert list(gpu["metrics"]) == list(atw.METRIC_KEYS)
    for gpu, want in zip(gpus, [dict(RX6900XT_FAST, **RX6900XT_SLOW),
                                dict(PHOENIX_FAST, **PHOENIX_SLOW)]):
        got = {key: gpu["metrics"][key] for key in want}
        assert got == want, gpu["id"]


def test_once_json_against_multi_gpu(tmp_path):
    snapshot = once_json(tmp_path, APP_SYSFS_ROOT=str(SYS / "multi_gpu"),
                         APP_SHARE_ROOT=str(SHARE))
    check_multi_gpu_snapshot(snapshot)


def test_once_json_is_complete_every_time(tmp_path):
    """--once samples each GPU exactly once, by itself: no run may lose the slow
    files (totals, caps, PCIe) or crash on a reader shared with a thread."""
    for _ in range(8):
        snapshot = once_json(tmp_path, APP_SYSFS_ROOT=str(SYS / "multi_gpu"),
                             APP_SHARE_ROOT=str(SHARE))
        check_multi_gpu_snapshot(snapshot)


def test_run_once_leaves_no_threads_behind(capsys):
    """run_once must not start sampler threads that keep reading the readers it
    samples and closes (they race with it)."""
    config = parse_config(["--once", "--json"], {"APP_SYSFS_ROOT": str(SYS / "multi_gpu"),
                                                 "APP_SHARE_ROOT": str(SHARE)})
    before = set(threading.enumerate())
    try:
        assert atw.run_once(config) == 0
        started = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    finally:
        leftovers = [t for t in threading.enumerate() if t not in before]
        for thread in leftovers:
            if hasattr(thread, "stop"):
                thread.stop()
        for thread in leftovers:
            thread.join(2.0)
    assert [t.name for t in started] == []
    check_multi_gpu_snapshot(json.loads(capsys.readouterr().out))


def test_once_json_demo(tmp_path):
    snapshot = once_json(tmp_path, "--demo", APP_SYSFS_ROOT=str(tmp_path))
    gpus = snapshot["gpus"]
    assert [(g["id"], g["vendor"]) for g in gpus] == [
        ("card0", "amd"), ("card1", "amd"), ("nvidia0", "nvidia")]
    assert all(g["demo"] is True for g in gpus)
    for gpu in gpus:
        assert list(gpu["metrics"]) == list(atw.METRIC_KEYS)
        assert gpu["metrics"]["gpu_busy_pct"] is not None
    assert [g["apu"] for g in gpus] == [False, True, False]
    nvidia = gpus[2]["metrics"]
    assert nvidia["vram_used_source"] == "nvml_v2" and isinstance(nvidia["throttle_reasons"], list)
    assert nvidia["pstate"] in (2, 8) and nvidia["gtt_used_bytes"] is None


def test_once_json_with_no_gpu(tmp_path):
    empty = tmp_path / "sys"
    empty.mkdir()
    snapshot = once_json(tmp_path, APP_SYSFS_ROOT=str(empty), APP_SHARE_ROOT=str(SHARE))
    assert snapshot["gpus"] == []


def test_once_json_radeon_only_host(tmp_path):
    snapshot = once_json(tmp_path, APP_SYSFS_ROOT=str(SYS / "hd7870_radeon"),
                         APP_SHARE_ROOT=str(SHARE))
    assert snapshot["gpus"] == []


def test_once_table(tmp_path):
    result = run_program(["--once"], tmp_path, APP_SYSFS_ROOT=str(SYS / "rx6900xt"),
                         APP_SHARE_ROOT=str(SHARE))
    assert result.returncode == 0, result.stderr
    assert "card0" in result.stdout
    assert "AMD Radeon RX 6900 XT" in result.stdout


def test_once_table_is_for_people(tmp_path):
    """The plain --once table rounds like the page and shows memory in MiB/GiB."""
    result = run_program(["--demo", "--once"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("host  cpu ") and " CPUs  load " in lines[0]   # the host line
    lines = lines[1:]
    assert lines[0].startswith("card0  AMD Radeon RX 7800 XT (demo)  [amd, 0000:03:00.0]")
    assert re.search(r"vram \d+\.\d\d GiB / 15\.98 GiB", lines[1]), lines[1]
    assert "bytes" not in result.stdout
    assert re.search(r"power \d+\.\d W", lines[1]), lines[1]


@pytest.mark.parametrize("count", [1, 3, 8])
def test_demo_gpus_setting(tmp_path, count):
    snapshot = once_json(tmp_path, "--demo", "--demo-gpus", str(count))
    gpus = snapshot["gpus"]
    assert len(gpus) == count and len({g["id"] for g in gpus}) == count
    assert len({g["pci"] for g in gpus}) == count
    assert all(g["demo"] and g["procs"]["processes"] for g in gpus)


@pytest.mark.parametrize("raw", ["0", "9", "many"])
def test_bad_demo_gpus(raw):
    assert config_error(["--demo"], {"APP_DEMO_GPUS": raw}).startswith("APP_DEMO_GPUS")


def test_reserved_roots_are_gone():
    """APP_DEV_ROOT / APP_DEBUGFS_ROOT were documented but nothing read them:
    they are not settings any more (the monitor never opens device nodes)."""
    assert "APP_DEV_ROOT" not in SETTING_BY_ENV and "APP_DEBUGFS_ROOT" not in SETTING_BY_ENV
    assert "unrecognized arguments: --dev-root" in config_error(["--dev-root", "/dev"], {})


def test_demo_rocm_processes_show_no_compute_engine_time(tmp_path):
    """Real kfd (ROCm) queues never appear in the DRM engine counters, so the
    demo's kfd processes must not show compute engine % either."""
    snapshot = once_json(tmp_path, "--demo")
    kfd_rows = [p for g in snapshot["gpus"] for p in g["procs"]["processes"] if p["kfd"]]
    assert kfd_rows
    for row in kfd_rows:
        assert not any(row["engines_pct"].values()), row
        assert not row["gpu_time_ms_per_s"], row


# --- settings that would do nothing are refused; start-up says what a new user needs ----

DEMO_ONLY = [(s.env, s.flag, s.default) for s in SETTINGS if s.field in atw.DEMO_ONLY_FIELDS]


def test_demo_only_settings_are_the_three_demo_settings():
    assert sorted(e for e, _, _ in DEMO_ONLY) == [
        "APP_DEMO_GPUS", "APP_DEMO_PROCESSES", "APP_DEMO_SCENARIO"]


@pytest.mark.parametrize("env,flag,default", DEMO_ONLY, ids=[d[0] for d in DEMO_ONLY])
def test_demo_settings_without_demo_are_refused(env, flag, default):
    """Flag or APP_* (a container's environment): both refused without --demo,
    even at the default value; with --demo both are taken."""
    assert config_error([flag, default], {}) == "%s: only meaningful with --demo" % flag
    assert config_error(["--once"], {env: default}) == "%s: only meaningful with --demo" % env
    assert parse_config(["--demo", flag, default], {}) == parse_config(["--demo"], {env: default})


@pytest.mark.parametrize("mode", [["--healthcheck"], ["--version"], ["--help"]])
def test_demo_environment_is_not_refused_beside_the_server(mode):
    """A container's HEALTHCHECK runs --healthcheck with the server's environment
    but without its --demo: that must not fail."""
    parse_config(mode, {"APP_DEMO_GPUS": "8", "APP_DEMO_SCENARIO": "leak"})


@pytest.mark.parametrize("args,env,name", [
    (["--demo-gpus", "2"], {}, "--demo-gpus"),
    (["--demo-scenario", "leak"], {}, "--demo-scenario"),
    ([], {"APP_DEMO_PROCESSES": "4"}, "APP_DEMO_PROCESSES"),
    (["--once"], {"APP_DEMO_GPUS": "2"}, "APP_DEMO_GPUS"),
])
def test_demo_settings_without_demo_exit_2_with_one_line(args, env, name, tmp_path):
    result = run_program(args, tmp_path, APP_HISTORY_PATH="off", **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == ["amdgpu_top_web: error: %s: only meaningful with --demo"
                                          % name]
    assert result.stdout == ""


def page_commands():
    with open(str(REPO / "index.html"), encoding="utf-8") as handle:
        return atw.format_vendor_commands(atw.parse_page_pins(handle.read()))


def test_vendor_commands_install_every_pinned_package_of_the_page():
    """The air-gapped install names each package of the import map and the
    stylesheet at its pinned version, and tests/package.json pins the same."""
    install, start = page_commands()
    with open(str(REPO / "tests" / "package.json"), encoding="utf-8") as handle:
        pinned = json.load(handle)["dependencies"]
    assert sorted(install.split()[4:]) == sorted("%s@%s" % item for item in pinned.items())
    assert install.split()[:4] == ["npm", "install", "--prefix", "~/atw-vendor"]
    assert start == "APP_VENDOR_DIR=~/atw-vendor/node_modules python3 amdgpu_top_web.py"


@pytest.mark.parametrize("make", ["missing", "prefix_folder", "empty"])
def test_a_wrong_vendor_dir_is_one_line_and_exit_2(make, tmp_path):
    """Not a folder, or a folder holding none of the packages (the --prefix folder
    instead of its node_modules): one line naming APP_VENDOR_DIR and the command."""
    folder = tmp_path / "atw-vendor"
    if make != "missing":
        (folder / "node_modules" / "preact").mkdir(parents=True)
        (folder / "node_modules" / "preact" / "package.json").write_text("{}")
    target = folder if make == "prefix_folder" else folder / "node_modules" / "preact"
    if make == "missing":
        target = tmp_path / "nope"
    result = run_program(["--listen", "127.0.0.1:0"], tmp_path, APP_HISTORY_PATH="off",
                         APP_VENDOR_DIR=str(target))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("amdgpu_top_web: error: APP_VENDOR_DIR=")
    assert page_commands()[0] in lines[0]


def fake_vendor_dir(base, versions=None):
    """A node_modules holding a package.json per pinned package of the page."""
    with open(str(REPO / "index.html"), encoding="utf-8") as handle:
        pins = atw.parse_page_pins(handle.read())
    for package, version in pins.items():
        folder = base / "node_modules" / package
        folder.mkdir(parents=True)
        (folder / "package.json").write_text(json.dumps(
            {"version": (versions or {}).get(package, version)}))
    return str(base / "node_modules")


def test_a_vendor_dir_at_other_versions_warns_once_per_package(server, tmp_path):
    """preact serves two files (preact and preact/hooks): still one line for it."""
    folder = fake_vendor_dir(tmp_path, {"preact": "10.0.0"})
    proc = server(env={"APP_VENDOR_DIR": folder})
    proc.wait_log("event=vendor_mismatch")
    proc.wait_metrics()
    lines = [l for l in proc.log().splitlines() if "vendor_mismatch" in l]
    assert len(lines) == 1 and "package=preact pinned=10.29.8 found=10.0.0" in lines[0], lines


def test_startup_says_once_how_to_serve_the_scripts_without_internet(server):
    proc = server()
    install, start = page_commands()
    line = proc.wait_log("event=cdn_mode")
    assert "without internet" in line and install in line and start in line
    proc.wait_metrics()
    assert len([l for l in proc.log().splitlines() if "event=cdn_mode" in l]) == 1


def test_startup_has_no_cdn_hint_when_the_scripts_are_served_here(server, tmp_path):
    proc = server(env={"APP_VENDOR_DIR": fake_vendor_dir(tmp_path)})
    proc.wait_metrics()
    assert "event=cdn_mode" not in proc.log()
    assert "event=vendor_mismatch" not in proc.log()


def test_default_gpu_naming_no_gpu_warns_once(server):
    proc = server(env={"APP_DEFAULT_GPU": "card9"})
    line = proc.wait_log("event=default_gpu_unknown")
    assert "default_gpu=card9" in line and "level=WARNING" in line
    proc.wait_metrics()
    assert len([l for l in proc.log().splitlines() if "default_gpu_unknown" in l]) == 1


def test_default_gpu_naming_a_gpu_does_not_warn(server):
    body = server().wait_metrics()
    proc = server(env={"APP_DEFAULT_GPU": body["gpus"][-1]["id"]})
    proc.wait_metrics()
    assert "default_gpu_unknown" not in proc.log()


def _demo_run(per_gpu, scenario="none", seconds=300.0, step_s=0.5):
    """A demo run with every reader and the process source on one clock:
    yields (gpu_id, metrics, processes) at every step."""
    infos = atw.demo_gpu_infos(8)
    backend = atw.DemoBackend(per_gpu, 8, scenario)
    readers = [backend.open_reader(info) for info in infos]
    clock = [0.0]
    source = atw.DemoProcSource(infos, per_gpu, clock=lambda: clock[0], leak=scenario == "leak")
    for i in range(int(seconds / step_s)):
        clock[0] = i * step_s
        by_pci = source.scan().by_pci
        for reader in readers:
            yield reader.info.id, reader.sample(1000.0 + i * step_s), by_pci[reader.info.pci]["processes"]


@pytest.mark.parametrize("per_gpu", [8, 40])
def test_demo_processes_are_never_busier_than_their_gpu(per_gpu):
    """The demo once said "blender is making this GPU busy: gfx 53 %" next to
    "GPU busy 6 %": its processes' engine % (every engine but NVML's memory
    controller, summed over the processes) now stay within the GPU's busy."""
    steps = 0
    for gpu_id, metrics, procs in _demo_run(per_gpu):
        busy = metrics["gpu_busy_pct"]
        total = sum(v for p in procs for name, v in p["engines_pct"].items() if v and name != "mem")
        assert total <= busy + 0.5, (gpu_id, busy, total)
        top = max(v for p in procs for name, v in p["engines_pct"].items() if v and name != "mem")
        assert top > 1.0                                  # the processes do use the GPU
        steps += 1
    assert steps == 8 * 600


@pytest.mark.parametrize("per_gpu", [8, 40])
def test_demo_vram_is_its_processes_plus_a_small_reserve(per_gpu):
    """The demo's H100 showed 22 GiB of "other" VRAM that no process held: VRAM
    used is now its processes' sum plus a driver reserve under 512 MiB."""
    for gpu_id, metrics, procs in _demo_run(per_gpu, seconds=120.0, step_s=2.0):
        held = sum(p["vram_bytes"] or 0 for p in procs)
        other = metrics["vram_used_bytes"] - held
        assert 0 < other < 512 << 20, (gpu_id, other)
        assert metrics["vram_used_bytes"] <= metrics["vram_total_bytes"], gpu_id
        if metrics["gtt_used_bytes"] is not None:
            gtt_other = metrics["gtt_used_bytes"] - sum(p["gtt_bytes"] or 0 for p in procs)
            assert 0 < gtt_other < 512 << 20, (gpu_id, gtt_other)


def test_the_default_demo_has_no_hostile_process(tmp_path):
    """The escaping test process (an HTML tag for a name) is not the first thing
    a new user sees: only --demo-scenario hostile adds it."""
    names = [p["name"] for g in once_json(tmp_path, "--demo")["gpus"] for p in g["procs"]["processes"]]
    assert names and not any("<" in (n or "") for n in names)
    hostile = once_json(tmp_path, "--demo", "--demo-scenario", "hostile")
    names = [p["name"] for g in hostile["gpus"] for p in g["procs"]["processes"]]
    assert "<img src=x onerror=alert(1)>" in names
