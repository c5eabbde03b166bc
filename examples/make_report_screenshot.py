"""Regenerate examples/report_screenshot.png (the README's picture of `vitx inspect`).

Writes the report of the two bundled models with the explorer, opens it in headless
chromium (Playwright's Python package, the system browser), pins a patch in the explorer,
hides the sections the README does not show, and screenshots the page.
Usage: python examples/make_report_screenshot.py [OUT_DIR]
"""
import shutil
import sys
import tempfile
from pathlib import Path

import vitx
from vitx.inspect.inspection import inspect_models

HERE = Path(__file__).parent
KEEP = ("overview", "interactive-explorer", "attention-distance-and-entropy", "training-curves")


def main(out=None):
    from playwright.sync_api import sync_playwright

    out = Path(out or tempfile.mkdtemp())
    images = sorted(str(p) for p in (HERE / "fashion_mnist").glob("*.png"))
    models = {name: vitx.load_model(name) for name in ("fashion_vit", "fashion_deit")}
    path = inspect_models(models, images, out, methods=["rollout", "grad_rollout", "chefer2021"], show=1,
                          interactive=True)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=browser, args=["--no-sandbox", "--headless", "--disable-gpu"])
        page = chrome.new_page(viewport={"width": 1000, "height": 800})
        page.goto(path.resolve().as_uri())
        page.wait_for_selector("#vitx-explorer[data-ready='1']")
        page.evaluate("keep => document.querySelectorAll('section').forEach(s => "
                      "{ if (!keep.includes(s.id)) s.style.display = 'none'; })", list(KEEP))
        panel = page.locator(".vx-panel").first
        panel.locator("select.vx-layer").select_option("1")
        panel.locator("canvas").click(position={"x": 150, "y": 120})
        page.screenshot(path=str(HERE / "report_screenshot.png"), full_page=True)
        chrome.close()
    print(HERE / "report_screenshot.png")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
