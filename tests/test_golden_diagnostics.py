"""Golden tests of the diagnostics users see.

Every ``tests/golden/cases/NAME.merge`` is a recipe with one or more mistakes. It is run
with ``mergec check`` and ``mergec build --out-dir OUT`` from a temporary folder that holds
the recipe next to ``ckpt/`` (the synthetic checkpoint family). Both must exit with code 1,
print nothing on stdout, print exactly ``NAME.expected`` on stderr (the temporary folder
written as ``<tmp>``), and create no output folder.

``NAME.args`` (optional) holds extra command-line arguments, one per line; ``NAME.exit``
(optional) the expected exit code when it is not 1 (2 for usage errors).

``tests/golden/ok/`` holds correct recipes that must check cleanly, run the same way: they
guard against a broken set-up passing as a diagnostic, and against valid forms being
rejected.

Regenerate the expected files with

    MERGEC_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_diagnostics.py

and read every changed file before committing it (see tests/golden/README.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from mergec.demo import make_llama

CASES_DIR = Path(__file__).resolve().parent / "golden" / "cases"
CASES = sorted(p.stem for p in CASES_DIR.glob("*.merge"))
OK_DIR = CASES_DIR.parent / "ok"
OK_CASES = sorted(p.stem for p in OK_DIR.glob("*.merge"))
UPDATE = os.environ.get("MERGEC_UPDATE_GOLDEN") == "1"
PLACEHOLDER = "<tmp>"

#: environment of every run: the hub is off and its cache is an empty folder in the
#: temporary root, so a hub id can never be found (and nothing leaves the machine)
HUB_CACHE = "hf-cache"

#: the first line of a rendered diagnostic: `file:line:col: CODE message` or `mergec: CODE`
HEAD = re.compile(r"^(?:(?P<file>[^\s:][^:]*):(?P<line>\d+):(?P<col>\d+)|mergec): "
                  r"(?P<code>E\d{3}) ", re.M)


def _drop_tensor(src: Path, dst: Path, drop: str) -> None:
    """Copy the checkpoint folder ``src`` to ``dst`` without tensor ``drop``.

    Rewrites ``model.safetensors`` from its header, so the file stays valid (contiguous
    data, offsets starting at 0).
    """
    shutil.copytree(src, dst)
    path = dst / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    assert drop in header, f"{drop} not in {src}"
    new_header: dict = {}
    chunks: list[bytes] = []
    offset = 0
    for name, meta in header.items():
        if name == drop:
            continue
        if name == "__metadata__":
            new_header[name] = meta
            continue
        a, b = meta["data_offsets"]
        chunks.append(data[a:b])
        new_header[name] = dict(meta, data_offsets=[offset, offset + (b - a)])
        offset += b - a
    text = json.dumps(new_header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


@pytest.fixture(scope="session")
def golden_root(tmp_path_factory, family) -> Path:
    """A folder with ``ckpt/`` (the family, plus ``wide`` and ``no_head``) and an empty
    hub cache. Cases are copied into it and run from it."""
    root = tmp_path_factory.mktemp("golden")
    ckpt = root / "ckpt"
    ckpt.mkdir()
    for name, path in family.items():
        (ckpt / name).symlink_to(path, target_is_directory=True)
    # same architecture as the family, half the hidden size
    make_llama(ckpt / "wide", layers=4, hidden=32, intermediate=64, heads=4, kv_heads=2,
               vocab=128, seed=7, dtype="bfloat16")
    _drop_tensor(family["base"], ckpt / "no_head", "lm_head.weight")
    (root / HUB_CACHE).mkdir()
    return root


def _scrub(text: str, root: Path) -> str:
    for p in sorted({str(root.resolve()), str(root)}, key=len, reverse=True):
        text = text.replace(p, PLACEHOLDER)
    return text


def _args(name: str) -> list[str]:
    f = CASES_DIR / f"{name}.args"
    if not f.exists():
        return []
    return [line for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]


def _exit_code(name: str) -> int:
    f = CASES_DIR / f"{name}.exit"
    return int(f.read_text(encoding="utf-8").strip()) if f.exists() else 1


def _env(root: Path) -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(root / HUB_CACHE),
            "MERGEC_DEBUG": None}


@pytest.fixture
def in_root(golden_root, monkeypatch):
    monkeypatch.chdir(golden_root)
    return golden_root


def _run_case(run_cli, root: Path, name: str, command: str, *extra: str,
              folder: Path = CASES_DIR):
    recipe = f"{name}.merge"
    shutil.copyfile(folder / recipe, root / recipe)
    return run_cli(command, recipe, *_args(name), *extra, env=_env(root))


def test_cases_are_documented():
    assert len(CASES) >= 25
    for name in CASES:
        assert _exit_code(name) in (1, 2)
    for folder, names in ((CASES_DIR, CASES), (OK_DIR, OK_CASES)):
        for name in names:
            first = (folder / f"{name}.merge").read_text(encoding="utf-8").splitlines()[0]
            assert first.startswith("# ") and len(first) > 10, \
                f"{name}.merge must start with a comment saying what is wrong"


@pytest.mark.parametrize("name", CASES)
def test_golden(name, run_cli, in_root):
    root = in_root
    expected_file = CASES_DIR / f"{name}.expected"

    code, out, err = _run_case(run_cli, root, name, "check")
    err = _scrub(err, root)
    if UPDATE:
        expected_file.write_text(err, encoding="utf-8")
    assert expected_file.exists(), \
        f"no {expected_file.name}: run with MERGEC_UPDATE_GOLDEN=1 to create it"
    expected = expected_file.read_text(encoding="utf-8")
    exit_code = _exit_code(name)
    assert (code, out) == (exit_code, ""), f"check: exit {code}, stdout {out!r}, stderr:\n{err}"
    assert err == expected

    out_dir = root / f"out-{name}"
    code, out, err = _run_case(run_cli, root, name, "build", "--out-dir", out_dir.name,
                               "--quiet")
    err = _scrub(err, root)
    assert (code, out) == (exit_code, ""), f"build: exit {code}, stdout {out!r}, stderr:\n{err}"
    assert err == expected, "build reports differently from check"
    assert not out_dir.exists(), "a failed build created its output folder"


@pytest.mark.parametrize("name", OK_CASES)
def test_ok(name, run_cli, in_root):
    code, out, err = _run_case(run_cli, in_root, name, "check", folder=OK_DIR)
    assert (code, err) == (0, ""), err
    assert out == f"{name}.merge: ok" + out.split(": ok", 1)[1]


def _heads(text: str) -> list[tuple[str, int | None, int | None]]:
    """(code, line, col) of every main diagnostic in rendered text (not of labels)."""
    return [(m["code"], int(m["line"]) if m["line"] else None,
             int(m["col"]) if m["col"] else None) for m in HEAD.finditer(text)]


@pytest.mark.parametrize("name", ["several_problems", "syntax_several_errors",
                                  "set_unknown_param"])
def test_json_matches_text(name, run_cli, in_root):
    root = in_root
    code, out, err = _run_case(run_cli, root, name, "check", "--output-format", "json")
    assert code == 1
    assert err == ""
    data = json.loads(out)
    got = [(d["code"], d["span"]["line"] if d["span"] else None,
            d["span"]["col"] if d["span"] else None) for d in data["diagnostics"]]
    text = (CASES_DIR / f"{name}.expected").read_text(encoding="utf-8")
    assert got == _heads(text)
    assert len(got) >= 1
    for d in data["diagnostics"]:
        assert d["severity"] == "error"
        assert d["message"] and d["message"] in text
        if d["span"]:
            assert d["span"]["file"] == f"{name}.merge"
