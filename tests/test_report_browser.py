"""The HTML report in a real browser: the main sections and the plots are laid out and visible.

Uses Playwright when it is importable and has a browser, else a Chromium or Chrome binary on PATH
(``--headless --dump-dom``), and skips when neither is there.  The report carries no script of
its own: the test adds one to a copy, which writes the laid-out size of each element into the DOM.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from leakaudit.report.pdf import BROWSERS, find_browser
from leakaudit.report.render import render_html
from tests.test_report import _with_failed_dp, make_results

MAIN_SECTIONS = ("summary", "audited", "findings", "limitations", "compliance")
OTHER_SECTIONS = ("privacy", "exposure", "mia", "memorization", "untargeted", "pii", "reconstruction", "empirical")
OTHER_SECTIONS += ("utility", "comparison")
TIMEOUT_S = 120

PROBE = """
<script>
window.addEventListener("load", function () {
  function box(el) {
    var r = el.getBoundingClientRect(), s = getComputedStyle(el);
    return {tag: el.tagName.toLowerCase(), id: el.id || "", width: r.width, height: r.height,
            visible: s.display !== "none" && s.visibility !== "hidden" && parseFloat(s.opacity) > 0,
            natural: el.naturalWidth === undefined ? null : el.naturalWidth,
            complete: el.complete === undefined ? null : el.complete};
  }
  var out = {sections: {}, plots: [], overflow: []};
  document.querySelectorAll("section[id]").forEach(function (el) { out.sections[el.id] = box(el); });
  document.querySelectorAll("img, svg").forEach(function (el) { out.plots.push(box(el)); });
  out.alerts = Array.prototype.map.call(document.querySelectorAll(".failed-dp"), box);
  out.page_width = document.documentElement.clientWidth;
  var pre = document.createElement("pre");
  pre.id = "layout-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def _with_probe(html: str) -> str:
    assert "<script" not in html  # the report itself is script-free
    return html.replace("</body>", PROBE + "</body>")


def _parse(dom: str) -> dict:
    start = dom.find('<pre id="layout-probe">')
    if start < 0:
        raise AssertionError("the layout probe did not run: " + dom[-500:])
    start += len('<pre id="layout-probe">')
    text = dom[start : dom.index("</pre>", start)]
    for entity, char in (("&quot;", '"'), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")):
        text = text.replace(entity, char)
    return json.loads(text)


def _playwright(path: Path) -> dict | None:
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        return None
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch()
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(path.as_uri(), wait_until="load")
            page.wait_for_selector("#layout-probe", state="attached", timeout=TIMEOUT_S * 1000)
            dom = page.content()
            browser.close()
    except Error:  # Playwright without its browser: try a binary
        return None
    return _parse(dom)


def _chromium(binary: str, path: Path, tmp: Path) -> dict:
    cmd = [
        binary,
        "--headless",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,900",
        "--virtual-time-budget=10000",
        f"--user-data-dir={tmp / 'profile'}",
        "--dump-dom",
        path.as_uri(),
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"{binary} could not render the report: {e}")
    if '<pre id="layout-probe">' not in proc.stdout:
        # A stub (e.g. a snap wrapper) or a browser that cannot start here: not a report failure.
        pytest.skip(f"{binary} gave no DOM (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
    return _parse(proc.stdout)


def _layout(html: str, tmp_path: Path) -> dict:
    path = tmp_path / "report.html"
    path.write_text(_with_probe(html), encoding="utf-8")
    layout = _playwright(path)
    if layout is not None:
        return layout
    binary = find_browser()
    if binary is None:
        pytest.skip(
            "no headless browser: install Playwright with its Chromium (pip install playwright && "
            f"playwright install chromium) or put one of {', '.join(BROWSERS)} on PATH"
        )
    return _chromium(binary, path, tmp_path)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> dict:
    return _layout(render_html(make_results()), tmp_path_factory.mktemp("browser"))


def test_main_sections_are_visible(layout):
    for sid in (*MAIN_SECTIONS, *OTHER_SECTIONS):
        box = layout["sections"].get(sid)
        assert box is not None, f"section {sid} is missing"
        assert box["visible"] and box["width"] > 0 and box["height"] > 0, (sid, box)


def test_plots_are_rendered(layout):
    plots = [p for p in layout["plots"] if p["tag"] == "img"]
    assert len(plots) >= 2, layout["plots"]  # canary exposure and the ROC grid
    for p in plots:
        assert p["visible"] and p["complete"], p
        assert p["width"] > 100 and p["height"] > 100, p
        assert p["natural"] and p["natural"] > 0, p  # the inline PNG decoded
        assert p["width"] <= layout["page_width"] + 1, p  # scaled to fit the page


def test_failed_dp_banner_is_visible(tmp_path):
    layout = _layout(render_html(_with_failed_dp(make_results())), tmp_path)
    assert len(layout["alerts"]) >= 2  # in the summary and in the empirical-privacy section
    for box in layout["alerts"]:
        assert box["visible"] and box["width"] > 0 and box["height"] > 0, box
