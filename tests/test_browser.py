"""A real browser: JupyterLab on localhost, headless Chromium opens a notebook with an explorer,
runs it, moves the slider, and the picture on screen changes.

Needs Debian's chromium and chromium-driver (`bash scripts/install_browser.sh`; `make test` runs it).
"""
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from PIL import Image

pytestmark = pytest.mark.browser

TOKEN = "coursekit-browser-test"
EXPLORER = """\
from coursekit import data, widgets
x0, _ = data.tensors(data.load_dataset("digits"), 16, 1)
ex = widgets.noise_schedule(x0[:4], t=50)
ex"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 serving tmp_path, with the app exposed to page scripts."""
    for tool in ("chromium", "chromedriver"):
        assert shutil.which(tool), f"{tool} is missing: run `bash scripts/install_browser.sh` (make test does)"
    nb = new_notebook(cells=[new_code_cell(EXPLORER)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "explore.ipynb")
    port = free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={tmp_path}", "--allow-root",
         "--LabApp.expose_app_in_browser=True", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lab.log", "w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            assert server.poll() is None, (tmp_path / "lab.log").read_text()[-2000:]
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start within 90 s:\n" + (tmp_path / "lab.log").read_text()[-2000:])
    yield url
    server.terminate()
    try:
        server.wait(20)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def wait_for(condition, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {seconds} s waiting for {what}")


def shot(element) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("L"), dtype=float)


def test_explorer_slider_changes_the_picture_in_jupyterlab(lab, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(f"{lab}/lab/tree/explore.ipynb?token={TOKEN}")
    wait_for(lambda: browser.execute_script(
        "const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
        "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
        " && w.sessionContext.session.kernel.status === 'idle');"), 120, "the notebook and an idle kernel")
    browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    status = lambda: " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, "div.widget-label"))
    wait_for(lambda: "done in" in status(), 180, "the explorer's first picture")
    image = browser.find_element(By.CSS_SELECTOR, "img.widget-image")
    time.sleep(1)
    browser.save_screenshot(str(tmp_path / "before.png"))
    before = shot(image)
    assert "SNR 120" in status(), status()

    track = browser.find_element(By.CSS_SELECTOR, ".widget-slider .noUi-target")
    ActionChains(browser).move_to_element_with_offset(track, int(track.size["width"] * 0.4), 0).click().perform()

    readout = browser.find_element(By.CSS_SELECTOR, ".widget-slider .widget-readout")
    wait_for(lambda: readout.text not in ("", "50") and "SNR 120" not in status(), 120,
             "the slider to move and the kernel to answer")
    time.sleep(1)
    browser.save_screenshot(str(tmp_path / "after.png"))
    after = shot(browser.find_element(By.CSS_SELECTOR, "img.widget-image"))
    h, w = min(after.shape[0], before.shape[0]), min(after.shape[1], before.shape[1])
    assert h > 100 and w > 100, f"the picture is not on screen ({after.shape}, {before.shape})"
    assert np.abs(after[:h, :w] - before[:h, :w]).mean() > 5, "the picture on screen did not change"
    assert after.std() > before.std() * 0.5, "at t=900 the digits are mostly noise, still a picture"


ROOT = Path(__file__).parent.parent
MATHS = ("The forward process keeps $\\sqrt{\\bar\\alpha_t}$ of the image:\n\n"
         "$$x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon$$")


@pytest.mark.slow
def test_course_pages_typeset_maths_and_show_explorers_with_the_network_cut(tmp_path):
    """`coursekit run --mathjax` (what `make course` runs) writes pages that need no network: MathJax from
    the build folder, no require.js or widget manager, an explorer shown as its first picture."""
    import functools
    import http.server
    import threading

    from nbformat.v4 import new_markdown_cell

    from coursekit import cli, publish
    from tests.helpers import offline_chromium, typeset

    mathjax = ROOT / "site" / "node_modules" / "mathjax" / "es5"
    assert (mathjax / "tex-chtml-full.js").is_file(), "MathJax is missing: run `npm ci --prefix site` (make test does)"
    nb = new_notebook(cells=[new_markdown_cell(MATHS), new_code_cell(EXPLORER)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "units").mkdir()
    nbformat.write(nb, tmp_path / "units" / "maths.ipynb")
    out = tmp_path / "build"
    args = type("A", (), {"paths": [str(tmp_path / "units")], "track": "small", "rehearse": False, "out": str(out),
                          "timeout": 300, "mathjax": str(mathjax), "quiet": True})()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    assert cli.cmd_run(args) == 0
    page = next(out.rglob("maths.html"))
    source = page.read_text()
    assert "require.min.js" not in source and "widget-view" not in source and "cdn" not in source.lower()
    assert publish.EXPLORER_NOTE in source
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    browser = offline_chromium()
    try:
        seen = typeset(browser, f"http://127.0.0.1:{httpd.server_address[1]}/{page.relative_to(out).as_posix()}")
        pictures = browser.execute_script("return Array.from(document.images).filter(i => i.naturalWidth > 0).length")
        # the same page with MathJax from the web, as a learner's `coursekit run` without --mathjax writes it
        (page.parent / "web.html").write_text(source.replace(
            os.path.relpath(out / "_static" / "mathjax" / "tex-chtml-full.js", page.parent), publish.CDN_MATHJAX))
        cut = typeset(browser, f"http://127.0.0.1:{httpd.server_address[1]}/"
                               f"{(page.parent / 'web.html').relative_to(out).as_posix()}", wait=5)
    finally:
        browser.quit()
        httpd.shutdown()
    assert seen["formulas"] == 2 and seen["dollars"] == 0 and not seen["errors"], seen
    assert pictures >= 1, "the explorer's first picture"
    assert cut["formulas"] == 0 and cut["dollars"] > 0, "the browser really is cut off from the web"
