"""Executed notebooks made for reading without a kernel: on the course website, as HTML pages that
work offline, and as the published notebooks the Colab and Kaggle badges open.

An explorer (an ipywidgets panel) cannot run without a kernel, so it becomes its first picture and a
note; a tqdm progress bar becomes its last line of text. `to_html` writes a page that loads nothing
from the network when it is given a local MathJax (`copy_mathjax`): no require.js, no widget manager.
`progress_bar` tells whether an output is a progress bar, which the course's checks use to find long
cells that show none.
"""
from __future__ import annotations

import base64
import copy
import html
import json
import re
import shutil
from pathlib import Path

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
EXPLORER_NOTE = ("This is an interactive explorer: its first picture is shown here. Open the notebook in Jupyter, "
                 "Colab or Kaggle to use it.")
BAR_TEXT = re.compile(r"\[(?:\d+:)?\d\d:\d\d[^\]]*(?:it/s|s/it|\?it/s)\]|\d+%\|")


def progress_bar(output: dict) -> bool:
    """True for a tqdm bar: its text in a stream, or a widget bar as the kernel displayed it (tqdm's
    widget shows the same text as its plain-text form)."""
    text = output.get("text", "") if output.get("output_type") == "stream" else \
        output.get("data", {}).get("text/plain", "")
    return bool(BAR_TEXT.search(text if isinstance(text, str) else "".join(text)))


def _models(state: dict, model_id: str, seen: set) -> list[dict]:
    """The widget `model_id` and every widget under it, in the order the panel shows them."""
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    model = state[model_id]
    refs = re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(model["state"]))
    return [model, *[m for ref in refs for m in _models(state, ref, seen)]]


def _static(models: list[dict]) -> list[dict]:
    """Outputs that stand for a saved widget. A progress bar (tqdm's: text, bar, text in one row) becomes
    its last line of text, or nothing if it was closed unfinished; an explorer becomes its first picture
    (when it shows one before any button is pressed) and a note."""
    if not models:
        return []
    top, names = models[0], [m["model_name"] for m in models]
    if top["model_name"] == "HBoxModel" and any(n in ("FloatProgressModel", "IntProgressModel") for n in names[:6]):
        texts = [html.unescape(re.sub(r"<[^>]+>", "", m["state"].get("value", ""))).strip()
                 for m in models if m["model_name"] == "HTMLModel"]
        count = re.search(r"(\d+)/(\d+)", " ".join(texts))
        if count and int(count.group(1)) < int(count.group(2)):
            return []
        return [{"output_type": "stream", "name": "stderr", "text": " ".join(t for t in texts if t) + "\n"}]
    pngs = [base64.b64decode(b["data"]) for m in models if m["model_name"] == "ImageModel"
            for b in m.get("buffers", []) if b.get("path") == ["value"]]
    shown = [{"output_type": "display_data", "metadata": {}, "data": {"image/png": base64.b64encode(png).decode()}}
             for png in pngs[:1]]
    note = {"output_type": "display_data", "metadata": {}, "data": {"text/markdown": f"*{EXPLORER_NOTE}*"}}
    return shown + [note]


def for_reading(nb: dict) -> dict:
    """A copy of the executed notebook with explorers as their first picture and a note, progress bars as
    their last line, and the widget state dropped (a page of it then loads no widget manager)."""
    nb = copy.deepcopy(nb)
    state = nb.get("metadata", {}).pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb["cells"]:
        if "outputs" not in cell:
            continue
        outputs = []
        for out in cell["outputs"]:
            view = out.get("data", {}).get(WIDGET_VIEW)
            outputs += [out] if view is None else _static(_models(state, view["model_id"], set()))
        cell["outputs"] = outputs
    return nb


MATHJAX_CONFIG = """<script>
window.MathJax = {tex: {inlineMath: [['$', '$'], ['\\\\(', '\\\\)']], displayMath: [['$$', '$$'], ['\\\\[', '\\\\]']],
                        processEscapes: true, processEnvironments: true, tags: 'ams'}};
</script>"""

TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
""" + MATHJAX_CONFIG + """
<script id="MathJax-script" src="{{ resources.mathjax_url }}"></script>
{%- endblock html_head_js_mathjax -%}
"""

CDN_MATHJAX = "https://cdn.jsdelivr.net/npm/mathjax@3.2.2/es5/tex-chtml-full.js"


def to_html(nb: dict, mathjax_url: str = CDN_MATHJAX) -> str:
    """The notebook as one HTML page for reading (`for_reading`), with MathJax 3 from `mathjax_url` (a path
    relative to the page for offline reading, see `copy_mathjax`), and without the scripts nbconvert's
    page loads from the web (require.js, the widget manager, mermaid), which the course does not need."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(extra_loaders=[jinja2.DictLoader({"coursekit.html.j2": TEMPLATE})],
                            template_file="coursekit.html.j2")
    exporter.mathjax_url = mathjax_url
    body, _ = exporter.from_notebook_node(nbformat.from_dict(for_reading(nb)))
    return body


def copy_mathjax(source: str | Path, out: str | Path) -> Path:
    """Copy MathJax 3's es5 folder (from the npm package `mathjax`, as `make course` installs it) to
    `out`/_static/mathjax, once; returns the script pages load."""
    source, target = Path(source), Path(out) / "_static" / "mathjax"
    if not (source / "tex-chtml-full.js").is_file():
        raise FileNotFoundError(f"{source} holds no MathJax 3 (tex-chtml-full.js); run `npm ci --prefix site` "
                                "or leave --mathjax out to load it from the web")
    if not (target / "tex-chtml-full.js").is_file():
        shutil.copytree(source, target, dirs_exist_ok=True)
    return target / "tex-chtml-full.js"
