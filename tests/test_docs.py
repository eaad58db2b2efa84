"""The README, TROUBLESHOOTING.md and the page's fallback say what the program does.

Every figure and list that the program also holds is read from the program here,
never copied: the live ring's size, the /api/alerts ranges, the air-gapped
commands (from the page's pinned CDN URLs), the Debian packages tests/run.sh
installs. Static: every Python, no tools.
"""
import math
import re

import pytest

import amdgpu_top_web as atw
from conftest import REPO

README = "README.md"
TROUBLESHOOTING = "TROUBLESHOOTING.md"


def read(name):
    with open("%s/%s" % (REPO, name), encoding="utf-8") as handle:
        return handle.read()


def flat(text):
    return " ".join(text.split())


def top_of_readme():
    """The README down to its first section: what a newcomer reads first."""
    text = read(README)
    return text[:text.index("\n## ")]


def vendor_commands():
    return atw.format_vendor_commands(atw.parse_page_pins(read("index.html")))


# -- the live ring ----------------------------------------------------------------------

def ring_kib(interval_s):
    samples = int(math.ceil(atw.HISTORY_WINDOW_S / interval_s))
    return samples, (len(atw.HISTORY_KEYS) + 1) * 8 * samples / 1024.0


def kib(value):
    return ("%.2f" % value).rstrip("0").rstrip(".")


def test_readme_ring_size_is_computed_from_the_window_the_interval_and_the_columns():
    text = flat(read(README))
    at_250, kib_250 = ring_kib(0.25)
    at_100, kib_100 = ring_kib(0.1)            # the shortest APP_SAMPLE_INTERVAL
    assert "(%d series + timestamps)" % len(atw.HISTORY_KEYS) in text
    assert "%s samples at 250 ms, %s at 100 ms" % (format(at_250, ","), format(at_100, ",")) in text
    match = re.search(r"\*\*([0-9.]+) KiB per GPU at 250 ms \(([0-9,]+) bytes\), at most "
                      r"([0-9.]+) KiB at 100 ms\*\*", text)
    assert match, "the ring's size sentence is gone"
    assert match.group(1) == kib(kib_250) == "187.5"
    assert int(match.group(2).replace(",", "")) == kib_250 * 1024
    assert match.group(3) == kib(kib_100)
    host = (len(atw.HOST_HISTORY_KEYS) + 1) * 8 * int(atw.HISTORY_WINDOW_S / atw.HOST_INTERVAL_S)
    assert "(%d series, one sample a second) adds %s KiB" % (
        len(atw.HOST_HISTORY_KEYS), kib(host / 1024.0)) in text


# -- one list of /api/alerts ranges: the server's -----------------------------------------

def test_alerts_ranges_in_readme_and_docstring_are_the_servers():
    ranges = "|".join(atw.HISTORY_RANGES_S)
    row = next(line for line in read(README).splitlines() if line.startswith("| `/api/alerts` |"))
    assert re.search(r"\?range=([^`]*)`", row).group(1).replace("\\|", "|") == ranges
    doc = next(line for line in atw.__doc__.splitlines() if line.strip().startswith("/api/alerts"))
    assert re.search(r"\?range=([^,)\s]*)", doc).group(1) == ranges
    # and the server takes exactly these
    for name, span_s in atw.HISTORY_RANGES_S.items():
        query = atw.parse_alerts_query("range=" + name, 1e9)
        assert query.to_s - query.from_s == span_s
    with pytest.raises(atw.QueryError):
        atw.parse_alerts_query("range=2d", 1e9)


# -- no internet in the browser ----------------------------------------------------------------

def test_air_gapped_commands_at_the_top_of_the_readme_in_troubleshooting_and_the_page():
    install, start = vendor_commands()
    block = "%s\n%s\n" % (install, start)
    assert block in top_of_readme()
    assert block in read(TROUBLESHOOTING)
    page = read("index.html")
    fallback = page[page.index('<article id="boot"'):page.index("</article>")]
    assert "<code>%s\n%s</code>" % (install, start) in fallback
    assert 'href="plain"' in fallback and "APP_VENDOR_DIR" in fallback


def test_readme_says_the_page_needs_index_html_beside_the_script():
    intro = flat(top_of_readme().split("**Run it**")[0])
    assert "one Python file" in intro and "`index.html`" in intro and "beside it" in intro


# -- the run and test commands near the top ------------------------------------------------

def run_sh_packages():
    text = read("tests/run.sh")
    packages = []
    for name in ("APT_PACKAGES", "NODE_PACKAGES"):
        packages += re.search(r"^%s=\(([^)]*)\)" % name, text, re.M).group(1).split()
    return packages


def test_readme_test_command_names_every_package_run_sh_installs():
    top = flat(top_of_readme())
    assert "./tests/run.sh" in top and "python3 amdgpu_top_web.py" in top
    assert {"systemd", "nodejs", "npm"} <= set(run_sh_packages())
    for package in run_sh_packages():
        assert re.search(r"\b%s\b" % re.escape(package), top), package
    for words in ("without pyenv", "skip", "~40-45 min", "~1–2 min", "main_python"):
        assert words in top, words
