"""Open every chapter page of the built site in headless Chromium, offline, and check it.

    python .ci/check_site.py SITE_DIR [--executed build/notebooks] [--screenshot PNG]

The site is served from a local http.server on 127.0.0.1; Chromium gets no other network (its
host names resolve to nothing but 127.0.0.1 and every other connection goes to a proxy that
does not exist), so a page that needs a CDN fails here. Each page is loaded with a virtual-time
budget (scripts such as MathJax run to the end), its DOM is dumped and parsed, and the check
fails unless the page has:

* figures: as many <img> elements with image data as the executed notebook has image outputs
  (at least one);
* outputs: as many output areas as the executed notebook has outputs (at least one);
* no request for a file that the site lacks (a MathJax font, a script);
* typeset maths: a MathJax rendering for every formula and no raw TeX left in the text (no
  ``$``, ``\\(``, ``\\[`` or TeX command outside code), and no MathJax error.

The page's expected counts come from the executed notebook that the site rendered
(``tools/execute_notebooks.py``), so a page rendered without outputs fails.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BUDGET_MS = 30000  # virtual time for a page's scripts: MathJax typesets a chapter in ~2 s
RAW_TEX = re.compile(r"\$|\\\(|\\\[|\\[a-zA-Z]+")  # what is left where typesetting failed
# The hidden MathML that MathJax adds for screen readers (AssistiveMML) names MathJax's TeX
# fonts, which jupyter-server-mathjax does not ship; the visible maths is set in STIX-Web.
UNSHIPPED_FONTS = "/assets/mathjax/fonts/HTML-CSS/TeX/otf/"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("check_site: no chromium on PATH (apt-get install chromium)")


def chromium(url: str, *extra: str) -> str:
    """Load url in a fresh headless Chromium with no network but 127.0.0.1; its stdout."""
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}",
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
               "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>;127.0.0.1",
               f"--virtual-time-budget={BUDGET_MS}", *extra, url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        return done.stdout


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    missing: list[str] = []  # paths a page asked for that the site lacks

    def log_message(self, *args):
        pass

    def send_error(self, code, message=None, explain=None):
        if code == 404 and not self.path.startswith(UNSHIPPED_FONTS):
            QuietHandler.missing.append(self.path)
        super().send_error(code, message, explain)


class Page(HTMLParser):
    """Counts what the check needs in a notebook page's DOM."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []  # (tag, classes) of the open elements
        self.images = 0  # <img src="data:image/...">
        self.outputs = 0  # output areas of code cells
        self.math_sources = 0  # MathJax keeps each formula's TeX in <script type="math/tex">
        self.math_rendered = 0  # MathJax's rendering of a formula
        self.errors = []  # MathJax errors
        self.raw_tex = []  # TeX left in the text of markdown cells

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if tag == "img" and (a.get("src") or "").startswith("data:image/"):
            self.images += 1
        if "jp-OutputArea-output" in classes:
            self.outputs += 1
        if tag == "script" and (a.get("type") or "").startswith("math/tex"):
            self.math_sources += 1
        if classes & {"MathJax", "MathJax_Display", "MathJax_CHTML", "MathJax_SVG"}:
            self.math_rendered += 1
        if classes & {"MathJax_Error", "noError", "merror"}:
            self.errors.append(a.get("title") or tag)
        if tag not in VOID:
            self.stack.append((tag, classes))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):  # tolerate unclosed elements
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        tags = {t for t, _ in self.stack}
        classes = set().union(*(c for _, c in self.stack)) if self.stack else set()
        if not classes & {"jp-RenderedMarkdown", "jp-MarkdownOutput"}:
            return
        if tags & {"script", "style", "code", "pre"} or classes & {"MathJax_Preview"}:
            if "MathJax_Preview" in classes and data.strip():
                self.raw_tex.append(data.strip()[:60])  # a formula still waiting
            return
        for m in RAW_TEX.finditer(data):
            self.raw_tex.append(data[max(0, m.start() - 30):m.end() + 30].strip())


def expected(notebook: Path) -> tuple[int, int, int]:
    """(image outputs, outputs, markdown cells with maths) of an executed notebook."""
    nb = nbformat.read(notebook, as_version=4)
    images = outputs = maths = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            outputs += len(cell.outputs)
            images += sum(any(k.startswith("image/") for k in o.get("data", {}))
                          for o in cell.outputs)
        elif "$" in cell.source:
            maths += 1
    return images, outputs, maths


def check(dom: str, notebook: Path) -> list[str]:
    """What is wrong with one page (empty: nothing)."""
    page = Page()
    page.feed(dom)
    images, outputs, maths = expected(notebook)
    problems = []
    if page.images < max(images, 1):
        problems.append(f"{page.images} figures, the notebook has {images}")
    if page.outputs < max(outputs, 1):
        problems.append(f"{page.outputs} outputs, the notebook has {outputs}")
    if maths and (page.math_sources == 0 or page.math_rendered < page.math_sources):
        problems.append(f"maths not typeset: {page.math_rendered} rendered of "
                        f"{page.math_sources} formulas")
    if page.errors:
        problems.append(f"MathJax errors: {page.errors[:3]}")
    if page.raw_tex:
        problems.append(f"raw TeX in the text ({len(page.raw_tex)}x), e.g. {page.raw_tex[:2]}")
    print(f"    {page.images} figures, {page.outputs} outputs, {page.math_rendered} formulas "
          f"typeset ({page.math_sources} in the page)")
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path)
    parser.add_argument("--executed", type=Path, default=ROOT / "build" / "notebooks")
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="a PNG of the first chapter page, as Chromium shows it")
    parser.add_argument("--screenshot-page", default="05_anchors")
    parser.add_argument("--pages", nargs="*", default=None,
                        help="check only these chapters (notebook names without .ipynb)")
    args = parser.parse_args(argv)

    handler = functools.partial(QuietHandler, directory=str(args.site.resolve()))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    notebooks = [nb for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))
                 if args.pages is None or nb.stem in args.pages]
    failed = []
    for nb in notebooks:
        executed = args.executed / nb.name
        print(f"{nb.stem}:", flush=True)
        if not executed.exists():
            failed.append(nb.stem)
            print(f"  FAIL: no executed copy {executed}")
            continue
        QuietHandler.missing.clear()
        problems = check(chromium(f"{base}/notebooks/{nb.stem}/", "--dump-dom"), executed)
        if QuietHandler.missing:
            problems.append(f"files missing from the site: {sorted(set(QuietHandler.missing))}")
        for p in problems:
            print(f"  FAIL: {p}")
        if problems:
            failed.append(nb.stem)
    if args.screenshot:
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        chromium(f"{base}/notebooks/{args.screenshot_page}/", "--window-size=1280,5000",
                 "--hide-scrollbars", f"--screenshot={args.screenshot.resolve()}")
        print(f"screenshot of {args.screenshot_page}: {args.screenshot}")
    server.shutdown()
    print(f"{len(notebooks) - len(failed)} of {len(notebooks)} chapter pages pass"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
