"""The lab as its users see it, in a real Chromium: JupyterLab running 03_listen, and a batch's index.html.

Marked ``browser``: the main suite (``make test``) leaves these out; ``make test-browser`` installs Debian's
chromium and the pinned playwright (which drives that browser: it downloads none) and runs them. Each test
saves screenshots in its temporary folder and prints their paths (``pytest -s`` shows them).

JupyterLab is started with the Python running the tests (``sys.executable -m jupyterlab``), so its front-end
extensions are those of that Python's prefix: run the tests from a prefix without the ipywidgets extension
and the first test fails at "the widgets appear".
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
import soundfile as sf

from signals import bell, noise, tone

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
# a few training steps of a tiny model: enough for checkpoints to render from (the page is under test here)
TINY = {
    "dim": 16,
    "embed_size": 8,
    "chunk_seconds": 0.5,
    "copies": 2,
    "seq_len": 256,
    "batch_size": 4,
    "render_seconds": 0.1,
    "epochs": 1,
    "max_steps": 4,
}
TIMEOUT_MS = 120_000  # one step of the page on a loaded 2-core machine: a kernel's start, torch's import, a render
CATEGORIES = ("silence", "tone", "noise", "varied")


def chromium_path() -> str:
    """The installed Chromium (Debian's ``chromium``); a clear failure, not a skip, when it is missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no chromium on PATH: run `make test-browser`, which installs it (apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # root in a container needs --no-sandbox; players may play without a click (there is no user here)
        b = p.chromium.launch(
            executable_path=chromium_path(),
            args=["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
        )
        yield b
        b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plays(page, audio) -> float:
    """Play an ``<audio>`` element to its end; returns its duration in seconds (fails if it never loads)."""
    handle = audio.element_handle()
    audio.evaluate("a => a.play()")
    page.wait_for_function("a => a.ended || a.error", arg=handle)
    assert audio.evaluate("a => a.error === null"), audio.evaluate("a => a.error.message")
    return audio.evaluate("a => a.duration")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A run folder trained for a few steps through the library (prepare, train)."""
    from samplernn_lab import get_preset, prepare, train

    root = tmp_path_factory.mktemp("tiny")
    sf.write(root / "bells.wav", bell(16000, 1.0, seed=3), 16000, subtype="PCM_16")
    preset = get_preset("sketch", TINY)
    prepare([root / "bells.wav"], root / "dataset", preset.data, progress=False)
    train(root / "dataset", root / "run", preset.model, preset.train, device="cpu", progress=False)
    return root / "run"


class JupyterLab:
    """``jupyter lab`` on a free local port with a token, serving ``root``; stopped by :meth:`stop`.

    Its configuration, settings, workspaces and runtime files live in ``state``, so the user's own
    JupyterLab settings play no part and nothing is left behind.
    """

    def __init__(self, root: Path, state: Path):
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.log_path = state / "jupyterlab.log"
        settings = state / "settings" / "@jupyterlab"
        for name, values in [("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False})]:
            # no "get Jupyter news?" toast over the page
            (settings / f"{name}.jupyterlab-settings").parent.mkdir(parents=True, exist_ok=True)
            (settings / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(state / "config"),
            "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(state / "ws"),
            "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        env.pop("TQDM_DISABLE", None)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--allow-root",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={root}",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=root,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"jupyter lab did not start; see {self.log_path}")
            time.sleep(0.5)

    def start_kernel(self, notebook: str) -> None:
        """A kernel session for ``notebook`` (as a user's earlier visit leaves one): the page opening it
        connects to that kernel instead of asking which kernel to start."""
        body = json.dumps({"path": notebook, "type": "notebook", "name": notebook, "kernel": {"name": "python3"}})
        request = urllib.request.Request(
            self.url("api/sessions"), data=body.encode(), method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as r:
            assert r.status == 201, r.status

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _listen_notebook(run: Path, folder: Path) -> Path:
    """notebooks/03_listen.ipynb with its parameters pointed at ``run`` and shortened, saved in ``folder``
    (as papermill would inject them: assignments after the tagged cell's own)."""
    book = nbformat.read(REPO / "notebooks" / "03_listen.ipynb", as_version=4)
    cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += (
        f"\nrun_dir = {str(run)!r}\nseconds = 0.5\ntemperatures = [1.0]\nout_dir = {str(folder / 'listen')!r}\n"
    )
    path = folder / "03_listen.ipynb"
    nbformat.write(book, path)
    return path


def _menu(page, menu: str, item: str) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=menu).first.click()
    page.locator(".lm-Menu-itemLabel", has_text=item).first.click()


def _check_card(page, card, seconds: float) -> str:
    """A render card as the page shows it: diagnosis, a player that plays, a spectrogram that loaded."""
    text = card.locator(".srl-diagnosis").inner_text()
    assert card.locator(".srl-category").inner_text() in CATEGORIES, text
    assert f"{seconds:.1f} s at 16000 Hz" in text and len(text.splitlines()[-1]) > 30, text  # + a sentence
    assert abs(_plays(page, card.locator("audio")) - seconds) < 0.05
    assert card.locator("img.srl-spectrogram").evaluate("img => img.complete && img.naturalWidth > 200")
    # beside each other, not below: the spectrogram starts right of the player
    player, image = card.locator("audio").bounding_box(), card.locator("img.srl-spectrogram").bounding_box()
    assert image["x"] > player["x"] + player["width"], (player, image)
    return text


def test_listen_notebook_in_jupyterlab(tiny_run, browser, tmp_path):
    _listen_notebook(tiny_run, tmp_path)
    lab = JupyterLab(tmp_path, tmp_path / "jupyter")
    page = None
    try:
        lab.start_kernel("03_listen.ipynb")
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(lab.url("lab/tree/03_listen.ipynb"))
        page.wait_for_selector(".jp-Notebook .jp-Cell")
        # the kernel connected and idle (the indicator also reads idle before there is a kernel, and "Run All"
        # then asks which kernel to start)
        page.wait_for_function("""() => {
            const name = document.querySelector('.jp-Toolbar-kernelName');
            const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
            return name && name.innerText.includes('Python 3') && status && status.dataset.status === 'idle';
        }""")
        _menu(page, "Run", "Run All Cells")

        # the first cell's render, as a card: diagnosis, then the player beside the spectrogram
        first = page.locator(".jp-OutputArea-output .srl-card").first
        first.wait_for()
        _check_card(page, first, 0.5)

        # the controls appear as widgets, not as "Loading widget..." nor as the text VBox(children=...)
        outputs = page.locator(".jp-Notebook .jp-Cell").last.locator(".jp-OutputArea-output")
        outputs.first.wait_for()
        page.wait_for_function(
            "o => o.querySelector('.widget-vbox') || /VBox\\(|Loading widget/.test(o.innerText)",
            arg=outputs.first.element_handle(),
        )
        controls = outputs.first.locator(".widget-vbox").first
        assert controls.count() == 1, (
            f"the ipywidgets front-end did not render the controls: {outputs.first.inner_text()!r}"
        )
        # `auto` (the notebook's checkpoint parameter, the lab's default) first, then the run's checkpoint files
        assert controls.locator(".widget-dropdown select option").all_inner_texts() == ["auto", "last"]
        slider = controls.locator(".widget-slider", has_text="temperature")
        readout = slider.locator(".widget-readout")
        assert readout.inner_text() == "1.00"
        render = controls.locator("button", has_text="Render")
        assert render.is_visible()

        # set the temperature as a user would (type into the slider's readout), then Render
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type("0.7")
        page.keyboard.press("Enter")
        page.wait_for_function("el => el.innerText === '0.70'", arg=readout.element_handle())
        render.click()

        out = controls.locator(".widget-output")
        out.locator(".widget-hprogress .progress-bar").first.wait_for()  # the render's progress, as a widget
        out.locator(".widget-hprogress .progress-bar-success").first.wait_for()  # finished (tqdm turns it green)
        assert "generate: 100%" in out.locator(".widget-hbox").first.inner_text().replace("\u2007", " ")
        card = out.locator(".srl-card").first
        card.wait_for()
        assert "_t0.7_" in card.inner_text()  # rendered at the temperature set in the page
        text = _check_card(page, card, 0.5)
        page.wait_for_function("b => !b.disabled", arg=render.element_handle())
        print(f"diagnosis in the page: {text!r}")

        controls.scroll_into_view_if_needed()
        page.evaluate("c => c.scrollIntoView({block: 'start'})", controls.element_handle())
        shot = tmp_path / "jupyterlab_03_listen.png"
        page.screenshot(path=str(shot))
        card.screenshot(path=str(tmp_path / "jupyterlab_render_card.png"))
        print(f"screenshot: {shot}\nscreenshot: {tmp_path / 'jupyterlab_render_card.png'}")
    except Exception:
        if page is not None:
            page.screenshot(path=str(tmp_path / "jupyterlab_failed.png"))
            print(f"screenshot of the failure: {tmp_path / 'jupyterlab_failed.png'}; log: {lab.log_path}")
        raise
    finally:
        if page is not None:
            page.close()
        lab.stop()
    assert lab.proc.returncode is not None


GRID = ("0.001", "0.003")


@pytest.fixture
def batch_folder(tmp_path) -> Path:
    """A batch folder of three sources x ``lr`` in GRID and a broken source, written as ``batch --grid``
    writes it (run folders with renders and poster figures, then the library's triage writer)."""
    from samplernn_lab.batch import write_triage
    from samplernn_lab.figures import poster_figure

    out = tmp_path / "batch"
    sounds = {
        "bells": (bell(16000, 1.0, seed=1), "varied"),
        "hum": (tone(220.0, 16000, 1.0), "tone"),
        "hiss": (noise(16000, 1.0), "noise"),
    }
    posters = {
        name: poster_figure([(name, audio, 16000)], tmp_path / "posters" / name, dpi=40)[0]
        for name, (audio, _) in sounds.items()
    }  # one per source, copied to its runs: a loaded machine
    results = []
    for lr in GRID:
        for name, (audio, category) in sounds.items():
            run = out / f"{name}__lr={lr}"
            rel = "renders/listen/last_t1_s0_0.wav"
            (run / rel).parent.mkdir(parents=True)
            sf.write(run / rel, audio, 16000, subtype="PCM_16")
            (run / "figures").mkdir()
            shutil.copy(posters[name], run / "figures" / "poster.png")
            results.append(
                {
                    "name": run.name,
                    "source": f"{name}.wav",
                    "grid": {"lr": lr},
                    "status": "ok",
                    "run": str(run),
                    "renders": [{"file": rel, "category": category}],
                    "category": category,
                    "best_val_bits": 3.0 + len(name) / 10,
                    "epochs": 2,
                    "figures": ["figures/poster.png"],
                }
            )
        results.append(
            {
                "name": f"broken__lr={lr}",
                "source": "broken.wav",
                "grid": {"lr": lr},
                "status": "failed",
                "run": str(out / f"broken__lr={lr}"),
                "error": "broken.wav: not a readable audio file",
            }
        )
    write_triage(out, results, ["lr"])
    return out


def test_batch_index_from_disk(browser, batch_folder, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.set_default_timeout(30_000)
        page.goto((batch_folder / "index.html").as_uri())

        # grouped by setting: a group per lr, each holding its four runs
        groups = page.locator("#t tbody")
        assert groups.count() == len(GRID)
        for lr, group in zip(GRID, groups.all()):
            assert group.locator("tr.group th").inner_text().startswith(f"lr={lr}")
            names = group.locator("tr:not(.group) td:first-child").all_inner_texts()
            assert sorted(names) == sorted(f"{s}__lr={lr}" for s in ("bells", "hum", "hiss", "broken"))

        # every player loads its WAV from disk and plays it (1 s each)
        audios = page.locator("audio")
        assert audios.count() == 3 * len(GRID)
        for audio in audios.all():
            audio.scroll_into_view_if_needed()
            assert abs(_plays(page, audio) - 1.0) < 0.01

        # every figure thumbnail loads (they load lazily: scrolled to, as a reader would)
        images = page.locator("img")
        assert images.count() == 3 * len(GRID)
        for image in images.all():
            image.scroll_into_view_if_needed()
            page.wait_for_function("i => i.complete", arg=image.element_handle())
            assert image.evaluate("i => i.naturalWidth > 0"), image.get_attribute("src")

        page.evaluate("window.scrollTo(0, 0)")
        shot = tmp_path / "batch_index.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")

        # sorting by category, within each group: ascending, descending, ascending again
        def categories() -> list[list[str]]:
            return [g.locator("td.cat").all_inner_texts() for g in groups.all()]

        initial = categories()
        assert all(set(c) >= {"failed", "noise"} for c in initial) and any(c != sorted(c) for c in initial)
        header = page.locator("#t thead th", has_text="category").first
        header.click()
        assert categories() == [sorted(c) for c in initial]
        header.click()
        assert categories() == [sorted(c, reverse=True) for c in initial]
        header.click()
        assert categories() == [sorted(c) for c in initial]

        header.click()  # descending: the varied runs first in each group
        shot = tmp_path / "batch_index_sorted.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    finally:
        page.close()


def test_chromium_is_the_installed_one():
    """The driver uses the system's Chromium, never a browser it downloaded."""
    path = Path(chromium_path()).resolve()
    assert path.is_file() and "ms-playwright" not in str(path)
    version = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert "Chromium" in version or "Chrome" in version
