"""The report in a real browser: headless Chromium (Debian's chromium + chromium-driver, through
selenium) opens it from disk with the network shut; it must load with no failed or external
request and no console error, show every section, and let the interactive map be recoloured.
A screenshot is kept under build/test-artifacts/. Under CI=true a missing browser fails the test;
elsewhere it is skipped with the reason (.ci/run installs it)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "build" / "test-artifacts"
SECTIONS = ("overview", "probe", "paper", "umap", "rise", "audit", "cka", "provenance")
#: this closed network refuses background connections: none is attempted
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")


def _chromium() -> tuple[str, str]:
    """The browser and its driver, or the test fails (CI) or skips (elsewhere) saying why."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing = "selenium (pip install -e '.[test]')"
    else:
        missing = ", ".join(n for n, p in (("chromium", browser), ("chromedriver", driver))
                            if p is None)
    if missing:
        why = (f"no {missing}: install Debian's chromium and chromium-driver "
               "(apt-get install chromium chromium-driver; .ci/run does)")
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    return browser, driver


@pytest.mark.slow
def test_the_report_opens_offline_in_chromium_with_no_request_or_error(
        study_report, tmp_path):
    browser, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _, html = study_report
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS + (f"--user-data-dir={tmp_path / 'profile'}",):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.get(html.as_uri())
        assert driver.execute_script("return document.readyState") == "complete"
        for section in SECTIONS:
            assert driver.find_element(By.ID, section).is_displayed(), section
        # the interactive map: open its frame and recolour it by the nuisance column
        driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true)")
        frames = driver.find_elements(By.TAG_NAME, "iframe")
        assert len(frames) == 2  # one map per model
        driver.switch_to.frame(frames[0])
        colour = Select(driver.find_element(By.ID, "colour"))
        assert colour.options[0].text == "class" and "word" in [o.text for o in colour.options]
        colour.select_by_visible_text("word")
        assert driver.find_element(By.TAG_NAME, "canvas").size["width"] > 100
        driver.switch_to.default_content()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(height, 16000))
        assert driver.save_screenshot(str(ARTIFACTS / "report.png"))

        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        # the report's requests (its document's and its frames'; not the browser's own start
        # page): the file itself, nothing else, and none failed
        events = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
        ours = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in events
                if e["method"] == "Network.requestWillBeSent"
                and e["params"].get("documentURL") in (html.as_uri(), "about:srcdoc")}
        assert html.as_uri() in ours.values()
        assert {u for u in ours.values() if not u.startswith("data:")} == {html.as_uri()}
        failed = [e["params"] for e in events if e["method"] == "Network.loadingFailed"
                  and e["params"]["requestId"] in ours]
        assert not failed, failed
    finally:
        driver.quit()
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception),
                                         ("", pytest.skip.Exception)])
def test_a_missing_browser_fails_under_ci_and_skips_elsewhere(monkeypatch, ci, outcome):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no chromium, chromedriver: install Debian's chromium"):
        _chromium()
