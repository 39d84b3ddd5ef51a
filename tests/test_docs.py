"""The documentation agrees with the code.

- docs/errors.md and docs/methods.md are what `python -m mergec.docs_gen` writes today;
- every diagnostic code the source raises has an entry in the registry (`mergec explain`);
- every ```merge block of the hand-written docs parses and is in canonical format.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mergec import docs_gen
from mergec.errors import ERRORS
from mergec.lang.fmt import format_text
from mergec.lang.parser import parse

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HAND_WRITTEN = [ROOT / "README.md", DOCS / "language.md", DOCS / "cli.md",
                DOCS / "adapters.md", DOCS / "moe.md"]
CODE_RE = re.compile(r"""["'](E\d{3})["']""")
FENCE_RE = re.compile(r"^```merge[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def merge_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of every ```merge fenced block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE_RE.finditer(text)]


# Generated pages ------------------------------------------------------------------------


def test_generated_docs_are_up_to_date():
    stale = docs_gen.stale(DOCS)
    assert not stale, (f"stale generated docs: {', '.join(p.name for p in stale)}; "
                       "run `make docs` (python -m mergec.docs_gen)")


def test_docs_gen_check_reports_stale_files(tmp_path):
    assert docs_gen.main(["--docs-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.md", "methods.md"]
    assert docs_gen.main(["--check", "--docs-dir", str(tmp_path)]) == 0
    with open(tmp_path / "methods.md", "a", encoding="utf-8") as f:
        f.write("edited by hand\n")
    assert docs_gen.main(["--check", "--docs-dir", str(tmp_path)]) == 1
    (tmp_path / "errors.md").unlink()
    assert [p.name for p in docs_gen.stale(tmp_path)] == ["errors.md", "methods.md"]


def _check_methods_page(text: str) -> None:
    """Every method has a section listing its parameters, and a row in the table."""
    from mergec.methods import METHODS

    assert "| method | inputs | summary |" in text
    for m in METHODS:
        assert f"| [`{m.name}`](#{m.name}) |" in text
        assert f"## `{m.name}`" in text
        section = text.split(f"## `{m.name}`", 1)[1].split("\n## ", 1)[0]
        for p in m.params:
            assert f"| `{p.name}` |" in section, (m.name, p.name)


def test_methods_page_covers_the_registry():
    _check_methods_page(docs_gen.methods_markdown())


def test_methods_page_parity_table_covers_every_method():
    from mergec.methods import METHODS

    text = docs_gen.methods_markdown()
    parity = text.split("## Reproducing other tools", 1)[1]
    assert "(parity.md)" in parity
    for m in METHODS:
        assert f"| [`{m.name}`](#{m.name}) |" in parity, m.name


def test_errors_page_lists_every_code():
    text = (DOCS / "errors.md").read_text(encoding="utf-8")
    for code, (title, _) in ERRORS.items():
        assert f"### {code}: {title}" in text


# Codes in the source --------------------------------------------------------------------


def test_every_code_in_the_source_is_registered():
    used: dict[str, list[str]] = {}
    for path in sorted((ROOT / "mergec").rglob("*.py")):
        for code in CODE_RE.findall(path.read_text(encoding="utf-8")):
            used.setdefault(code, []).append(str(path.relative_to(ROOT)))
    assert used, "no diagnostic codes found in the source"
    missing = {c: sorted(set(files)) for c, files in used.items() if c not in ERRORS}
    assert not missing, f"codes used but not in mergec.errors.ERRORS: {missing}"


def test_every_registered_code_explains(run_cli):
    for code in ERRORS:
        rc, out, _ = run_cli("explain", code)
        assert rc == 0 and out.startswith(f"{code}: "), code


# Recipe blocks in the hand-written docs -------------------------------------------------


def _blocks():
    out = []
    for path in HAND_WRITTEN:
        if path.exists():
            for line, text in merge_blocks(path):
                out.append(pytest.param(path, line, text,
                                        id=f"{path.relative_to(ROOT)}:{line}"))
    return out


def test_language_reference_has_recipe_blocks():
    assert len(merge_blocks(DOCS / "language.md")) >= 10


@pytest.mark.parametrize("path, line, text", _blocks())
def test_doc_recipe_block_parses_and_is_canonical(path, line, text):
    name = f"{path.name}:{line}"
    parse(text, name)  # raises MergecError with diagnostics on a syntax error
    assert format_text(text, name) == text, (
        f"the ```merge block at {path.relative_to(ROOT)}:{line} is not in canonical format; "
        "paste the output of `mergec fmt --stdout` (use ```text for a deliberately "
        "non-canonical example)")
