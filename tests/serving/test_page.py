"""The page at `/` of `coop-serve --http-port` (serving/page, serving/rest.py).

Its JSON API against the in-process server (no browser needed): open page and files, the token, 400 naming the
field, the stream's events equal to gRPC's. Then headless Chromium (Debian's chromium and chromium-driver,
driven by selenium) against a live coop-serve subprocess on loopback, with the shipped bundles: the token
typed in, a sampled grid's pixels equal to gRPC's for that seed, a hole drawn with the mouse and a finger and
completed as gRPC completes it (observed pixels unchanged), a stream stopped with the server's work stopped
too, the Energy view's score equal to gRPC's, the keyboard and a phone's width. The browser tests are skipped,
with the reason, where no Chromium or chromedriver is installed (.ci/run installs them).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import urllib.error
import urllib.request
from collections import Counter

import numpy as np
import pytest
from coopnets.contract.bundle import SHIPPED
from coopnets.contract.codec import to_uint8
from coopnets.contract.occlusions import occlusion_mask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from support import TOKEN, local_server, start_server, wait_for

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def call(url: str, body=None, headers: dict | None = None):
    """(status, headers, body bytes); a dict or list body goes as JSON (POST)."""
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def png_pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


# ---- the JSON API, no browser ------------------------------------------------------------------------------


def test_the_page_and_its_files_are_open_and_confined_to_their_folder(coop_server):
    url = coop_server.http_url
    status, headers, body = call(url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'name="viewport"' in body and b"/page/page.js" in body
    assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'self': no inline script
    for name, kind in (("page.js", "text/javascript"), ("page.css", "text/css"), ("index.html", "text/html")):
        status, headers, _ = call(f"{url}/page/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind), name
    for path in ("/page/..%2Frest.py", "/page/rest.py", "/page/.hidden.js", "/page/examples/..%2F..%2Fx.png"):
        assert call(url + path)[0] == 404, path
    assert call(url + "/api/info")[0] == 401  # what touches the model needs the token
    assert call(url + "/api/synthesize", {"count": 1})[0] == 401


def test_info_names_the_bundle_and_its_defaults(coop_server, serving_bundle, serving_engine):
    status, _, body = call(coop_server.http_url + "/api/info", headers=AUTH)
    doc = json.loads(body)
    assert status == 200 and doc["name"] == "/".join(serving_bundle.parts[-2:])  # not shipped: its folder
    assert doc["info"]["image_shape"] == list(serving_engine.image_shape)
    assert doc["info"]["langevin"]["steps"] == serving_engine.synthesis_defaults.steps
    assert "center:12" in doc["occlusions"] and "m40" in doc["occlusions"]
    # a 1x28x28 bundle is offered the Fashion-MNIST examples, which the page may fetch without the token
    assert [e["name"] for e in doc["examples"]] == sorted(
        p.stem for p in (SHIPPED / "examples/reference").glob("*.png")
    )
    status, headers, png = call(coop_server.http_url + doc["examples"][0]["url"])
    assert status == 200 and headers["Content-Type"] == "image/png" and png_pixels(png).shape == (28, 28)


@pytest.mark.parametrize(
    "path,body,field",
    [
        ("/api/synthesize", b"{", "body"),
        ("/api/synthesize", [], "body"),
        ("/api/synthesize", {"count": 0}, "count"),
        ("/api/synthesize", {"count": "x"}, "count"),
        ("/api/synthesize", {"count": 1, "cnt": 1}, "cnt"),
        ("/api/synthesize", {"count": 1, "langevin": {"steps": 10**6}}, "langevin.steps"),
        ("/api/synthesize", {"count": 1, "seed": "-1"}, "seed"),
        ("/api/complete", {"image": {"png": "AAAA"}, "occlusion": "center:12"}, "image.png"),
        ("/api/complete", {"image": {"png": "!"}}, "image.png"),
        ("/api/energy", {"images": []}, "images"),
        ("/api/synthesize/stream", {"request": {"count": 1}, "snapshot_every": 10**4}, "snapshot_every"),
        ("/api/synthesize/stream", {"request": {"count": 10**4}}, "request.count"),
    ],
)
def test_bad_input_is_400_naming_the_field(coop_server, path, body, field):
    status, _, answer = call(coop_server.http_url + path, body, AUTH)
    assert status == 400, answer
    assert json.loads(answer)["field"] == field


def test_the_json_api_answers_as_grpc_does(coop_server, client):
    url = coop_server.http_url
    expected = client.synthesize(count=3, seed=11, steps=4, png=True)
    status, _, body = call(
        url + "/api/synthesize", {"count": 3, "seed": "11", "langevin": {"steps": 4}}, AUTH
    )
    images = json.loads(body)["images"]
    assert status == 200 and [g["seed"] for g in images] == ["11", "12", "13"]  # int64: strings
    pixels = np.stack([png_pixels(base64.b64decode(g["image"]["png"])) for g in images])
    np.testing.assert_array_equal(pixels, to_uint8(expected.images)[:, 0])
    png = base64.b64encode((SHIPPED / "examples/reference/t10k-0000-ankle-boot.png").read_bytes()).decode()
    status, _, body = call(url + "/api/energy", {"images": [{"png": png}]}, AUTH)
    grpc_energy = client.energies([base64.b64decode(png)])
    assert np.float32(json.loads(body)["energy"][0]) == grpc_energy.energy[0]
    status, _, body = call(url + "/api/complete", {"image": {"png": png}, "occlusion": "center:12"}, AUTH)
    recovered = png_pixels(base64.b64decode(json.loads(body)["recovered"]["png"]))
    np.testing.assert_array_equal(
        recovered, to_uint8(client.complete(base64.b64decode(png), occlusion="center:12").recovered)[0]
    )


def events(body: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in body.decode().strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_the_stream_is_server_sent_events_of_grpcs_stream(coop_server, client):
    body = {"request": {"count": 2, "seed": "5", "langevin": {"steps": 3}}, "snapshot_every": 1}
    status, headers, answer = call(coop_server.http_url + "/api/synthesize/stream", body, AUTH)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    got = events(answer)
    assert [(e, d.get("step"), d.get("image", {}).get("index")) for e, d in got] == [
        ("snapshot", 1, 0), ("snapshot", 1, 1), ("snapshot", 2, 0), ("snapshot", 2, 1),
        ("image", 3, 0), ("image", 3, 1), ("end", None, None),
    ]  # fmt: skip
    grpc_events = list(client.synthesize_stream(count=2, seed=5, steps=3, snapshot_every=1))
    for (_, d), g in zip(got, grpc_events, strict=False):
        np.testing.assert_array_equal(
            png_pixels(base64.b64decode(d["image"]["image"]["png"])), to_uint8(g.image)[0]
        )
    assert coop_server.metric("coopnets_requests_total", rpc="http/SynthesizeStream", code="OK") >= 1


# Bodies of any JSON shape, with the requests' own field names among the keys, so that many reach the checks
# behind the JSON mapping; small limits keep those that pass cheap
FIELDS = ["count", "seed", "langevin", "steps", "step_size", "noise", "format", "request", "snapshot_every",
          "image", "images", "png", "tensor", "shape", "data", "mask", "occlusion", "restarts",
          "latent_steps", "residual_interpolant", "x"]  # fmt: skip
SCALARS = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
BODIES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6),
                                                                 inner, max_size=5),
    max_leaves=12,
)  # fmt: skip
EXAMPLE = (SHIPPED / "examples/reference/t10k-0000-ankle-boot.png").read_bytes()
PNGS = st.just(base64.b64encode(EXAMPLE).decode()) | st.sampled_from(
    [base64.b64encode(EXAMPLE[:60]).decode(), "!"]
)
INTS = st.integers(-2, 10) | st.sampled_from([2**31, 2**63, -(2**63)]) | st.text("0123456789-", max_size=20)
LANGEVIN = st.fixed_dictionaries(
    {}, optional={"steps": st.integers(0, 9) | INTS, "step_size": st.floats(), "noise": SCALARS}
)
SYNTHESIZE = st.fixed_dictionaries(
    {"count": st.integers(1, 4) | INTS},
    optional={"seed": INTS, "langevin": LANGEVIN, "format": st.sampled_from([0, 1, 2, 9, "x"])},
)
OCCLUSIONS = st.sampled_from(["center:12", "m40", "blocks", "random:0.5", "random:2", "center:99", "", "?"])
COMPLETE = st.fixed_dictionaries(
    {"image": st.fixed_dictionaries({"png": PNGS})},
    optional={"occlusion": OCCLUSIONS, "mask": st.fixed_dictionaries({"png": PNGS}), "seed": INTS,
              "latent_steps": INTS, "refine_steps": INTS, "restarts": INTS, "residual_interpolant": SCALARS},
)  # fmt: skip
ENERGY = st.fixed_dictionaries({"images": st.lists(st.fixed_dictionaries({"png": PNGS}), max_size=6)})
STREAM = st.fixed_dictionaries({"request": SYNTHESIZE}, optional={"snapshot_every": INTS})
SHAPED = {"/api/synthesize": SYNTHESIZE, "/api/complete": COMPLETE, "/api/energy": ENERGY,
          "/api/synthesize/stream": STREAM}  # fmt: skip
STATUSES: Counter = Counter()


@pytest.fixture(scope="module")
def small_server(serving_bundle, serving_engine):
    server = local_server(serving_bundle, engine=serving_engine, http_port=0, max_count=4, max_steps=8)
    yield server
    print(f"\nfuzz: the page's API answered {dict(sorted(STATUSES.items()))}")
    assert server.stop(), server.log()
    assert "Traceback" not in server.log() and " failed" not in server.log(), server.log()


@pytest.mark.slow
@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(case=st.sampled_from(list(SHAPED)).flatmap(lambda p: st.tuples(st.just(p), SHAPED[p] | BODIES)))
def test_fuzzed_bodies_are_answered_never_500(small_server, case):
    path, body = case
    status, headers, answer = call(small_server.http_url + path, json.dumps(body).encode())
    STATUSES[status] += 1
    assert status in (200, 400), (status, answer)
    if status == 400:
        assert json.loads(answer)["field"]
    elif path.endswith("stream"):
        assert events(answer)[-1][0] == "end"
    else:
        json.loads(answer)


# ---- in a browser ------------------------------------------------------------------------------------------


def _chromium_or_reason() -> tuple[str, str] | str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[test]'"
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        return "no Chromium and chromedriver here: apt-get install chromium chromium-driver (.ci/run does)"
    return browser, driver


CHROMIUM_ARGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--force-color-profile=srgb", "--force-device-scale-factor=1", "--window-size=1200,1000",
)  # fmt: skip
# Counts the progress bar's values as the page shows them
RECORD_PROGRESS = """
window.shown = [];
new MutationObserver(() => shown.push(document.getElementById("progress").value))
  .observe(document.getElementById("progress-text"), { childList: true, subtree: true });
"""
UNLABELLED = (
    "return [...document.querySelectorAll('input, select')].filter(e => !e.labels.length).map(e => e.id)"
)


@pytest.fixture(scope="module")
def browser():
    found = _chromium_or_reason()
    if isinstance(found, str):
        pytest.skip(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    # --no-sandbox: CI runs as root in a container; sRGB and scale 1: the page's pixels are the PNGs' own
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(found[1]))
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def serve(tmp_path_factory, bundle: str):
    return start_server(bundle, tmp_path_factory.mktemp(f"page-{bundle}"), "--http-port", "0", token=TOKEN)


@pytest.fixture(scope="module")
def reference_server(tmp_path_factory):
    server = serve(tmp_path_factory, "reference")
    yield server
    assert server.stop() == 0, server.log()


@pytest.fixture(scope="module")
def cifar_server(tmp_path_factory):
    server = serve(tmp_path_factory, "cifar10")
    yield server
    assert server.stop() == 0, server.log()


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def until(driver, script: str, timeout: float = 120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(script))


def view_state(driver, view: str, timeout: float = 120) -> str:
    """Waits until the view has finished (done, stopped or error) and returns how."""
    return until(driver, f"const s = document.getElementById('{view}').dataset.state; return s !== 'running' "
                 "&& s !== 'idle' && s", timeout)  # fmt: skip


def open_page(driver, server) -> None:
    """Loads the page, which asks for the token, and types it in."""
    from selenium.webdriver.common.by import By

    driver.get(server.http_url + "/")
    js(driver, "sessionStorage.clear()")
    driver.refresh()
    until(driver, "return document.getElementById('model').textContent.includes('token')")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#token-form button").click()
    until(driver, "return document.body.dataset.ready === 'true'")


# The pixels of <img> and <canvas> elements as the browser decoded them: RGBA, drawn unscaled on a canvas
READ_PIXELS = """
const [selector, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const out = [];
  for (const el of document.querySelectorAll(selector)) {
    if (el.tagName === "IMG") await el.decode();
    const w = el.naturalWidth || el.width, h = el.naturalHeight || el.height;
    const c = Object.assign(document.createElement("canvas"), { width: w, height: h });
    const ctx = c.getContext("2d");
    ctx.drawImage(el, 0, 0);
    out.push({ w, h, rgba: Array.from(ctx.getImageData(0, 0, w, h).data) });
  }
  done(out);
})().catch((e) => done(String(e)));
"""


def pixels(driver, selector: str) -> list[np.ndarray]:
    """(H, W, 4) uint8 per element matching `selector`."""
    found = driver.execute_async_script(READ_PIXELS, selector)
    assert isinstance(found, list), found
    return [np.array(p["rgba"], np.uint8).reshape(p["h"], p["w"], 4) for p in found]


def as_chw(rgba: np.ndarray, channels: int) -> np.ndarray:
    """The model's (C, H, W) uint8 from the browser's RGBA: a grey PNG decodes as R = G = B."""
    if channels == 1:
        assert (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all()
    return rgba[..., :channels].transpose(2, 0, 1)


def sample_in_page(driver, count: int, seed: int, steps: int) -> list[str]:
    """Generates a grid, recording every step the progress bar shows; returns those steps."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "tab-sample").click()
    for name, value in (("count", count), ("seed", seed), ("steps", steps)):
        field = driver.find_element(By.ID, name)
        field.clear()
        field.send_keys(str(value))
    js(driver, RECORD_PROGRESS)
    driver.find_element(By.ID, "generate").click()
    assert view_state(driver, "sample") == "done", driver.find_element(By.ID, "progress-text").text
    return js(driver, "return window.shown")


def assert_grid_is_grpcs(driver, server, count: int, seed: int, steps: int) -> None:
    from selenium.webdriver.common.by import By

    with server.client(timeout=120) as c:
        expected = c.synthesize(count=count, seed=seed, steps=steps)  # exact float32 tensors
    captions = [f.text for f in driver.find_elements(By.CSS_SELECTOR, "#grid figcaption")]
    assert captions == [f"seed {seed + i}" for i in range(count)]  # image i is seed + i, as gRPC's
    shown = np.stack([as_chw(p, expected.images.shape[1]) for p in pixels(driver, "#grid img")])
    # Exact: the page shows the PNG the server encoded with codec.to_uint8, rint((x + 1) * 127.5) clipped to
    # [0, 255], of the same float32 images gRPC sends (the same seed gives the same bits over either
    # protocol), and a PNG decodes losslessly; so the tolerance is zero, not one grey level.
    np.testing.assert_array_equal(shown, to_uint8(expected.images))


@pytest.mark.slow
def test_the_token_the_bundle_the_keyboard_and_a_phone(browser, reference_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_page(browser, reference_server)
    model = browser.find_element(By.ID, "model").text
    assert model.startswith("reference") and "grey 28×28" in model and "Langevin 15 steps" in model
    assert browser.find_element(By.ID, "steps").get_attribute("value") == "15"  # the bundle's default
    tab = browser.find_element(By.ID, "tab-sample")
    tab.send_keys(Keys.ARROW_RIGHT)  # tabs move with the arrow keys and take the focus
    assert browser.switch_to.active_element == browser.find_element(By.ID, "tab-complete")
    assert browser.find_element(By.ID, "complete").is_displayed()
    assert not browser.find_element(By.ID, "sample").is_displayed()
    browser.switch_to.active_element.send_keys(Keys.END)
    assert browser.find_element(By.ID, "energy").is_displayed()
    assert js(browser, UNLABELLED) == []
    browser.set_window_size(390, 844)  # a phone: nothing wider than the screen
    try:
        browser.find_element(By.ID, "tab-sample").click()
        assert js(browser, "return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        browser.set_window_size(1200, 1000)


@pytest.mark.slow
def test_a_sampled_grid_has_grpcs_pixels_and_shows_every_step(browser, reference_server):
    open_page(browser, reference_server)
    shown = sample_in_page(browser, count=6, seed=424242, steps=5)
    # the progress bar went through every Langevin step, in order (the summary at the end repeats the last)
    assert shown == sorted(shown) and sorted(set(shown)) == [0, 1, 2, 3, 4, 5], shown
    assert_grid_is_grpcs(browser, reference_server, 6, 424242, 5)


def drawn_hole(driver) -> np.ndarray:
    """The hole as the drawing canvas shows it (H, W) 0/1: tinted red, where R exceeds G by far."""
    (rgba,) = pixels(driver, "#draw")
    return (rgba[..., 0].astype(int) - rgba[..., 1] > 100).astype(np.float32)


def stroke(driver, kind: str, start: tuple[int, int], moves: list[tuple[int, int]]) -> None:
    """A mouse or touch stroke on the drawing canvas, offsets in CSS pixels from its centre."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "draw")
    actions = ActionBuilder(driver, mouse=PointerInput(kind, kind))
    actions.pointer_action.move_to(canvas, *start).pointer_down()
    for dx, dy in moves:
        actions.pointer_action.move_by(dx, dy)
    actions.pointer_action.pointer_up()
    actions.perform()


@pytest.mark.slow
def test_a_hole_drawn_with_mouse_and_finger_is_completed_as_grpc_completes_it(browser, reference_server):
    from selenium.webdriver.common.by import By

    open_page(browser, reference_server)
    browser.find_element(By.ID, "tab-complete").click()
    example = SHIPPED / "examples/reference/t10k-0000-ankle-boot.png"
    browser.find_element(By.CSS_SELECTOR, f'[data-example="{example.stem}"]').click()
    until(browser, "return document.getElementById('draw').width === 28")
    side = browser.find_element(By.ID, "draw").size["width"]  # CSS pixels for 28 model pixels
    stroke(browser, "mouse", (-side // 4, 0), [(side // 8, 0)] * 4)  # across the middle row
    stroke(browser, "touch", (0, -side // 3), [(0, side // 6)] * 2)  # down the middle column, by finger
    hole = drawn_hole(browser)
    assert hole[14, 8:20].all() and hole[4:10, 14].all(), hole  # both strokes made the hole
    assert not hole[:, :5].any() and not hole[25:].any()  # and nothing else
    browser.find_element(By.ID, "complete-run").click()
    assert view_state(browser, "complete") == "done", browser.find_element(By.ID, "complete-status").text
    original = np.asarray(Image.open(example))  # the file, not what the page says it sent
    (recovered,) = pixels(browser, "#out-recovered")
    recovered = as_chw(recovered, 1)[0]
    observed = hole == 0
    np.testing.assert_array_equal(recovered[observed], original[observed])  # observed pixels unchanged
    assert (recovered[~observed] != original[~observed]).any()  # and the hole was filled anew
    with reference_server.client(timeout=120) as c:
        expected = c.complete(example.read_bytes(), mask=hole, seed=0)  # the page's seed
    np.testing.assert_array_equal(recovered, to_uint8(expected.recovered)[0])
    browser.find_element(By.ID, "show-diff").click()  # the toggle: zero outside the hole
    text = browser.find_element(By.ID, "diff-text")
    assert text.is_displayed() and text.get_attribute("data-max-outside") == "0"
    assert int(text.get_attribute("data-observed")) == observed.sum()
    (diff,) = pixels(browser, "#out-diff")
    assert not diff[observed, :3].any() and diff[~observed, :3].any()


@pytest.mark.slow
def test_a_named_occlusion_is_the_servers(browser, reference_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(browser, reference_server)
    browser.find_element(By.ID, "tab-complete").click()
    browser.find_element(By.CSS_SELECTOR, '[data-example="t10k-0001-pullover"]').click()
    Select(browser.find_element(By.ID, "occlusion")).select_by_value("center:12")
    browser.find_element(By.ID, "complete-run").click()
    assert view_state(browser, "complete") == "done", browser.find_element(By.ID, "complete-status").text
    np.testing.assert_array_equal(drawn_hole(browser), occlusion_mask("center:12", (1, 28, 28), 0)[0])
    assert browser.find_element(By.ID, "diff-text").get_attribute("data-max-outside") == "0"


@pytest.mark.slow
def test_stop_cancels_the_synthesis_on_the_server(browser, reference_server):
    from selenium.webdriver.common.by import By

    open_page(browser, reference_server)
    labels = {"rpc": "http/SynthesizeStream", "stage": "running"}
    before = reference_server.metric("coopnets_cancelled_total", **labels)
    for name, value in (("count", 16), ("steps", 1000)):
        browser.find_element(By.ID, name).clear()
        browser.find_element(By.ID, name).send_keys(str(value))
    browser.find_element(By.ID, "generate").click()
    until(browser, "return document.getElementById('progress').value >= 2")  # steps are coming in
    browser.find_element(By.ID, "stop").click()
    assert view_state(browser, "sample") == "stopped"
    assert "stopped after step" in browser.find_element(By.ID, "progress-text").text
    assert wait_for(lambda: reference_server.metric("coopnets_cancelled_total", **labels) > before, 30)
    steps = re.findall(r"http/SynthesizeStream stopped after (\d+) Langevin steps", reference_server.log())
    assert steps and int(steps[-1]) < 1000, reference_server.log()[-2000:]
    assert browser.find_element(By.ID, "generate").is_enabled()


def energy_in_page(driver, example: str) -> tuple[float, float, str]:
    """(energy, ood, ood as shown) for an example image picked in the Energy view."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "tab-energy").click()
    driver.find_element(By.CSS_SELECTOR, f'#energy-examples [data-example="{example}"]').click()
    assert view_state(driver, "energy") == "done", driver.find_element(By.ID, "energy-status").text
    energy = driver.find_element(By.CSS_SELECTOR, "#energy-result dd").get_attribute("data-value")
    ood = driver.find_element(By.ID, "ood-value")
    threshold = driver.find_element(By.ID, "ood-threshold").text
    assert threshold.startswith("1 (5% false alarms on 2000 calibration images")  # ModelInfo.ood, shipped
    return float(energy), float(ood.get_attribute("data-value")), ood.text


def assert_energy_is_grpcs(driver, server, folder: str, example: str) -> None:
    energy, ood, shown = energy_in_page(driver, example)
    with server.client(timeout=120) as c:
        expected = c.energies([(SHIPPED / "examples" / folder / f"{example}.png").read_bytes()])
    # float32 over both protocols: the JSON number is the float32's shortest repr, the same float32 again
    assert np.float32(energy) == expected.energy[0] and np.float32(ood) == expected.ood[0]
    assert abs(float(shown) - expected.ood[0]) <= 5e-4 * max(1.0, abs(expected.ood[0]))  # 4 digits shown


@pytest.mark.slow
def test_the_energy_view_shows_grpcs_score_and_the_threshold(browser, reference_server):
    open_page(browser, reference_server)
    assert_energy_is_grpcs(browser, reference_server, "reference", "t10k-0001-pullover")


@pytest.mark.slow
def test_the_color_bundle_samples_and_scores_as_grpc_does(browser, cifar_server):
    from selenium.webdriver.common.by import By

    open_page(browser, cifar_server)
    assert browser.find_element(By.ID, "model").text.startswith("cifar10 · color 32×32")
    sample_in_page(browser, count=3, seed=77, steps=2)
    assert_grid_is_grpcs(browser, cifar_server, 3, 77, 2)
    assert_energy_is_grpcs(browser, cifar_server, "cifar10", "test-cat-0000")
