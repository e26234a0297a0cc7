"""The app in a real browser: Debian's chromium, driven by Playwright, against `streamlit run`.

Opens every page, waits until the script has finished and no skeleton remains, checks there is
no exception and that the charts rendered, moves the in-figure slider, and saves screenshots
of the main pages to docs/screenshots/. It uses the repository's checkpoints/ (the shipped
models, or untrained ones while there are none) and never trains or saves anything.
Timings are printed (run with -s to see them), never asserted; bench/app_speed.py measures.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

from bench.browser import CHROMIUM, CHROMIUM_ARGS, REPOSITORY, SCRUB_JS, streamlit_server
from bench.browser import settle as script_finished

SCREENSHOTS = REPOSITORY / "docs" / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at "
                       "/usr/bin/chromium (apt-get install chromium); no browser is downloaded"),
]


@pytest.fixture(scope="module")
def server():
    """`streamlit run app.py` on a free port, on the repository's own checkpoints."""
    environment = dict(os.environ)
    environment.pop("MANN_CHECKPOINTS", None)
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(streamlit_server(environment))
        except RuntimeError as error:
            pytest.fail(str(error))
        yield url


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    tab = context.new_page()
    yield tab
    context.close()


def settle(tab, timeout: float = 60_000) -> None:
    """Wait until the script run has finished and nothing is still loading."""
    script_finished(tab, timeout)
    tab.wait_for_timeout(300)  # let plotly finish drawing what the last message carried


def open_page(tab, url: str) -> None:
    tab.goto(url)
    settle(tab)
    exceptions = tab.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, exceptions.first.inner_text()


def charts(tab, at_least: int = 1, timeout: float = 30_000):
    tab.wait_for_function(
        f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {at_least}",
        timeout=timeout,
    )
    return tab.locator(".js-plotly-plot")


def shoot(tab, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def slider_state(tab, index: int) -> dict:
    return tab.evaluate(
        """(index) => { const gd = document.querySelectorAll('.js-plotly-plot')[index];
             return {active: gd._fullLayout.sliders[0].active,
                     memory: JSON.stringify(gd._fullData[0].z.map(row => Array.from(row)))};
           }""",
        index,
    )


def drag_slider(tab, index: int, fraction: float) -> None:
    """Click the figure's own slider rail like a user."""
    rail = tab.locator(".js-plotly-plot").nth(index).locator(".slider-rail-rect")
    box = rail.bounding_box()
    tab.mouse.click(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)


def test_a_link_straight_to_a_page_opens_it_inside_the_app(server, browser):
    # First in this module, so /inspect is the server's first request. The page must run
    # inside app.py's st.navigation, with its titled page links and the model selector in the
    # sidebar, and without a "Page not found" dialog. (On a fresh server Streamlit routes the
    # first request by the pages/ directory, streamlit#8860: page files named otherwise than
    # their URLs showed that dialog; named after them, but without shared.page_needs_app,
    # they were served without app.py: no model selector, file names as links.)
    # The first is a link to a view: dnc-copy on input length 12, seed 3, shown at step 7.
    for path in ("inspect?model=dnc-copy&length=12&seed=3&step=7", "train"):
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        try:
            tab.goto(f"{server}/{path}")
            settle(tab)
            sidebar = tab.get_by_test_id("stSidebar")
            assert sidebar.get_by_role("link", name="Home", exact=True).count() == 1
            assert sidebar.get_by_text("Model", exact=True).count() == 1
            assert tab.locator('[data-testid="stException"]').count() == 0
            assert tab.get_by_text("Page not found").count() == 0
            page_name = path.split("?")[0]
            assert tab.get_by_role("heading", name=page_name.capitalize()).count() >= 1
            if "?" in path:
                assert tab.get_by_role("heading", name="dnc-copy", exact=True).count() == 1
                values = sidebar.locator("input[type=number]").evaluate_all(
                    "inputs => inputs.map(input => input.value)"
                )
                assert values[:2] == ["12", "3"], values  # length, seed
                charts(tab)
                active = tab.evaluate("() => document.querySelectorAll('.js-plotly-plot')[0]"
                                      "._fullLayout.sliders[0].active")  # fmt: skip
                assert active == 7
        finally:
            context.close()


@pytest.mark.parametrize(
    "link",
    [
        "inspect?model=dnc-copy&length=12&seed=3&step=7",
        "compare?models=ntm-copy,dnc-copy&length=12&seed=3",
        "whatif?model=dnc-copy&length=12&seed=3&preset=1",
    ],
)
def test_a_projector_link_fits_the_main_figure_in_1280_by_720(server, browser, link):
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    tab = context.new_page()
    try:
        open_page(tab, f"{server}/{link}&fit=1&large=1")
        charts(tab)
        tab.wait_for_timeout(500)
        figure = tab.locator(".js-plotly-plot").first
        box = figure.bounding_box()
        assert box["y"] >= 0 and box["y"] + box["height"] <= 720, box
        # Nothing of it is hidden to the right either, and its text is the large one.
        assert box["x"] + box["width"] <= 1280, box
        assert tab.evaluate("() => document.querySelector('.js-plotly-plot')"
                            "._fullLayout.font.size") == 18  # fmt: skip
        if link.startswith("inspect"):
            shoot(tab, "projector")
    finally:
        context.close()


def test_every_page_in_a_real_browser(server, page):
    timings: dict[str, float] = {}

    started = time.monotonic()
    page.goto(server)
    page.wait_for_selector("h1", timeout=60_000)
    timings["server up -> first page's content (s)"] = time.monotonic() - started
    settle(page)
    timings["server up -> first page finished, sidebar too (s)"] = time.monotonic() - started
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "Watch memory-augmented networks" in page.locator("h1").first.inner_text()
    page.get_by_role("button", name="Run the demo").click()
    settle(page)
    charts(page)
    shoot(page, "home")

    # Inspect: the scrub figure, moved by its own slider, without a server round trip.
    open_page(page, f"{server}/inspect")
    assert charts(page).count() >= 1
    before = slider_state(page, 0)
    drag_slider(page, 0, 0.6)
    page.wait_for_function(
        "(old) => document.querySelectorAll('.js-plotly-plot')[0]._fullLayout.sliders[0].active"
        " !== old", arg=before["active"], timeout=10_000,
    )
    after = slider_state(page, 0)
    assert after["active"] > before["active"]
    assert after["memory"] != before["memory"], "the frame changed the memory heatmap"
    assert page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').count()
    shoot(page, "inspect")
    times = [t for t in page.evaluate(SCRUB_JS, [0, [(i * 7 % 20 + 0.5) / 20
                                                      for i in range(15)]]) if t is not None]
    assert times, "the slider moved the figure"
    times.sort()
    timings["scrub step in the browser, median (ms)"] = times[len(times) // 2]
    timings["scrub step in the browser, slowest (ms)"] = times[-1]
    page.get_by_role("tab", name="Timeline").click()
    page.wait_for_timeout(500)
    shoot(page, "timeline")

    # The DNC, chosen in the shared sidebar: links, usage, allocation.
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_role("combobox").first.click()
    options = page.get_by_role("option")
    names = options.all_inner_texts()
    dnc = next((name for name in names if name.startswith("dnc-")), None) or next(
        name for name in names if name.startswith("untrained DNC"))
    page.get_by_role("option", name=dnc, exact=True).click()
    page.get_by_role("heading", name=dnc, exact=True).wait_for(timeout=30_000)
    settle(page)
    page.get_by_role("tab", name="Scrub through time").click()
    charts(page)
    drag_slider(page, 0, 0.3)
    page.wait_for_timeout(300)
    shoot(page, "inspect-dnc")

    open_page(page, f"{server}/explain")
    charts(page)
    shoot(page, "explain")

    open_page(page, f"{server}/compare")
    charts(page)
    drag_slider(page, 0, 0.7)
    page.wait_for_function(
        "() => document.querySelectorAll('.js-plotly-plot')[0]._fullLayout.sliders[0].active > 0",
        timeout=10_000,
    )
    shoot(page, "compare")

    open_page(page, f"{server}/train")
    assert page.get_by_role("button", name="Start training").count() == 1
    shoot(page, "train")

    open_page(page, f"{server}/generalisation")
    lengths = page.get_by_label("lengths (comma-separated)", exact=True).and_(page.locator("input"))
    lengths.fill("5,10,20,30")
    lengths.press("Enter")
    settle(page)
    sequences = page.get_by_label("sequences per length", exact=True).and_(page.locator("input"))
    sequences.fill("20")
    sequences.press("Enter")
    settle(page)
    started = time.monotonic()
    page.get_by_role("button", name="Evaluate").click()
    # On a fresh machine (as in CI) SAM's and SDNC's kernels may still be compiling (the app
    # starts that in the background; tens of seconds on 2 cores), and this waits for them.
    charts(page, timeout=150_000)  # drawn when the evaluation is done; then the sidebar finishes
    timings["generalisation: Evaluate -> its chart (s)"] = time.monotonic() - started
    settle(page, timeout=90_000)
    shoot(page, "generalisation")

    # Learn: the first lesson, one step on.
    open_page(page, f"{server}/learn")
    charts(page)
    page.get_by_role("button", name="Next").click()
    settle(page)
    charts(page)
    assert page.get_by_role("heading", name="Writing: one slot per item").count() == 1
    shoot(page, "learn")

    # What if: a preset on dnc-copy, run end to end.
    open_page(page, f"{server}/whatif")
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_role("combobox").first.click()
    page.get_by_role("option", name="dnc-copy", exact=True).click()
    settle(page)
    started = time.monotonic()
    page.get_by_role("button", name="DNC: close the write gate while it stores item 3").click()
    charts(page, at_least=2)
    settle(page)
    timings["what if: preset -> its figures (s)"] = time.monotonic() - started
    assert page.get_by_text("first changed answer: step 23").count() == 1  # the figure's line
    assert page.locator('[data-testid="stException"]').count() == 0
    shoot(page, "whatif")

    # Patterns: the shipped multi-copy models over many episodes, a progress bar, five figures.
    open_page(page, f"{server}/patterns")
    assert page.get_by_text("dnc-multi-copy", exact=True).count() >= 1, "shipped models preset"
    started = time.monotonic()
    page.get_by_role("button", name="Measure").click()
    shown = charts(page, at_least=5, timeout=120_000)
    timings["patterns: Measure -> its figures (s)"] = time.monotonic() - started
    settle(page)
    assert shown.count() == 5
    table = page.get_by_test_id("stDataFrame").first
    assert table.count() == 1
    shoot(page, "patterns")

    open_page(page, f"{server}/export")
    with page.expect_download() as download:
        page.get_by_role("button", name="Scrubbable figure (HTML, works offline)").click()
    html = Path(download.value.path()).read_text()
    assert "Plotly.newPlot" in html and "addFrames" in html and len(html) > 3_000_000
    with page.expect_download() as download:
        page.get_by_role("button", name="Trace (.npz)").click()
    from mann.trace import Trace

    trace = Trace.load(download.value.path())
    assert trace.steps > 0 and trace.memory is not None
    with page.expect_download(timeout=120_000) as download:
        page.get_by_role("button", name="Animation (GIF)").click()
    from PIL import Image

    with Image.open(download.value.path()) as gif:
        assert gif.n_frames == trace.steps and gif.size == (1280, 720)
    shoot(page, "export")

    print("\nmeasured in the browser test")
    for name, value in timings.items():
        print(f"  {name:<48} {value:8.2f}")
