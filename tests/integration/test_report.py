"""``selfheal report`` rendered by headless Chromium (Debian's package; `make test` installs it):
the page is self-contained, plotly draws every figure, and the layout holds at 1280 px and at a
phone's 390 px (no page-wide horizontal scroll). Screenshots land in the test's tmp directory."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from streams.config import Settings
from tests.conftest import ROOT
from tests.recorded import ProductionRun, record_run

pytestmark = pytest.mark.integration

#: appended to a copy of the page: after plotly has drawn, send the layout figures to the parent
LAYOUT_PROBE = """<script>window.addEventListener('load', function () { setTimeout(function () {
  parent.postMessage({scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
    svgs: document.querySelectorAll('.main-svg').length,
    plots: Array.from(document.querySelectorAll('.plot .js-plotly-plot'))
      .map(function (p) { return Math.round(p.getBoundingClientRect().width); }).join(',')}, '*');
  }, 500); });</script>"""
#: headless Chromium's window is at least 500 px wide: a phone viewport is an iframe of its width,
#: whose figures the page writes into its own DOM for --dump-dom
FRAME = """<!DOCTYPE html><html><body style="margin:0"><iframe src="{src}" width="{w}" height="2400"
 style="border:0;display:block"></iframe><script>window.addEventListener('message', function (e) {{
  var d = document.createElement('div'); d.id = 'layout'; d.dataset.scroll = e.data.scroll;
  d.dataset.inner = e.data.inner; d.dataset.svgs = e.data.svgs; d.dataset.plots = e.data.plots;
  document.body.appendChild(d); }});</script></body></html>"""


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's package (make browser)")
    return exe


def headless(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=15000", *args], capture_output=True, text=True, timeout=180)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> tuple[Settings, ProductionRun]:
    d = tmp_path_factory.mktemp("recorded")
    settings = Settings(state_dir=d, clickhouse_path=d / "clickhouse", clickhouse_url=None)
    return settings, record_run(settings, traces=12_000)


def test_the_report_renders_in_headless_chromium_at_desktop_and_phone_width(recorded, tmp_path):
    settings, prod = recorded
    tenant = "northwind-health"
    incident = next(i for i in prod.incidents.values() if i.slice.tenant_id == tenant)
    figures = 1 + min(3, sum(i.slice.tenant_id == tenant for i in prod.incidents.values()))
    out = tmp_path / "report.html"
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "COLUMNS": "120",
           "SELFHEAL_CLICKHOUSE_PATH": str(settings.clickhouse_dir), "SELFHEAL_STATE_DIR": str(settings.state_dir)}
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "report", "--tenant", tenant, "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = out.read_text()
    # self-contained: no script, style or image fetched from anywhere
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?(https?:)?//""", page)
    assert "Plotly.newPlot" in page and page.count("<script") >= 3

    # the rendered DOM: plotly drew every figure (the correction-rate bars and, per incident, its panels)
    dom = headless("--window-size=1280,2400", "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count('class="main-svg"') >= 2 * figures, "plotly did not render"
    assert len(re.findall(r'class="[^"]*js-plotly-plot', html)) == figures
    assert f"Incident {incident.incident_id}" in html
    assert re.search(r'id="open-count">\d+<', html)
    assert "change point" in html and "detector statistic vs threshold h" in html
    assert "correction rate by cohort and release" in html

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", LAYOUT_PROBE + "</body>"))
    for width, name in ((1280, "desktop"), (390, "phone")):
        frame = tmp_path / f"frame-{name}.html"
        frame.write_text(FRAME.format(src=probed.name, w=width))
        dom = headless(f"--window-size={max(width, 500)},2400", "--dump-dom", frame.as_uri())
        assert dom.returncode == 0, dom.stderr[-2000:]
        m = re.search(r'id="layout" data-scroll="(\d+)" data-inner="(\d+)" data-svgs="(\d+)" '
                      r'data-plots="([\d,]+)"', dom.stdout)
        assert m, f"{name}: the layout probe did not report"
        scroll, inner, svgs = int(m.group(1)), int(m.group(2)), int(m.group(3))
        assert inner == width and scroll <= inner, f"{name}: page scrolls sideways ({scroll} > {inner} px)"
        assert svgs >= 2 * figures
        assert all(0 < int(w) <= width - 16 for w in m.group(4).split(",")), m.group(4)
        shot = tmp_path / f"report-{name}.png"
        cap = headless(f"--window-size={max(width, 500)},2400", f"--screenshot={shot}", frame.as_uri())
        assert cap.returncode == 0 and shot.exists(), cap.stderr[-2000:]
        assert png_size(shot) == (max(width, 500), 2400)


def test_the_report_of_an_unknown_incident_is_one_line(recorded):
    settings, _ = recorded
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "SELFHEAL_CLICKHOUSE_PATH": str(settings.clickhouse_dir), "SELFHEAL_STATE_DIR": str(settings.state_dir)}
    proc = subprocess.run([sys.executable, "-m", "streams.cli", "report", "--tenant", "northwind-health",
                           "--incident", "nope"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "selfheal: incident 'nope' is not an incident of tenant 'northwind-health'"
