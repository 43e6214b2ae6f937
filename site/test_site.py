"""The built course website in headless Chromium: every page loads with no console error and no broken
image, the maths is typeset, each notebook page shows its figures, and explorers show a picture and a note.

Run by `make site-test` after `make site`, in a browser cut off from the network. SITE points at another
build: SITE=build/site/_build/html. The course's own pages in build/ (written by `make test` or `make course`
with the notebooks they executed) are checked the same way.
"""
import functools
import http.server
import os
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("SITE", ROOT / "build" / "site" / "_build" / "html"))
SHOTS = ROOT / "build" / "site-screenshots"
NOTEBOOKS = sorted(p.relative_to(ROOT / "units").with_suffix(".html").as_posix()
                   for p in (ROOT / "units").glob("unit*/*.ipynb"))
PAGES = ["intro.html", "instructors.html", *[f"unit{n}/index.html" for n in range(1, 5)], *NOTEBOOKS]


@pytest.fixture(scope="module")
def server():
    if not (SITE / "index.html").exists():
        pytest.fail(f"no built site at {SITE}: run `make site` first")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SITE))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from tests.helpers import offline_chromium

    driver = offline_chromium()     # the network cut: the pages must carry everything they show
    yield driver
    driver.quit()


def visit(browser, url: str) -> list[str]:
    """Open `url`, wait for MathJax to finish, return the console's errors."""
    browser.get_log("browser")
    browser.get(url)
    for _ in range(150):
        if browser.execute_script(
                "return document.readyState === 'complete' && (!document.querySelector('script[src*=\"mathjax\"]')"
                " || !!(window.MathJax && MathJax.startup && MathJax.startup.promise))"):
            break
        time.sleep(0.2)
    if browser.execute_script("return !!(window.MathJax && MathJax.startup && MathJax.startup.promise)"):
        browser.execute_async_script("const done = arguments[arguments.length - 1]; MathJax.startup.promise.then(() => done(1));")
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE" and "favicon.ico" not in e["message"]]


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_with_no_console_error_and_no_broken_image(server, browser, page):
    errors = visit(browser, f"{server}/{page}")
    assert not errors, f"{page}: {errors}"
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
    assert not broken, f"{page}: images that did not load: {broken}"
    raw = browser.execute_script("return document.querySelectorAll('.math:not(:has(mjx-container))').length")
    assert raw == 0, f"{page}: {raw} formulas left untypeset"


@pytest.mark.parametrize("page", NOTEBOOKS)
def test_notebook_page_shows_its_figures_and_typeset_maths(server, browser, page):
    visit(browser, f"{server}/{page}")
    figures = browser.execute_script(
        "return Array.from(document.querySelectorAll('.cell_output img')).filter(i => i.naturalWidth > 0).length")
    assert figures >= 1, f"{page} shows no figure"
    assert "Open in Colab" in browser.page_source and "Open in Kaggle" in browser.page_source


def test_explorers_show_a_picture_and_a_note_and_progress_bars_their_last_line(server, browser):
    visit(browser, f"{server}/unit1/01_ddpm_and_ddim.html")
    source = browser.page_source
    assert source.count("This is an interactive explorer") == 2, "Unit 1 has two explorers"
    assert "widget-view" not in source and "require.min.js" not in source
    assert "100%" in source, "the training progress bar's last line"
    assert browser.execute_script("return document.querySelectorAll('mjx-container').length") > 50


def test_audio_players_play_and_tables_render(server, browser):
    visit(browser, f"{server}/unit4/02_diffusion_for_audio.html")
    durations = browser.execute_script(
        "const a = Array.from(document.querySelectorAll('audio')); a.forEach(x => x.load());"
        "return a.length;")
    assert durations >= 4, "the audio notebook's players"
    time.sleep(1)
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('audio')).every(x => x.readyState >= 1 && x.duration > 0)")
    visit(browser, f"{server}/instructors.html")
    assert browser.execute_script("return document.querySelectorAll('table tbody tr').length") > 20


def test_search_and_a_screenshot_of_a_unit_page(server, browser):
    visit(browser, f"{server}/search.html?q=guidance")
    time.sleep(1.5)
    assert browser.execute_script("return document.querySelectorAll('#search-results li').length") > 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    visit(browser, f"{server}/unit4/04_new_directions.html")
    browser.save_screenshot(str(SHOTS / "unit4_new_directions.png"))
    visit(browser, f"{server}/unit1/01_ddpm_and_ddim.html")
    browser.execute_script("document.querySelector('.cell_output img').scrollIntoView()")
    browser.save_screenshot(str(SHOTS / "unit1_figure.png"))


def test_the_course_pages_in_build_typeset_maths_offline(browser):
    """The HTML that `make test` and `make course` write next to the executed notebooks, served as it is."""
    from tests.helpers import typeset

    build = SITE.parents[2] if SITE.name == "html" else ROOT / "build"
    page = build / "units" / "unit1" / "01_ddpm_and_ddim.html"
    if not page.is_file():
        pytest.fail(f"no {page}: run `make test` or `make course` first")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(build))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        seen = typeset(browser, f"http://127.0.0.1:{httpd.server_address[1]}/units/unit1/01_ddpm_and_ddim.html")
        figures = browser.execute_script("return Array.from(document.images).filter(i => i.naturalWidth > 0).length")
    finally:
        httpd.shutdown()
    assert seen["formulas"] > 50 and not seen["errors"], seen
    assert figures >= 5 and "This is an interactive explorer" in browser.page_source
