"""The site builder's notebook preparation, on notebooks with saved widget state like the ones `coursekit run`
writes: progress bars become their last line, explorers their first picture and a note; pages get
Colab and Kaggle links without remote badge images; repeated inline scripts are dropped."""
import base64
import os
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import build_site  # noqa: E402

from coursekit import publish  # noqa: E402

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def widget(name, state=None, buffers=None):
    return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": state or {},
            **({"buffers": buffers} if buffers else {})}


def notebook(state, views):
    cells = [{"cell_type": "code", "source": f"cell {i}", "metadata": {}, "execution_count": i,
              "outputs": [{"output_type": "display_data", "metadata": {},
                           "data": {publish.WIDGET_VIEW: {"model_id": v}, "text/plain": "VBox(...)"}},
                          {"output_type": "stream", "name": "stdout", "text": "kept\n"}]}
             for i, v in enumerate(views)]
    return {"cells": cells, "metadata": {"widgets": {publish.WIDGET_STATE: {"state": state}}}, "nbformat": 4,
            "nbformat_minor": 5}


def bar(prefix, done, total):
    return {f"{prefix}a": widget("HBoxModel", {"children": [f"IPY_MODEL_{prefix}b", f"IPY_MODEL_{prefix}c",
                                                            f"IPY_MODEL_{prefix}d"]}),
            f"{prefix}b": widget("HTMLModel", {"value": "training: 100%"}),
            f"{prefix}c": widget("FloatProgressModel", {"value": done, "max": total}),
            f"{prefix}d": widget("HTMLModel", {"value": f"{done}/{total} [00:13&lt;00:00]"})}


def test_progress_bars_explorers_and_links():
    state = {**bar("1", 150, 150), **bar("2", 15, 25),
             "e1": widget("VBoxModel", {"children": ["IPY_MODEL_e2", "IPY_MODEL_e3"]}),
             "e2": widget("IntSliderModel", {"value": 3}),
             "e3": widget("ImageModel", {"format": "png"}, [{"data": PNG, "encoding": "base64", "path": ["value"]}]),
             "f1": widget("VBoxModel", {"children": ["IPY_MODEL_f2"]}), "f2": widget("ButtonModel")}
    page = build_site.prepare(notebook(state, ["1a", "2a", "e1", "f1"]), "units/unit1/01_ddpm_and_ddim.ipynb")
    assert "widgets" not in page["metadata"]
    links, finished, closed, explorer, no_picture = page["cells"]
    assert "Open in Colab" in links["source"] and "![" not in links["source"]
    assert finished["outputs"][0]["text"] == "training: 100% 150/150 [00:13<00:00]\n"
    assert [o.get("text") for o in closed["outputs"]] == ["kept\n"], "an unfinished, closed bar is dropped"
    kinds = [list(o.get("data", {})) or o["output_type"] for o in explorer["outputs"]]
    assert kinds == [["image/png"], ["text/markdown"], "stream"]
    assert explorer["outputs"][0]["data"]["image/png"] == PNG
    assert publish.EXPLORER_NOTE in explorer["outputs"][1]["data"]["text/markdown"]
    assert [list(o.get("data", {})) or o["output_type"] for o in no_picture["outputs"]] == [["text/markdown"], "stream"]


def test_badges_become_plain_links_and_repeated_inline_scripts_go():
    md = "[![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab/x) text"
    assert build_site.plain_badges(md) == "[Open in Colab](https://colab/x) text"
    html = "<head>\n  <script>const A = 1</script>\n<script src='x.js'></script>\n  <script>const A = 1</script>\n</head>"
    assert build_site.once_each_inline_script(html).count("const A = 1") == 1
    assert "x.js" in build_site.once_each_inline_script(html)


def test_the_site_uses_the_executed_notebooks_it_finds_and_executes_none(tmp_path, monkeypatch):
    """With --no-execute (the site workflow, .ci/run) every executed copy is used whatever its age, a missing
    one stops the build, and nothing is executed again."""
    import json
    import subprocess

    import pytest

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"executed something: {a}"))
    build = tmp_path / "build"
    for nb in build_site.notebooks():
        copy = build / nb.relative_to(build_site.ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
        os.utime(copy, (0, 0))       # older than its source: stale, and used all the same
    found = build_site.executed(build, tmp_path / "coursekit", execute=False)
    assert set(found) == set(build_site.notebooks())
    first = next(iter(found.values()))
    first.unlink()
    with pytest.raises(SystemExit, match="run `make test` or `make course` first"):
        build_site.executed(build, tmp_path / "coursekit", execute=False)
