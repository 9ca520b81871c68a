"""mkdocs hooks (mkdocs.yml, ``hooks:``): the chapters with their outputs, maths without a CDN.

* A chapter page renders ``build/notebooks/<name>.ipynb``, the copy that
  ``tools/execute_notebooks.py`` ran (CI runs it as the notebook test), when that copy exists
  and has the same cells as ``notebooks/<name>.ipynb``; otherwise the stored notebook, without
  outputs (a local ``mkdocs serve`` runs nothing, and never shows outputs of an older text).
* MathJax 2 comes from the ``jupyter-server-mathjax`` package (the ``docs`` extra) and is
  copied into the site under ``assets/mathjax/``, where ``custom_mathjax_url`` points: the
  maths is typeset with no network access.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import nbformat
from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parent.parent
EXECUTED = ROOT / "build" / "notebooks"
MATHJAX_DIR = "assets/mathjax"  # custom_mathjax_url in mkdocs.yml points here
# config/retina_np.js, loaded after the combined configuration (custom_mathjax_url's
# ``config=``): the package ships the STIX-Web web fonts only, and MathJax would first look for
# its TeX fonts (a 404, then the reader's local fonts); the fast preview also wants TeX fonts.
# (The hidden MathML for screen readers still names them: .ci/check_site.py lets that pass.)
MATHJAX_CONFIG = """MathJax.Hub.Config({
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web", imageFont: null,
               linebreaks: {automatic: true}},
  "fast-preview": {disabled: true},
  menuSettings: {CHTMLpreview: false}
});
MathJax.Ajax.loadComplete("[MathJax]/config/retina_np.js");
"""

log = logging.getLogger("mkdocs.hooks.retina_np")


def _sources(path: Path) -> list[tuple[str, str]]:
    nb = nbformat.read(path, as_version=4)
    return [(cell.cell_type, cell.source) for cell in nb.cells]


@event_priority(-100)  # after mkdocs-jupyter has wrapped the notebook files
def on_files(files, config):
    used = 0
    for file in files:
        if not file.src_uri.startswith("notebooks/") or not file.src_uri.endswith(".ipynb"):
            continue
        executed = EXECUTED / Path(file.src_uri).name
        if not executed.exists():
            continue
        if _sources(executed) != _sources(Path(file.abs_src_path)):
            log.info("not using %s: the stored notebook has changed since it ran "
                        "(python tools/execute_notebooks.py)", executed)
            continue
        file.abs_src_path = str(executed)
        used += 1
    log.info("chapters with outputs: %d executed copies from %s", used, EXECUTED)
    return files


def on_post_build(config):
    import jupyter_server_mathjax

    source = Path(jupyter_server_mathjax.__file__).parent / "static"
    target = Path(config["site_dir"]) / MATHJAX_DIR
    shutil.copytree(source, target, dirs_exist_ok=True)
    (target / "config" / "retina_np.js").write_text(MATHJAX_CONFIG)
