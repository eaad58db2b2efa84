"""The page in Chromium on a real mixed box: the AMD RX 6900 XT capture, an i915
iGPU and an xe Arc B580 (testdata/sys/mixed_box) and two NVIDIA GPUs of the
stand-in libnvidia-ml.so.1 (tests/nvml), processes from testdata/proc/multi.
Every GPU is offered with its vendor, and each GPU's view carries its badge."""

import os

import pytest

import nvml_support as S
from nvml_support import fake_nvml_build, fake_nvml_lib  # noqa: F401 (fixtures)
from test_page import (ARTIFACTS, TESTDATA, browser, open_page, start_server,  # noqa: F401
                       vendor_dir)

pytestmark = pytest.mark.browser
expect = pytest.importorskip("playwright.sync_api").expect

GPUS = {"card0": "Intel", "card1": "AMD", "card2": "Intel", "nvidia0": "NVIDIA",
        "nvidia1": "NVIDIA"}


def test_mixed_box_page_shows_every_vendor(start_server, open_page, fake_nvml_lib, tmp_path):
    scenario = str(tmp_path / "scenario.txt")
    S.write_scenario(scenario, gpus=[dict(name="NVIDIA GeForce RTX 4090", pci="00000000:1B:00.0",
                                          pci_device_id=0x268410DE, clocks_event_reasons=0x4),
                                     dict(pci="00000000:9A:00.0")],
                     procs=[dict(gpu=1, list="compute", pid=1500, mem=30 << 30)])
    env = S.nvml_env(fake_nvml_lib, scenario, base={})
    server = start_server(args=(), env={
        "FAKE_NVML_SCENARIO": env["FAKE_NVML_SCENARIO"], "APP_NVML_LIBRARY": env["APP_NVML_LIBRARY"],
        "APP_SYSFS_ROOT": os.path.join(TESTDATA, "sys", "mixed_box"),
        "APP_SHARE_ROOT": os.path.join(TESTDATA, "share"), "APP_PROC_ENABLE": "true",
        "APP_PROC_ROOT": os.path.join(TESTDATA, "proc", "multi"), "APP_SAMPLE_INTERVAL": "250ms"})
    page, watch = open_page(server)
    select = page.get_by_label("GPU", exact=True)
    for gpu_id, vendor in GPUS.items():
        expect(select.locator("option[value=%s]" % gpu_id)).to_contain_text("[%s] %s" % (vendor, gpu_id))
    for gpu_id, vendor in GPUS.items():
        select.select_option(gpu_id)
        article = page.locator("article.gpu[data-gpu=%s]" % gpu_id)
        expect(article).to_be_visible()
        expect(article.locator(".badge.vendor").first).to_have_text(vendor)
    select.select_option("nvidia0")
    expect(page.locator("article.gpu[data-gpu=nvidia0]")).to_contain_text("SwPowerCap")
    os.makedirs(ARTIFACTS, exist_ok=True)
    page.screenshot(path=os.path.join(ARTIFACTS, "mixed-box-nvidia0.png"), full_page=True)
    watch.assert_clean()
