"""The notebooks as a researcher uses them: JupyterLab in headless Chromium (selenium), Run All on every
notebook, no error output, figures load, the k-matrix sliders of notebook 04 answer the keyboard and the
mouse, and the browser console shows no error.

JupyterLab serves a scratch copy of the repository (the tracked files of the working tree, committed in
a throw-away git repository with the README's output filter), so the notebooks write their results and
figures into that copy and the test can check that running them leaves `git status` clean.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). Outside CI the test skips when
they are missing; with CI=true that is a failure. Screenshots of every notebook go to a temporary folder
(printed at the end; `pytest -s` shows it).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from csdlib import zoo
from csdlib.datasets import gsm8k_dir

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Chromium as root in a container with no network (see the module docstring)
CHROME_FLAGS = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,2000"]

pytestmark = pytest.mark.browser


def _need(ok: bool, why: str):
    """Skip outside CI, fail inside it (CI=true): the browser test must not silently go missing."""
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STRIP_FILTER = "python3 tools/strip_notebook.py"     # README, "Notebooks": the one-time `git config`


def scratch_repo(dest: Path) -> Path:
    """The tracked files of the working tree, copied to `dest` and committed in a new git repository with
    the notebooks' clean filter set up as the README says."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "config", "filter.strip-notebook.clean", STRIP_FILTER], cwd=dest, check=True)
    subprocess.run(git + ["add", "-A"], cwd=dest, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "snapshot"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """(url, repository copy): JupyterLab on a free local port, no token, serving a scratch repository."""
    _need(shutil.which(CHROMIUM) is not None and shutil.which(CHROMEDRIVER) is not None,
          f"no {CHROMIUM} / {CHROMEDRIVER} (apt-get install chromium chromium-driver)")
    for module in ("selenium", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            _need(False, f"{module} is not installed (pip install -e '.[test]')")
    if gsm8k_dir() is None:
        pytest.skip("GSM8K not found ($CSD_DATA_DIR, default ../shared/datasets)")
    tmp = tmp_path_factory.mktemp("lab")
    repo = scratch_repo(tmp / "repo")
    home = tmp / "jupyter"
    settings = home / "settings"
    # no "would you like news?" popup, no update check (no internet here); the notebook's kernel starts
    # without a "Select Kernel" dialog (it appears when the kernel list arrives after the notebook)
    for plugin, values in {"apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
                           "notebook-extension/tracker": {"autoStartDefaultKernel": True}}.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}      # the kernel draws inline
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
               PYTHONPATH=os.pathsep.join([str(repo), env.get("PYTHONPATH", "")]),
               JUPYTER_CONFIG_PATH=str(repo / "tools"))       # README: notebooks are stripped on save
    port = _free_port()
    log = open(tmp / "jupyterlab.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True",                       # the test starts kernels by REST
         f"--ServerApp.root_dir={repo}", f"--LabApp.user_settings_dir={settings}",
         f"--LabApp.workspaces_dir={home / 'workspaces'}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=repo)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError((tmp / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url, repo
    finally:
        server.terminate()
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


# --------------------------------------------------------------------------------------------------
# Driving JupyterLab
# --------------------------------------------------------------------------------------------------

def wait_for(driver, condition, timeout: float, what: str, state=None):
    """Poll `condition(driver)` until it is truthy (returned) or fail after `timeout` seconds, saying what
    `state(driver)` shows then."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.25).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                             + (f"; the page shows {state(driver)}" if state else "")) from None


def js(driver, script: str, *args):
    """Run `script` in the page; `PANEL` in it is the notebook on show."""
    return driver.execute_script(f"const PANEL = {PANEL};\n" + script, *args)


def start_kernel(url: str, name: str):
    """A kernel session for the notebook, started through the server's REST API before the page opens it:
    JupyterLab then connects to it (when the page starts one itself, it sometimes ends up with none)."""
    body = json.dumps({"path": f"notebooks/{name}", "type": "notebook", "name": name,
                       "kernel": {"name": "python3"}}).encode()
    urllib.request.urlopen(urllib.request.Request(f"{url}/api/sessions", data=body, method="POST",
                                                  headers={"Content-Type": "application/json"}))


def open_notebook(driver, url: str, name: str):
    start_kernel(url, name)
    driver.get(f"{url}/lab/tree/notebooks/{name}?reset")       # ?reset: only this notebook open
    wait_for(driver, lambda d: js(d, "return PANEL !== null && PANEL.querySelectorAll('.jp-Cell').length > 0"),
             60, f"{name} to open")
    wait_for(driver, lambda d: js(d, IDLE) == "idle", 60, f"{name}'s kernel")


def menu(driver, *labels: str):
    """Click through the menu bar: menu(driver, "Run", "Run All Cells")."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//li[contains(@class, 'lm-MenuBar-item')][.//*[text()='{labels[0]}']]").click()
    for label in labels[1:]:
        item = wait_for(driver, lambda d: d.find_element(
            By.XPATH, f"//li[contains(@class, 'lm-Menu-item')][.//*[text()='{label}']]"), 10, f"menu item {label}")
        item.click()


# the notebook on show (JupyterLab keeps other tabs in the page, hidden)
PANEL = "document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)')"
CELL_STATE = """
const cells = [...PANEL.querySelectorAll('.jp-CodeCell')];
return cells.map(c => (c.querySelector('.jp-InputArea-prompt') || {}).textContent || '');
"""
IDLE = "const e = PANEL && PANEL.querySelector('.jp-Notebook-ExecutionIndicator'); return e && e.getAttribute('data-status')"
# figures in cell outputs (not those inside a widget's output, which the notebook file does not keep)
IMAGES = """return [...PANEL.querySelectorAll('.jp-OutputArea-output img')].filter(i => !i.closest('.widget-output'))
                .map(i => [i.complete && i.naturalWidth > 0, i.src.length]);"""


def run_all(driver, name: str, timeout: float = 240) -> int:
    """Run > Run All Cells, then wait until every code cell has an execution count and the kernel is idle.
    A Run All clicked while the kernel is still connecting may run nothing or only the first cell (seen
    here): when the notebook sits idle and unfinished for 5 s, click it again (at most 3 times).
    Returns the number of clicks."""
    def executed(prompts):
        return prompts and all(p.strip()[1:-2].isdigit() for p in prompts)

    menu(driver, "Run", "Run All Cells")
    clicks, last, since, deadline = 1, None, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = (tuple(js(driver, CELL_STATE)), js(driver, IDLE))
        if now[1] == "idle" and executed(now[0]):
            return clicks
        if now != last:
            last, since = now, time.monotonic()
        elif now[1] == "idle" and time.monotonic() - since > 5 and clicks < 3:
            menu(driver, "Run", "Run All Cells")
            clicks, since = clicks + 1, time.monotonic()
        time.sleep(0.25)
    raise AssertionError(f"{name}: Run All did not finish in {timeout} s; the page shows {last}")


def save(driver, repo: Path, name: str):
    """File > Save Notebook (what autosave does too), and wait until the file is written."""
    path = repo / "notebooks" / name
    before = path.stat().st_mtime_ns
    menu(driver, "File", "Save Notebook")
    wait_for(driver, lambda d: path.stat().st_mtime_ns != before, 30, f"{name} to be saved")


# error tracebacks and anything written to stderr (warnings, progress bars): JupyterLab renders both as
# application/vnd.jupyter.stderr outputs
STDERR = """return [...PANEL.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
                .map(o => o.innerText.slice(0, 400));"""
# figures each notebook shows (04's plot lives in the sliders' output widget, checked on its own)
FIGURES = {"01_build_bigram_table.ipynb": 1, "02_run_experiments.ipynb": 1, "03_acceptance_per_level.ipynb": 6,
           "05_grow_a_ladder.ipynb": 1}


def screenshot(driver, folder: Path, stem: str):
    """The top of the notebook and its last output."""
    js(driver, "PANEL.querySelector('.jp-WindowedPanel-outer').scrollTop = 0")
    time.sleep(0.3)
    driver.save_screenshot(str(folder / f"{stem}-top.png"))
    js(driver, "const o = [...PANEL.querySelectorAll('.jp-OutputArea-output')].pop();"
               "if (o) o.scrollIntoView({block: 'end'});")
    time.sleep(0.5)
    driver.save_screenshot(str(folder / f"{stem}-end.png"))


def shut_down_kernels(url: str):
    """Every kernel of the server (a finished notebook's kernel would hold a core's worth of memory)."""
    for session in json.load(urllib.request.urlopen(f"{url}/api/sessions")):
        urllib.request.urlopen(urllib.request.Request(f"{url}/api/sessions/{session['id']}", method="DELETE"))


def slider_output(driver) -> tuple[str, str]:
    """(printed text, plot image src) of the interact output under the sliders."""
    return tuple(js(driver, """
        // the interact's own output (not the optimize button's report below it)
        const out = PANEL.querySelector('.widget-interact .widget-output')
                    || [...PANEL.querySelectorAll('.widget-output')].shift();
        const img = out && out.querySelector('img');
        return [out ? out.innerText : '', img ? img.src : ''];"""))


def test_notebooks_in_jupyterlab(lab, browser):

    url, repo = lab
    shots = Path(tempfile.mkdtemp(prefix="csd-notebook-screenshots-"))
    timings, seen = {}, {}
    for name in NOTEBOOKS:
        try:
            check_notebook(browser, url, repo, name, shots, timings, seen)
        except Exception:
            browser.save_screenshot(str(shots / f"{Path(name).stem}-failure.png"))
            print(f"\nscreenshots in {shots}")
            raise

    # JupyterLab's debugger sidebar probes each kernel; when the test shuts a kernel down while a probe
    # is pending, JupyterLab logs "Could not restore the debugger state" (its own race, not ours)
    benign = ("Could not restore the debugger state",)

    def anonymous_core_rejection(message: str) -> bool:
        # JupyterLab's own bundle rejecting a promise with no reason at all (seen once in four runs, in
        # the same kernel-shutdown window); a rejection with a reason, or from any other script (the
        # widgets, our outputs), still fails the test
        return "/static/lab/jlab_core." in message and message.rstrip().endswith("Uncaught (in promise)")

    severe = [e for e in browser.get_log("browser")
              if e["level"] == "SEVERE" and not any(b in e["message"] for b in benign)
              and not anonymous_core_rejection(e["message"])]
    print(f"\nbrowser test: seconds per notebook (open + Run All) {timings}, {seen}; screenshots in {shots}")
    assert severe == [], severe
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
    diff = subprocess.run(["git", "diff"], cwd=repo, capture_output=True, text=True).stdout[:3000]
    assert status.stdout == "", f"running the notebooks left the repository dirty:\n{status.stdout}\n{diff}"


def check_notebook(browser, url, repo, name, shots, timings, seen):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    if True:
        tic = time.perf_counter()
        open_notebook(browser, url, name)
        clicks = run_all(browser, name)
        timings[name] = round(time.perf_counter() - tic, 1)
        images, stderr = js(browser, IMAGES), js(browser, STDERR)
        save(browser, repo, name)
        screenshot(browser, shots, Path(name).stem)
        assert stderr == [], f"{name}: error or stderr output: {stderr}"
        assert all(ok for ok, _ in images), f"{name}: a figure did not load: {images}"
        assert len(images) == FIGURES.get(name, 0), f"{name}: {len(images)} figures"
        seen[name] = {"figures": len(images), "run all clicks": clicks}

        if name.startswith("04"):
            sliders = browser.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle")
            assert len(sliders) == 11, f"expected 6 k-matrix sliders, the lenience and 4 tree sliders, found {len(sliders)}"
            text0, img0 = slider_output(browser)
            assert "SWI" in text0 and img0, text0
            assert js(browser, "return [...PANEL.querySelectorAll('.widget-output img')].every(i => i.naturalWidth > 0)")
            # keyboard: focus the first slider (row 0, the mid drafter) and press the right arrow
            sliders[0].click()
            sliders[0].send_keys(Keys.ARROW_RIGHT)
            wait_for(browser, lambda d: slider_output(d)[0] != text0 and js(d, IDLE) == "idle", 30,
                     "the keyboard move to be evaluated")
            text1, img1 = slider_output(browser)
            k00 = json.loads((zoo.FAMILY_DIRS[zoo.DEFAULT_FAMILY] / "family.json").read_text())["default"]["k_matrix"][0][0]
            assert f"k_matrix=[[{k00 + 1}," in text1 and img1 != img0, (k00, text1)   # one step up from the default
            # mouse: drag the lenience slider to the left
            ActionChains(browser).drag_and_drop_by_offset(sliders[6], -60, 0).perform()
            wait_for(browser, lambda d: slider_output(d)[0] != text1 and js(d, IDLE) == "idle", 30,
                     "the mouse move to be evaluated")
            text2, img2 = slider_output(browser)
            assert "lenience=" in text2 and text2.split("lenience=")[1] != text1.split("lenience=")[1], text2
            assert img2 != img1
            wait_for(browser, lambda d: js(d, "return [...PANEL.querySelectorAll('.widget-output img')]"
                                               ".every(i => i.complete && i.naturalWidth > 0)"), 10, "the new plot")
            browser.save_screenshot(str(shots / "04_tune_k_matrix-sliders.png"))
        shut_down_kernels(url)
