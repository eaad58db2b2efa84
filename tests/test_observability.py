"""Logs are key=value lines with a request id on HTTP errors; /debug/* is opt-in."""

import re

from conftest import wait_for


def test_debug_endpoints_are_off_by_default(server):
    srv = server(fixture="multi_gpu")
    for path in ("/debug/threads", "/debug/memory"):
        response = srv.get(path)
        assert response.status == 404
        assert b"turn them on with --enable-pprof or APP_ENABLE_PPROF=true" in response.body


def test_debug_threads_and_memory_when_enabled(server):
    srv = server(args=["--demo"], env={"APP_ENABLE_PPROF": "true", "APP_PROC_ENABLE": "true"})
    srv.wait_metrics(count=3)
    # The GPUs, the process scan, the host and the alert pass share the
    # clock's two workers (SamplerClock).
    names = ("MainThread", "ws-hub", "discovery", "sampler-clock-1", "sampler-clock-2", "alerts")

    def dump():
        threads = srv.get("/debug/threads")
        assert threads.status == 200 and threads.headers["content-type"].startswith("text/plain")
        text = threads.body.decode()
        return text if all("--- thread %s " % name in text for name in names) else None
    text = wait_for(dump, 5, message="every thread in /debug/threads")
    for name in names:
        assert "--- thread %s " % name in text
    memory = srv.get("/debug/memory")
    assert memory.status == 200 and memory.body.decode().startswith("total traced: ")


def test_http_error_line_carries_the_request_id(server):
    srv = server(fixture="multi_gpu")
    response = srv.get("/no/such/path")
    assert response.status == 404
    request_id = response.headers["x-request-id"]
    assert re.match(r"^[0-9a-f]{16}$", request_id)
    wait_for(lambda: request_id in srv.log(), 5, message="error log line")
    line = [l for l in srv.log().splitlines() if request_id in l][0]
    assert "event=http_error status=404 method=GET path='/no/such/path'" in line
    assert "level=INFO" in line and "thread=" in line


def test_every_log_line_is_key_value(server):
    srv = server(fixture="multi_gpu")
    srv.get("/nope")
    wait_for(lambda: "event=http_error" in srv.log(), 5, message="error log line")
    for line in srv.log().splitlines():
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} level=[A-Z]+ thread=\S.* event=[a-z_]+", line), line
