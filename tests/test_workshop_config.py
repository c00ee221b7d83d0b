"""The workshop notebooks, Binder and `make demo` agree: what nbval runs is what users get."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def installed_kernelspecs(text: str) -> set[str]:
    return set(re.findall(r"jupyter tt kernelspec install .*?--name (\S+)", text))


def test_binder_and_make_demo_install_the_generic_kernelspec_whose_devices_are_picked_in_jupyterlab():
    for where in (ROOT / "binder" / "postBuild", ROOT / "Makefile"):
        assert re.search(r"jupyter tt kernelspec install --sys-prefix --generic", where.read_text()), where


def test_there_are_four_workshop_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebooks_kernel_is_installed_by_binder_and_by_make_demo(path):
    kernel = json.loads(path.read_text())["metadata"]["kernelspec"]["name"]
    assert kernel in installed_kernelspecs((ROOT / "binder" / "postBuild").read_text())
    assert kernel in installed_kernelspecs((ROOT / "Makefile").read_text())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_is_stored_run_top_to_bottom_with_its_outputs(path):
    """nbval compares against the stored outputs: a notebook saved unexecuted would check nothing."""
    notebook = json.loads(path.read_text())
    code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert [cell["execution_count"] for cell in code] == list(range(1, len(code) + 1))
    with_output = [cell for cell in code if cell["outputs"]]
    assert len(with_output) >= len(code) - 2, "most cells print something to check"
    assert not any(o["output_type"] == "error" for cell in code for o in cell["outputs"])
    assert "widgets" not in notebook["metadata"], "clear the saved widget state (it changes on every run)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_nbval_marker_in_a_notebook_is_one_nbval_honours(path):
    """nbval takes a comment as a marker only when the comment is exactly the marker: with any text after
    it (`# NBVAL_IGNORE_OUTPUT (why)`) it is an ordinary comment, and the cell's output is compared."""
    from nbval.plugin import find_comment_markers, metadata_tags

    for index, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        for line in "".join(cell["source"]).splitlines():
            if "nbval" in line.lower() and line.strip().startswith("#"):
                assert list(find_comment_markers(line)), (
                    f"cell {index}: {line.strip()!r} is not a marker nbval honours: put the marker alone on its line"
                    " and the reason on the next comment line"
                )
        for tag in cell["metadata"].get("tags", []):
            if tag.startswith("nbval"):
                assert tag in metadata_tags, f"cell {index}: tag {tag!r} is not one of nbval's: {sorted(metadata_tags)}"


def test_the_marker_check_sees_a_marker_with_text_after_it():
    """The check above can fail: a marker with its reason on the same line is no marker to nbval."""
    from nbval.plugin import find_comment_markers

    assert list(find_comment_markers("# NBVAL_IGNORE_OUTPUT")) == [("check", False)]
    assert list(find_comment_markers("# NBVAL_IGNORE_OUTPUT (a widget)")) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_stored_output_opens_as_a_widgets_raw_text(path):
    """Stored without widget state, a widget's output would show its repr (``BenchmarkWidget(children=...``)."""
    for cell in json.loads(path.read_text())["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = "".join(data.get("text/plain", ""))
            assert "application/vnd.jupyter.widget-view+json" not in data
            assert not re.match(r"\w+\(children=", text), f"{path.name}: {text[:80]}"
