"""Retakes the screenshots of the page at `/` (docs/page-sample.png, docs/page-complete.png,
docs/page-energy.png) with headless Chromium against a real coop-serve on loopback.

    .venv/bin/python scripts/screenshots.py [--bundle cifar10] [--out docs]

Needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver) and selenium (the
[test] extra). The server is coop-serve in a child process (bench/spawn.py) with `--http-port 0`; the views
are driven as a user would: a seeded grid, an example image with a hole drawn by mouse then completed with the
difference view on, an example scored.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 1000  # CSS pixels; the README shows the three side by side, docs/serving.md one by one
# --no-sandbox: root in a container; sRGB at scale 1: the model's pixels as they are, enlarged in CSS only
ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-color-profile=srgb",
        "--force-device-scale-factor=1")  # fmt: skip


def load_spawn():
    """bench/spawn.py (coop-serve in a child process), loaded from its file as the tests load it."""
    spec = importlib.util.spec_from_file_location("spawn", ROOT / "bench" / "spawn.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["spawn"] = module
    spec.loader.exec_module(module)
    return module


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium") or shutil.which("google-chrome"), shutil.which("chromedriver")
    if not browser or not driver:
        raise SystemExit("no chromium or chromedriver: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (*ARGS, f"--window-size={WIDTH},900"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver))


def until(driver, script: str, timeout: float = 300) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(script))


def finished(driver, view: str) -> None:
    until(driver, f"return ['done', 'error'].includes(document.getElementById('{view}').dataset.state)")
    state = driver.execute_script(f"return document.getElementById('{view}').dataset.state")
    if state != "done":
        raise SystemExit(f"the {view} view ended in {state}: see the server log")


def shoot(driver, path: Path) -> None:
    """The whole page (its full height at WIDTH), as an optimised PNG."""
    bottom = "return Math.ceil(document.querySelector('main').getBoundingClientRect().bottom)"
    height = driver.execute_script(bottom) + 16
    metrics = {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    image.save(path, optimize=True)
    print(f"wrote {path} ({image.width}x{image.height}, {path.stat().st_size // 1024} KiB)")


def sample(driver, out: Path) -> None:
    from selenium.webdriver.common.by import By

    for name, value in (("count", 16), ("seed", 2024)):
        driver.find_element(By.ID, name).clear()
        driver.find_element(By.ID, name).send_keys(str(value))
    driver.find_element(By.ID, "generate").click()
    finished(driver, "sample")
    shoot(driver, out / "page-sample.png")


def complete(driver, out: Path, example: int) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "tab-complete").click()
    driver.find_elements(By.CSS_SELECTOR, "#complete-examples button")[example].click()
    canvas = driver.find_element(By.ID, "draw")
    until(driver, "return document.getElementById('draw').width > 0")
    side = canvas.size["width"]
    strokes = (
        ActionChains(driver).move_to_element_with_offset(canvas, -side // 4, -side // 10).click_and_hold()
    )
    for _ in range(4):
        strokes = strokes.move_by_offset(side // 8, side // 20)
    strokes.release().perform()
    driver.find_element(By.ID, "complete-run").click()
    finished(driver, "complete")
    driver.find_element(By.ID, "show-diff").click()
    shoot(driver, out / "page-complete.png")


def energy(driver, out: Path, example: int) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "tab-energy").click()
    driver.find_elements(By.CSS_SELECTOR, "#energy-examples button")[example].click()
    finished(driver, "energy")
    shoot(driver, out / "page-energy.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--bundle", default="cifar10", help="a shipped name or a bundle directory (default cifar10)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--example", type=int, default=3, help="which example image to complete and score")
    args = p.parse_args()
    spawn = load_spawn()
    with tempfile.TemporaryDirectory() as work:
        server = spawn.spawn(args.bundle, Path(work), "--http-port", "0", "--metrics-port", "-1")
        driver = None
        try:
            spawn.wait_serving(server.address)
            driver = chromium()
            driver.get(server.http_url + "/")
            until(driver, "return document.body.dataset.ready === 'true'")
            sample(driver, args.out)
            complete(driver, args.out, args.example)
            energy(driver, args.out, args.example)
        finally:
            if driver is not None:
                driver.quit()
            server.stop()


if __name__ == "__main__":
    main()
