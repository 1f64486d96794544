"""README and docs show exactly the figures their results files hold (`scripts/render_docs.py`)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("render_docs", ROOT / "scripts" / "render_docs.py")
render_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_docs)


def test_every_figure_table_is_what_its_results_file_renders() -> None:
    """A rerun that changes a results file, or a hand edit inside a table, shows up here: run
    `.venv/bin/python scripts/render_docs.py` and commit what it writes."""
    assert render_docs.stale_regions() == []


def test_every_region_names_a_results_file_and_a_known_kind() -> None:
    names = [
        name
        for path in render_docs.documents()
        for name in re.findall(r"<!-- results:(\S+) -->", path.read_text())
    ]
    assert "summary/table" in names
    for name in names:
        stem, _, kind = name.partition("/")
        assert kind in render_docs.RENDERERS, name
        assert stem == "summary" or (render_docs.RESULTS / f"{stem}.json").is_file(), name


def test_every_region_is_closed() -> None:
    """An unclosed marker would leave its table out of the check above."""
    for path in render_docs.documents():
        text = path.read_text()
        opened = re.findall(r"<!-- results:(\S+) -->", text)
        closed = re.findall(r"<!-- /results:(\S+) -->", text)
        assert opened == closed, path


def test_a_hand_edited_figure_is_found(tmp_path, monkeypatch) -> None:
    """The check compares text, so one changed digit in a table is reported."""
    rendered = render_docs.render_region("bench-0.5b-video8/split")
    doc = tmp_path / "README.md"
    doc.write_text(f"<!-- results:bench-0.5b-video8/split -->\n{rendered.replace('6.70', '6.71')}"
                   "<!-- /results:bench-0.5b-video8/split -->\n")  # fmt: skip
    monkeypatch.setattr(render_docs, "ROOT", tmp_path)
    monkeypatch.setattr(render_docs, "DOCUMENTS", ("README.md",))
    assert render_docs.stale_regions() == ["README.md: bench-0.5b-video8/split"]
    assert render_docs.main([]) == 0 and render_docs.stale_regions() == []


def test_the_summary_has_command_machine_date_and_file_per_row() -> None:
    lines = render_docs.render_region("summary/table").splitlines()[2:]
    assert len(lines) == len(render_docs.SUMMARY)
    for line in lines:
        what, figure, command, machine, date, link = (cell.strip() for cell in line.strip("|").split(" | "))
        assert command.startswith("`") and machine and re.fullmatch(r"\d{4}-\d{2}-\d{2}", date)
        assert re.fullmatch(r"\[[^]]+\]\(docs/results/[^)]+\.json\)", link)


@pytest.mark.parametrize("stem", sorted(render_docs.COMMANDS))
def test_every_known_results_file_has_its_run_facts(stem: str) -> None:
    facts = render_docs.run_facts(stem)
    assert facts["date"] and facts["machine"]


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        render_docs.render_region("bench-0.5b-video8/nonsense")


def test_relative_links_point_at_files() -> None:
    """A newcomer follows README's links: every relative link of README and docs names a file
    or folder of this repository."""
    for path in render_docs.documents():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if not target.startswith(("http://", "https://", "mailto:")):
                assert (path.parent / target).exists(), f"{path.relative_to(ROOT)}: {target}"
