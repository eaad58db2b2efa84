"""/metrics: opt-in Prometheus text that passes `promtool check metrics` with no
lint findings, parses with prometheus_client, and carries the fixture's values."""

import json
import os
import subprocess

import pytest

import amdgpu_top_web as atw
from conftest import TESTDATA, debian_tool

PROC_MULTI = os.path.join(TESTDATA, "proc", "multi")
PROM_ENV = {"APP_ENABLE_PROMETHEUS": "true", "APP_PROMETHEUS_PROCESSES": "5",
            "APP_PROC_ENABLE": "true", "APP_PROC_ROOT": PROC_MULTI,
            "APP_SAMPLE_INTERVAL": "100ms", "APP_PROC_SCAN_INTERVAL": "500ms"}


def promtool():
    return debian_tool("promtool", "prometheus")


def scrape(srv):
    response = srv.get("/metrics")
    assert response.status == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return response.body.decode("utf-8")


def wait_for_procs(srv):
    from conftest import wait_for
    wait_for(lambda: "amdgpu_process_memory_bytes" in scrape(srv), 10, message="per-process series")


def parse(text):
    from prometheus_client.parser import text_string_to_metric_families
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_value(families, family_name, **labels):
    for sample in families[family_name].samples:
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    raise AssertionError("no %s sample with %r" % (family_name, labels))


@pytest.fixture(scope="module")
def metrics_text(server_module):
    srv = server_module(fixture="multi_gpu", env=PROM_ENV)
    wait_for_procs(srv)
    return scrape(srv)


def test_promtool_check_metrics_has_no_findings(metrics_text):
    result = subprocess.run([promtool(), "check", "metrics"], input=metrics_text.encode(),
                            capture_output=True, timeout=30)
    findings = (result.stdout + result.stderr).decode()
    assert result.returncode == 0 and findings.strip() == "", findings


def test_values_match_the_fixture(metrics_text):
    families = parse(metrics_text)
    # RX 6900 XT capture (testdata/sys/multi_gpu card1): busy 3 %, edge 56 °C, VRAM used.
    assert sample_value(families, "amdgpu_gpu_busy_ratio", gpu="card1") == pytest.approx(0.03)
    assert sample_value(families, "amdgpu_temperature_celsius", gpu="card1", sensor="edge") == 56.0
    assert sample_value(families, "amdgpu_memory_used_bytes", gpu="card1", pool="vram") == 668274688
    assert sample_value(families, "amdgpu_gpu_info", gpu="card1", name="AMD Radeon RX 6900 XT",
                        pci="0000:0c:00.0") == 1
    # The Phoenix APU has no memory-busy file: no sample rather than a fake 0.
    assert all(s.labels["gpu"] != "card2" for s in families["amdgpu_memory_controller_busy_ratio"].samples)


def test_one_prefix_gpu_label_and_bounded_process_series(metrics_text):
    families = parse(metrics_text)
    assert all(name.startswith("amdgpu_") for name in families)
    for name, family in families.items():
        # The host families (the fixture /proc has a stat) belong to no GPU.
        # build_info and ready belong to the program (attribution-fleet.md §5.7).
        if not name.startswith(("amdgpu_exporter_", "amdgpu_host_")) \
                and name not in ("amdgpu_build_info", "amdgpu_ready"):
            assert all("gpu" in s.labels and "pci" in s.labels for s in family.samples), name
    per_gpu = {}
    for sample in families["amdgpu_process_memory_bytes"].samples:
        per_gpu.setdefault(sample.labels["gpu"], set()).add(sample.labels["pid"])
    assert per_gpu and all(len(pids) <= 5 for pids in per_gpu.values())
    # Engine time is a counter in seconds (prometheus_client strips the _total suffix).
    assert families["amdgpu_process_engine_seconds"].type == "counter"
    assert families["amdgpu_exporter_sample_duration_seconds"].samples


def test_metrics_is_off_by_default(server):
    srv = server(fixture="multi_gpu")
    response = srv.get("/metrics")
    assert response.status == 404
    # says how to turn it on, not something that reads as if it were on
    assert json.loads(response.body)["error"] == (
        "Prometheus metrics are off; turn them on with --enable-prometheus or "
        "APP_ENABLE_PROMETHEUS=true")


def test_label_values_are_escaped():
    identity = {"id": "card0", "vendor": "amd", "pci": "0000:03:00.0", "pci_id": "1002:747e",
                "revision": "c8",
                "name": 'evil "quoted" \\ name\nnext', "driver": "amdgpu", "apu": False,
                "demo": True}
    text = atw.render_prometheus([(identity, {"gpu_busy_pct": 5})], {}, {}, 0)
    assert 'name="evil \\"quoted\\" \\\\ name\\nnext"' in text
    families = parse(text)
    info = families["amdgpu_gpu_info"].samples[0]
    assert info.labels["name"] == 'evil "quoted" \\ name\nnext'


def test_process_count_counts_visible_processes_without_per_process_series():
    identity = {"id": "card0", "vendor": "amd", "pci": "0000:03:00.0", "pci_id": "1002:747e",
                "revision": "c8", "name": "x", "driver": "amdgpu", "apu": False, "demo": True}
    other = dict(identity, id="card1", pci="0000:0c:00.0")
    rows = [atw.build_proc_row(pid=1, name="a"), atw.build_proc_row(pid=2, name="b"),
            atw.build_proc_row(pid=3, name="hidden", visible=False)]
    procs = {"card0": atw.build_procs_message("card0", 0.0, atw.build_procs_entry(rows, 3, {}),
                                              None, {}),
             "card1": atw.build_procs_message("card1", 0.0, None, None, {})}
    # Per-process series off (0): the per-GPU count is still there, hidden PIDs not counted.
    families = parse(atw.render_prometheus([(identity, {}), (other, {})], procs, {}, 0))
    assert sample_value(families, "amdgpu_processes", gpu="card0", pci="0000:03:00.0") == 2
    assert sample_value(families, "amdgpu_processes", gpu="card1") == 0
    assert "amdgpu_process_memory_bytes" not in families
    # No process scan (no procs message): no count, rather than a false 0.
    assert "amdgpu_processes" not in parse(atw.render_prometheus([(identity, {})], {}, {}, 0))


def test_process_count_on_a_scanning_server(metrics_text):
    families = parse(metrics_text)
    assert families["amdgpu_processes"].type == "gauge"
    assert all(s.value >= 0 and "gpu" in s.labels for s in families["amdgpu_processes"].samples)
