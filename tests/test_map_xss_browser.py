"""Text from data cannot run in the pages we write: report maps (folium puts popups and tooltips in JS template
literals), batch maps and the served risk map, opened in headless Chromium with ``alert``/``confirm``/``prompt``
hooked before any page script runs. The payloads must show up as literal text, and nothing may fire."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_riskmap_browser import _chromium

PAYLOADS = ["${alert(document.domain)}", "`;alert(1);`", "</script><script>alert(1)</script>",
            '"><img src=x onerror=alert(1)>', "a\u2028b\u2029c", "back\\slash\\`${alert(1)}`", "{{ 7*7 }}",
            "{% for x in [1] %}loop{% endfor %}", "'-alert(1)-'"]
EVIL_NAME = "quake${alert(1)}`</script><b>{{ 7*7 }}"

# runs before every document's own scripts: records dialogs and script errors instead of showing them
HOOK = """
window.__dialogs = []; window.__errors = [];
for (const name of ["alert", "confirm", "prompt", "print"]) {
  const record = function () { window.__dialogs.push(name + "(" + Array.from(arguments).join(",") + ")");
                               return name === "prompt" ? null : (name === "confirm" ? false : undefined); };
  Object.defineProperty(window, name, {value: record, writable: false, configurable: false});
}
window.addEventListener("error", e => { if (e.message) window.__errors.push(e.message); });
"""

# the popup text of every event marker on the map, opened one after the other
OPEN_POPUPS = """
const texts = [];
for (const key of Object.keys(window)) {
  const layer = window[key];
  if (!key.startsWith("circle_marker_") || !layer || !layer.getPopup || !layer.getPopup() || !layer._map) continue;
  layer.openPopup();  // (a closed popup's element lingers while it fades: read this one's own)
  const box = layer.getPopup().getElement().querySelector(".leaflet-popup-content");
  texts.push(box ? box.textContent : null);
  layer.closePopup();
}
return texts;
"""


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,900", "--allow-file-access-from-files",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": HOOK})
    try:
        yield driver
    finally:
        driver.quit()


def _open(browser, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    assert browser.execute_script("return Array.isArray(window.__dialogs)"), "the hook did not run first"
    WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".leaflet-container"))


def _no_script_ran(browser) -> None:
    assert browser.execute_script("return window.__dialogs") == []
    assert browser.execute_script("return window.__errors") == []  # a broken-out literal is a syntax error too
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"], body > b').length") == 0


def test_the_hook_does_catch_a_payload(browser, tmp_path):
    """The checks below can fail: a page that runs the payload is caught."""
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><div class='leaflet-container'></div><script>const c = `${alert(1)}`;</script>"
                    '<img src=x onerror="alert(2)">')
    _open(browser, page.as_uri())
    assert browser.execute_script("return window.__dialogs")[:1] == ["alert(1)"]


@pytest.fixture(scope="module")
def evil_catalog(ridgecrest_tiny, tmp_path_factory):
    """A copy of the tiny Ridgecrest catalog whose events carry the payloads as their category and whose name is
    one too (the risk map's region name comes from it)."""
    r, ckpt = ridgecrest_tiny
    folder = tmp_path_factory.mktemp("evil") / "catalog"
    shutil.copytree(r.out_dir, folder)
    events = pd.read_parquet(folder / "events.parquet")
    events["category"] = [PAYLOADS[i % len(PAYLOADS)] for i in range(len(events))]
    events.to_parquet(folder / "events.parquet")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["name"] = EVIL_NAME
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder, ckpt


def _check_event_popups(browser) -> list[str]:
    texts = browser.execute_script(OPEN_POPUPS)
    assert len(texts) > 50 and all(texts)
    for payload in PAYLOADS:  # shown as the literal text, not run, not rendered as a template
        assert any(f"category: {payload}" in t for t in texts), payload
    assert not any("category: 49" in t or "category: loop" in t for t in texts)
    return texts


def test_report_map_shows_payloads_as_text(evil_catalog, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from pipelines.report import ReportRequest, write_report
    from stforecast.checkpoints import load_model

    folder, ckpt = evil_catalog
    out = tmp_path / "report"
    out.mkdir()
    req = ReportRequest(at="2019-07-12", horizon="24h", samples=200, simulations=10, lead_bins=2,
                        max_events=60)
    summary = write_report(folder, load_model(ckpt), req, out, log=lambda *a: None)
    assert summary["observed_events_in_horizon"] > 0  # held-out events carry payloads too
    _open(browser, (out / "map.html").as_uri())
    _no_script_ran(browser)  # popups and tooltips are built as the page loads
    markers = browser.find_elements(By.CSS_SELECTOR, "path.stforecast-event")
    assert len(markers) > 50
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", markers[0])
    clicked = browser.find_element(By.CSS_SELECTOR, ".leaflet-popup-content").get_attribute("textContent")
    assert "category: " in clicked  # a click on a marker opens its popup
    texts = _check_event_popups(browser)
    assert all(" UTC" in t and "." not in t.split("time: ")[1][:24] for t in texts)  # times rounded to seconds
    _no_script_ran(browser)


def test_every_text_slot_of_a_folium_map_is_inert(browser, tmp_path):
    """Payloads as layer names (LayerControl), legend title and note, tooltips and popups of a hand-made map."""
    import folium
    import shapely

    from stforecast import maps
    from stforecast.density import kde_grid, mass_contours

    contours = mass_contours(kde_grid(np.random.default_rng(0).normal(0, 30, (500, 2)),
                                      crs="+proj=aeqd +lat_0=35 +lon_0=139 +datum=WGS84 +units=km +no_defs"))
    m = maps.new_map(center=(35, 139), bounds=[[34, 138], [36, 140]])
    joined = " | ".join(PAYLOADS)
    maps.add_outline(m, shapely.box(138.5, 34.5, 139.5, 35.5), f"outline {joined}")
    maps.add_contours(m, contours, f"contours {joined}", unit_note=f"note {joined}")
    maps.add_events(m, pd.DataFrame({"lat": [35.0], "lon": [139.0], "category": [joined]}), f"events {joined}")
    folium.LayerControl(collapsed=False).add_to(m)
    maps.save_offline(m, tmp_path / "slots.html")
    _open(browser, (tmp_path / "slots.html").as_uri())
    _no_script_ran(browser)  # popups and tooltips are built as the page loads
    control = browser.execute_script("return document.querySelector('.leaflet-control-layers').textContent")
    legend = browser.execute_script("return document.querySelector('.stforecast-legend').textContent")
    tip = browser.execute_script("""
        const key = Object.keys(window).find(k => k.startsWith("geo_json_") && window[k] && window[k].getTooltip
            && window[k].getTooltip() && window[k]._map
            && String(window[k].getTooltip().getContent()).includes("contours"));
        window[key].openTooltip();
        return document.querySelector(".leaflet-tooltip").textContent;""")
    popup = browser.execute_script(OPEN_POPUPS)
    assert f"contours {joined}" in control and f"outline {joined}" in control and f"events {joined}" in control
    assert f"contours {joined}" in legend and f"note {joined}" in legend
    assert f"contours {joined}" in tip
    assert popup == [f"category: {joined}"]
    _no_script_ran(browser)


@pytest.fixture(scope="module")
def evil_batch(evil_catalog, tmp_path_factory):
    from pipelines.batch_forecast import Job, run_batch

    folder, ckpt = evil_catalog
    root = tmp_path_factory.mktemp("evil-batch") / "batch"
    results = run_batch([Job("evil", str(folder), str(ckpt), "12h", 10, 200, "2019-07-12", max_events=60)], root)
    assert [r.status for r in results] == ["done"], [r.message for r in results]
    return root, Path(results[0].folder)


def test_batch_map_shows_payloads_as_text(evil_batch, browser):
    _, job = evil_batch
    _open(browser, (job / "map.html").as_uri())
    _no_script_ran(browser)  # popups and tooltips are built as the page loads
    _check_event_popups(browser)
    _no_script_ran(browser)


def test_served_risk_map_shows_names_and_properties_as_text(evil_batch, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from pipelines.serve import make_server

    root, _ = evil_batch
    server = make_server(root, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stopper = threading.Timer(60, server.shutdown)  # stops by itself even if the test hangs
    stopper.start()
    try:
        _open(browser, f"http://127.0.0.1:{server.server_address[1]}/")
        WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, "path.observed-event"))
        _no_script_ran(browser)
        assert browser.find_element(By.ID, "region").get_attribute("value") == EVIL_NAME  # literal, not &amp;-ed
        assert browser.find_element(By.ID, "info").text.startswith(EVIL_NAME)
        popups = browser.execute_script("""
            const out = [];
            map.eachLayer(l => { if (l.getPopup && l.getPopup() && l.feature) {
                l.openPopup(); const box = l.getPopup().getElement().querySelector(".leaflet-popup-content");
                out.push(box ? box.textContent : null); l.closePopup(); } });
            return out;""")
        assert len(popups) > 50
        for payload in PAYLOADS:
            assert any(f"category: {payload}" in t for t in popups), payload
        assert not any("&amp;" in t or "&lt;" in t for t in popups)  # not escaped twice
        _no_script_ran(browser)
    finally:
        stopper.cancel()
        server.shutdown()
        server.server_close()
