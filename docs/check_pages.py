"""Open every page of the built docs in a headless browser; fail when something is cut off or the layout breaks.

    python docs/check_pages.py [BUILD_DIR] [--chromium PATH] [--screenshots DIR]

The ``docs`` nox session runs it after ``sphinx-build``. The pages are served from ``BUILD_DIR`` (default
``docs/_build``) over HTTP on 127.0.0.1 and opened in Chromium through Playwright, in a 1280 px wide window and in a
390 px wide one (a phone). On every page, at both widths, it fails when

- an element's content is wider than its box and the overflow is hidden (cut off),
- an element scrolls sideways without a visible scrollbar (the reader cannot tell that there is more),
- something runs past the right edge of the main content without a scrolling box around it,
- the page itself scrolls sideways, or the main content is narrower than a readable minimum.

Scrollbars are kept visible (Playwright hides them by default), so a table that scrolls inside its box shows that
it does. Screenshots of a few key pages at both widths are written to ``BUILD_DIR/screenshots``.

Chromium is the system's (Debian: ``apt-get install chromium``); ``playwright install`` is not needed.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import pathlib
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

DOCS = pathlib.Path(__file__).resolve().parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass(frozen=True)
class Width:
    name: str
    width: int
    height: int
    min_main: int  # the main content must be at least this wide (px)


WIDTHS = (Width("desktop", 1280, 900, 600), Width("phone", 390, 844, 330))
# pages to photograph: (page, CSS selector of an element to photograph on its own, or None)
SCREENSHOTS = (
    ("index.html", None),
    ("guide/from_accelerate.html", "table"),
    ("guide/launching.html", "div.highlight"),
    ("cli.html", None),
    ("api/fabric_core.html", "dl.py.class"),
)

# Runs in the page: scroll the element to the top of the window, below the theme's sticky header on phones (at once:
# the theme scrolls smoothly, and a screenshot taken during the animation shows the page half-way)
SCROLL_TO = "el => window.scrollTo({top: el.getBoundingClientRect().top + window.scrollY - 70, behavior: 'instant'})"

# Runs in the page: the problems of the page as lines of text (empty when it is fine).
CHECK_PAGE = """
(minMain) => {
  const problems = [];
  const main = document.querySelector('article[role="main"]') || document.querySelector('article') || document.body;
  const mainBox = main.getBoundingClientRect();
  // the column around the text, with its padding: headings and signatures reach a few px into it by design
  const column = (main.closest('.content') || main).getBoundingClientRect();
  if (mainBox.width < minMain) {
    problems.push(`the main content is ${Math.round(mainBox.width)} px wide (less than ${minMain} px)`);
  }
  const pageWidth = document.documentElement.scrollWidth;
  if (pageWidth > window.innerWidth + 1) {
    problems.push(`the page scrolls sideways: ${pageWidth} px wide in a ${window.innerWidth} px window`);
  }
  const describe = (el) => {
    const classes = el.classList.length ? '.' + Array.from(el.classList).join('.') : '';
    const text = (el.innerText || el.textContent || '').replace(/\\s+/g, ' ').trim().slice(0, 70);
    const section = el.closest('section[id]');
    return `<${el.tagName.toLowerCase()}${classes}>${section ? ' in #' + section.id : ''}: "${text}"`;
  };
  const scrolls = (el) => ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
  const barVisible = (el) => {
    const style = getComputedStyle(el);
    const borders = parseFloat(style.borderTopWidth) + parseFloat(style.borderBottomWidth);
    return el.offsetHeight - el.clientHeight - borders >= 6;
  };
  const insideScroller = (el) => {
    for (let node = el.parentElement; node && node !== main; node = node.parentElement) {
      if (scrolls(node)) return true;
    }
    return false;
  };
  const reported = new Set();
  const report = (el, message) => {
    for (let node = el.parentElement; node; node = node.parentElement) {
      if (reported.has(node)) return;  // the outermost element says it already
    }
    reported.add(el);
    problems.push(`${message}: ${describe(el)}`);
  };
  for (const el of main.querySelectorAll('*')) {
    const style = getComputedStyle(el);
    if (style.display === 'none' || style.display === 'inline' || el.clientWidth === 0) continue;
    if (el.scrollWidth > el.clientWidth + 1) {
      if (style.overflowX === 'hidden' || style.overflowX === 'clip') {
        report(el, `cut off (${el.scrollWidth - el.clientWidth} px hidden, overflow ${style.overflowX})`);
        continue;
      }
      if (scrolls(el) && !barVisible(el)) {
        report(el, `scrolls sideways without a visible scrollbar (${el.scrollWidth - el.clientWidth} px more)`);
        continue;
      }
    }
  }
  for (const el of main.querySelectorAll('*')) {
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.right <= column.right + 1 || insideScroller(el)) continue;
    report(el, `runs ${Math.round(box.right - column.right)} px past the right edge of the content column`);
  }
  return problems;
}
"""


def pages(build: pathlib.Path) -> list[str]:
    """Every HTML page of the build, as paths relative to it (the theme's and Sphinx's own folders left out)."""
    skip = {"_static", "_sources", "_images", "_modules", "screenshots"}
    found = [p.relative_to(build).as_posix() for p in build.rglob("*.html")]
    return sorted(p for p in found if p.split("/")[0] not in skip)


@contextmanager
def serve(build: pathlib.Path) -> Iterator[str]:
    """Serve ``build`` on a free port of 127.0.0.1 from a thread; yield its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(build)))
    thread = threading.Thread(target=server.serve_forever, name="docs-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def find_chromium(given: str | None) -> str:
    candidates = [given] if given else ["/usr/bin/chromium", "chromium", "chromium-browser"]
    for candidate in candidates:
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    raise SystemExit(
        f"check_pages: no Chromium found (looked for {', '.join(str(c) for c in candidates)}). Install it"
        " (Debian/Ubuntu: apt-get install chromium) or pass --chromium PATH."
    )


def check(build: pathlib.Path, chromium: str, screenshots: pathlib.Path) -> int:
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        raise SystemExit("check_pages: Playwright is not installed. Run: pip install playwright") from None
    names = pages(build)
    if not names:
        raise SystemExit(f"check_pages: no HTML pages under {build}; run sphinx-build first")
    wanted = [page for page, _ in SCREENSHOTS]
    missing = [page for page in wanted if page not in names]
    if missing:
        raise SystemExit(f"check_pages: pages to photograph are missing from the build: {', '.join(missing)}")
    screenshots.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    started = time.perf_counter()
    with serve(build) as base, sync_playwright() as playwright:
        # Playwright hides scrollbars by default; a reader sees them, and so must the check
        browser = playwright.chromium.launch(
            executable_path=chromium, args=CHROMIUM_ARGS, ignore_default_args=["--hide-scrollbars"]
        )
        try:
            for width in WIDTHS:
                context = browser.new_context(viewport={"width": width.width, "height": width.height})
                page = context.new_page()
                for name in names:
                    response = page.goto(base + name, wait_until="load")
                    if response is None or not response.ok:
                        failures.append(f"{name} ({width.width} px): HTTP {response.status if response else 'none'}")
                        continue
                    for problem in page.evaluate(CHECK_PAGE, width.min_main):
                        failures.append(f"{name} ({width.width} px): {problem}")
                for name, selector in SCREENSHOTS:
                    page.goto(base + name, wait_until="load")
                    stem = name.removesuffix(".html").replace("/", "-")
                    page.screenshot(path=str(screenshots / f"{stem}-{width.width}.png"))
                    if selector is not None:  # the window scrolled to the element, as a reader sees it
                        # (without the theme's "back to top" button, which a jump down makes float over the text)
                        page.add_style_tag(content=".back-to-top { display: none !important; }")
                        page.locator(selector).first.evaluate(SCROLL_TO)
                        page.screenshot(path=str(screenshots / f"{stem}-{width.width}-detail.png"))
                context.close()
        finally:
            browser.close()
    elapsed = time.perf_counter() - started
    shots = sorted(p.relative_to(build).as_posix() for p in screenshots.glob("*.png"))
    print(f"check_pages: {len(names)} pages at {', '.join(str(w.width) for w in WIDTHS)} px in {elapsed:.1f} s")
    print(f"check_pages: {len(shots)} screenshots in {screenshots}: {', '.join(p.split('/')[-1] for p in shots)}")
    if failures:
        print(f"check_pages: {len(failures)} problems:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    print("check_pages: nothing cut off, layout intact")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("build", nargs="?", type=pathlib.Path, default=DOCS / "_build", help="the HTML build")
    parser.add_argument("--chromium", default=None, help="the Chromium executable (default: /usr/bin/chromium)")
    parser.add_argument("--screenshots", type=pathlib.Path, default=None, help="default: BUILD/screenshots")
    args = parser.parse_args(argv)
    build = args.build.resolve()
    return check(build, find_chromium(args.chromium), args.screenshots or build / "screenshots")


if __name__ == "__main__":
    sys.exit(main())
