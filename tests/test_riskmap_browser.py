"""The interactive risk map in a real headless browser (Debian chromium + chromedriver, installed by `make test`):
the page loads from the local server with every outside host unresolvable, the controls (level, model, horizon,
compare) switch the contour layer, no request leaves 127.0.0.1, and a screenshot is kept as an artifact."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from pipelines.batch_forecast import Job, run_batch
from pipelines.serve import latest_forecasts, make_server, write_static
from stforecast.maps import external_references
from stforecast.riskmap import riskmap_html

from .conftest import ARTIFACTS


@pytest.fixture(scope="module")
def batch_root(ridgecrest_tiny, tmp_path_factory):
    r, ckpt = ridgecrest_tiny
    tmp = tmp_path_factory.mktemp("risk")
    # two models for the same region and horizon (ETAS: fitted once, then from the runs/baselines JSON cache)
    jobs = [Job("rc-12h", str(r.out_dir), str(ckpt), "12h", 30, 300, "2019-07-12", max_events=60),
            Job("rc-12h-etas", str(r.out_dir), "etas", "12h", 30, 300, "2019-07-12", max_events=60),
            # another seed: the tiny model's 2-day forecast must differ from its 12-hour one to see the layer change
            Job("rc-2d", str(r.out_dir), str(ckpt), "2d", 30, 300, "2019-07-12", max_events=60, seed=1)]
    assert all(res.status == "done" for res in run_batch(jobs, tmp / "batch"))
    return tmp / "batch"


def test_latest_forecasts_and_static_page(batch_root, tmp_path):
    forecasts = latest_forecasts(batch_root)
    assert [(f["region"], f["horizon"], f["model"]) for f in forecasts] == [
        ("ridgecrest", "12h", "DSTPP"), ("ridgecrest", "12h", "ETAS"), ("ridgecrest", "2d", "DSTPP")]
    assert set(forecasts[0]["contours"]) == set(forecasts[1]["contours"]) == {"0.5", "0.8", "0.95"}
    assert forecasts[0]["contours"] != forecasts[1]["contours"]
    page = write_static(batch_root, tmp_path / "risk.html").read_text()
    assert external_references(page) == []
    # text from data cannot become markup or end the data block
    evil = dict(forecasts[0], region="</script><img src=x onerror=alert(1)>")
    html = riskmap_html([evil])
    assert "<img src=x" not in html and "</script><img" not in html


def test_model_labels_of_old_manifests_and_of_two_jobs_of_one_model(batch_root, tmp_path):
    """A manifest from before ``model_kind`` is named by its job's ``model``; two jobs of one model for the same
    region and horizon (two checkpoints) are told apart by their job names instead of hiding one another."""
    day = next(batch_root.iterdir())
    root = tmp_path / "batch"
    for job in ("rc-12h", "rc-12h-etas"):
        shutil.copytree(day / job, root / day.name / job)
    shutil.copytree(day / "rc-12h", root / day.name / "rc-12h-v2")
    old = root / day.name / "rc-12h-etas" / "forecast.json"
    m = json.loads(old.read_text())
    m.pop("model_kind", None)
    m["summary"].pop("model_kind", None)
    old.write_text(json.dumps(m))
    assert m["job"]["model"] == "etas"
    assert [f["model"] for f in latest_forecasts(root)] == ["DSTPP (rc-12h)", "ETAS", "DSTPP (rc-12h-v2)"]


def test_risk_map_data_is_plain_json_that_cannot_leave_its_script(batch_root):
    """Not HTML-escaped (the page shows it with textContent: escaping would show "&amp;"), but spelt so that it
    cannot end its <script> element."""
    name = "A & B </script><b>\u2028`${x}`"
    f = latest_forecasts(batch_root)[0]
    observed = dict(f["observed"], features=[dict(f["observed"]["features"][0], properties={"category": name})])
    page = riskmap_html([dict(f, region=name, observed=observed)])
    data = page.split('<script id="forecast-data" type="application/json">')[1].split("</script>")[0]
    assert not set(data) & set("<>&\u2028")
    back = json.loads(data)["forecasts"][0]
    assert back["region"] == name and back["observed"]["features"][0]["properties"]["category"] == name


def _chromium():
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail("chromium and chromedriver are needed (make test installs them: apt-get install chromium "
                    "chromium-driver)")
    return binary, driver


def test_risk_map_in_a_headless_browser(batch_root):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    binary, driver_path = _chromium()
    server = make_server(batch_root, "127.0.0.1", 0)  # port 0: any free port
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stopper = threading.Timer(120, server.shutdown)  # stops by itself even if the test hangs
    stopper.start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,900", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    browser = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "path.risk-contour"))
        assert browser.find_elements(By.CSS_SELECTOR, ".leaflet-tile-pane, .leaflet-pane")  # Leaflet ran
        assert len(browser.find_elements(By.CSS_SELECTOR, "path.observed-event")) > 10
        shown = browser.execute_script("return document.body.dataset.shown")
        assert shown == "ridgecrest|12h|DSTPP|0.8"

        def shapes(kind="risk-contour"):
            return [p.get_attribute("d") for p in browser.find_elements(By.CSS_SELECTOR, f"path.{kind}")]

        def showing(text):
            wait.until(lambda b: b.execute_script("return document.body.dataset.shown") == text)

        def options(select_id):
            return [o.get_attribute("value") for o in Select(browser.find_element(By.ID, select_id)).options]

        info = lambda: browser.find_element(By.ID, "info").text  # noqa: E731
        before = shapes()
        Select(browser.find_element(By.ID, "level")).select_by_value("0.5")
        showing("ridgecrest|12h|DSTPP|0.5")
        after = shapes()
        assert after and after != before  # the contour layer changed
        assert options("model") == ["DSTPP", "ETAS"] and "DSTPP" in info() and "ETAS" not in info()
        assert shapes("compare-contour") == []
        Select(browser.find_element(By.ID, "model")).select_by_value("ETAS")  # the other model, same day
        showing("ridgecrest|12h|ETAS|0.5")
        etas = shapes()
        assert etas and etas != after
        assert "ETAS" in info() and "DSTPP" not in info()
        assert options("compare") == ["", "DSTPP"]
        Select(browser.find_element(By.ID, "compare")).select_by_value("DSTPP")  # DSTPP dashed over ETAS
        wait.until(lambda b: b.execute_script("return document.body.dataset.compare") == "DSTPP")
        assert len(shapes()) == len(etas) and shapes("compare-contour") and "dashed: DSTPP" in info()
        assert browser.execute_script("return document.body.dataset.shown") == "ridgecrest|12h|ETAS|0.5"
        time.sleep(0.3)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "riskmap-compare.png"))
        Select(browser.find_element(By.ID, "horizon")).select_by_value("2d")  # only DSTPP forecast 2 days
        showing("ridgecrest|2d|DSTPP|0.5")
        assert options("model") == ["DSTPP"] and shapes() not in (after, etas)
        assert shapes("compare-contour") == [] and browser.find_element(By.ID, "compare").get_attribute("disabled")
        assert "events expected" in info() and "DSTPP" in info()
        time.sleep(0.5)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "riskmap.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 20_000
        requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
        urls = {m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"}
        outside = [u for u in urls if not u.startswith((f"http://127.0.0.1:{port}/", "data:"))]
        assert urls and outside == []  # nothing left the machine
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
    finally:
        browser.quit()
        stopper.cancel()
        server.shutdown()
        server.server_close()
