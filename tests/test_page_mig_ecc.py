"""The page's view of NVIDIA MIG instances and ECC counts (issue 18 item 5),
on frames as the server sends them (the server side: test_nvml_mig_ecc.py)."""

import json
import time

import pytest

from test_nvml_mig_ecc import GIB, expected_instances
from test_page import start_server  # noqa: F401 (fixture; skips without Playwright)

pytestmark = pytest.mark.browser


def test_page_shows_instances_ecc_and_the_process_instance(start_server, browser):
    """The GPU view of a MIG GPU (frames as the server sends them): the busy
    tile says utilisation is whole-GPU and not reported, the instances are
    listed with their memory, the ECC tile is alert-coloured on an uncorrected
    error, a process carries its instance's badge; a plain GPU shows none of it."""
    import test_page as P
    gpus = [P._identity("nvidia0", "nvidia", "NVIDIA H100 80GB HBM3", "nvidia"),
            P._identity("nvidia1", "nvidia", "NVIDIA L4", "nvidia")]
    stats = {"nvidia0": dict(P._metrics(runtime_status="active", vram_used_source="nvml_v2",
                                        vram_used_bytes=4 * GIB, vram_total_bytes=80 * GIB),
                             mig=expected_instances(), ecc_corrected_volatile=4,
                             ecc_uncorrected_volatile=1, ecc_corrected_aggregate=40,
                             ecc_uncorrected_aggregate=3),
             "nvidia1": dict(P._metrics(runtime_status="active", gpu_busy_pct=30), mig=None,
                             ecc_corrected_volatile=None, ecc_uncorrected_volatile=None,
                             ecc_corrected_aggregate=None, ecc_uncorrected_aggregate=None)}
    empty = {"vram_bytes": None, "gtt_bytes": None, "cpu_bytes": None, "gpu_time_ms_per_s": None,
             "engines_pct": {}, "clients": 0, "processes": 0}
    procs = {"nvidia0": {"capabilities": dict(P.NVML_CAPS, process_engines=False, engines=[]),
                         "processes": [P._row(1500, "llama-server", vram_bytes=3 * GIB, type="C",
                                              mig={"gi": 1, "ci": 0, "profile": "1g.10gb"})],
                         "totals": dict(empty, vram_bytes=3 * GIB, clients=1, processes=1),
                         "visibility": None},
             "nvidia1": {"capabilities": P.NVML_CAPS, "processes": [], "totals": empty,
                         "visibility": None}}

    class Mock(P.MockSocket):
        def frames(self):
            ts = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            for ws in self.routes:
                for gpu_id in ("nvidia0", "nvidia1"):
                    ws.send(json.dumps({"type": "stats", "gpu_id": gpu_id, "ts": ts,
                                        "metrics": stats[gpu_id]}))
                    ws.send(json.dumps(dict(procs[gpu_id], type="procs", gpu_id=gpu_id, ts=ts)))

    server = start_server()
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(10000)
        watch = P.Watch(page, server)
        Mock(page, gpus)
        page.goto(server.url + "#gpu=nvidia0")
        nv = page.locator("article.gpu[data-gpu=nvidia0]")
        P.expect(nv).to_be_visible()
        busy = nv.locator(".tile", has=page.locator("[data-metric=gpu_busy_pct]"))
        P.expect(busy).to_contain_text("whole GPU: NVML reports no utilisation under MIG")
        mig = nv.locator("[data-testid=mig] li")
        P.expect(mig).to_have_count(3)
        P.expect(mig.nth(0)).to_contain_text("1g.10gb GI 1 · CI 0: 3.00")
        P.expect(mig.nth(2)).to_contain_text("1g.10gb+me GI 5 · CI 0")
        ecc = nv.locator(".tile", has=page.locator("[data-metric=ecc]"))
        P.expect(ecc.locator("[data-metric=ecc]")).to_have_text("1 uncorrected")
        P.expect(ecc).to_contain_text("lifetime 3 / 40")
        P.expect(nv.locator(".tile.alert", has_text="ECC errors")).to_have_count(1)
        P.expect(nv.locator("tbody tr[data-pid='1500'] .badge.mig")).to_have_text("1g.10gb")
        page.evaluate("() => { location.hash = 'gpu=nvidia1'; }")
        plain = page.locator("article.gpu[data-gpu=nvidia1]")
        P.expect(plain).to_be_visible()
        P.expect(plain.locator("[data-metric=gpu_busy_pct]")).to_have_text("30%")
        P.expect(plain.locator("[data-testid=mig]")).to_have_count(0)
        P.expect(plain.locator("[data-metric=ecc]")).to_have_count(0)
        P.expect(plain.locator(".tile", has=page.locator("[data-metric=gpu_busy_pct]"))).not_to_contain_text(
            "MIG")
        watch.assert_clean()
    finally:
        context.close()
