"""Headless chromium (Debian's, driven by Playwright) on a written HTML report: the tests
that check what a reader's browser shows share this one way of opening a page."""
import shutil
from contextlib import contextmanager

SKIP_REASON = "needs the playwright package and a chromium (make test installs it: scripts/system-deps.sh)"


def browser():
    """The chromium executable, or None where Playwright or chromium is missing."""
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        return None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def headless_page(path, ready=None, viewport=(1200, 900)):
    """A page on the file at `path`, after the `ready` selector appears when one is given; an
    error on the page (an uncaught exception in its scripts) fails the test once the block ends."""
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=browser(), args=["--no-sandbox", "--headless", "--disable-gpu"])
        try:
            page = chrome.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(path.resolve().as_uri())
            if ready:
                page.wait_for_selector(ready, timeout=60000)
            yield page
        finally:
            chrome.close()
    assert not errors, errors
