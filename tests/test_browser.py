"""What a person sees in the browser: the live dashboard and the analysis report, in headless Chromium.

Chromium comes from the system's packages (Debian: ``apt-get install chromium``; .ci/run installs
it), driven by Playwright without Playwright's own browser download. Each test saves a screenshot
in its temporary directory.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading

import pytest

from tests.conftest import REPO, cli_command, run_cli

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright drives the browser (the test extra)")
pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is the optional 'dashboard' extra")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium (.ci/run does)")


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert not errors, f"the page raised: {errors}"


def _start_dashboard(experiment_dir, log):
    """``python -m tune_dialsum dashboard`` in a real process; returns it and the URLs it printed, by label.

    A command that has not printed its URLs within a minute is killed (its output then ends).
    """
    process = subprocess.Popen(
        cli_command("dashboard", str(experiment_dir), "--port", "0"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    urls = {}
    try:
        for line in process.stdout:
            if line.startswith("serving on"):
                return process, urls
            label, _, rest = line.partition(" study: ")
            urls[label] = rest.split()[0]
    finally:
        watchdog.cancel()
    process.kill()
    pytest.fail(f"the dashboard did not start: {log.read_text()[-2000:]}")


def test_the_dashboard_shows_the_training_and_decoding_studies_and_their_trials(tiny_search, page, tmp_path):
    _, experiment_dir = tiny_search
    process, urls = _start_dashboard(experiment_dir, tmp_path / "dashboard.log")
    try:
        assert set(urls) == {"training", "decoding"} and all(u.startswith("http://127.0.0.1:") for u in urls.values())
        page.goto(urls["training"])
        page.get_by_text("tiny-demo").first.wait_for(timeout=30_000)
        page.get_by_text("tiny-demo").first.click()  # the study page: history, importance, timeline
        page.get_by_text("Best Trial").first.wait_for(timeout=30_000)
        page.screenshot(path=tmp_path / "training-study.png", full_page=True)
        page.goto(urls["training"] + "studies/1/trials")  # every trial, its state, values and settings
        page.get_by_text("8 Trials").wait_for(timeout=30_000)  # the demo's eight trials
        assert page.get_by_text("Pruned", exact=True).count() > 0  # trials ASHA stopped reach it as pruned
        page.screenshot(path=tmp_path / "training-trials.png", full_page=True)

        page.goto(urls["decoding"])
        page.get_by_text("tiny-demo-decoding").first.wait_for(timeout=30_000)
        page.goto(urls["decoding"] + "studies/1/trials")
        page.get_by_text(re.compile(r"^\d+ Trials$")).wait_for(timeout=30_000)
        page.screenshot(path=tmp_path / "decoding-trials.png", full_page=True)
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert (tmp_path / "training-trials.png").stat().st_size > 10_000


def test_the_report_renders_with_every_plot_loaded(tiny_search, page, tmp_path):
    _, experiment_dir = tiny_search
    completed = run_cli("analyze", str(experiment_dir))
    assert completed.returncode == 0, completed.stderr
    page.goto((experiment_dir / "report" / "index.html").as_uri())
    page.wait_for_load_state("load")
    images = page.locator("img")
    assert images.count() == 5
    sizes = images.evaluate_all("images => images.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert all(complete and width > 300 for _, complete, width in sizes), sizes  # none broken
    assert page.locator("#leaderboard tbody tr").count() == 8  # one row per trial
    candidates = json.loads((experiment_dir / "selection.json").read_text())["candidates"]
    assert page.locator("#selection tbody tr").count() == len(candidates) > 0  # one row per re-scored checkpoint
    page.screenshot(path=tmp_path / "report.png", full_page=True)
    print(f"screenshots in {tmp_path}", file=sys.stderr)
