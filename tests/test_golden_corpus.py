"""The golden corpus: the bytes every recipe builds to on the NumPy backend.

Every recipe of recipes/, tests/golden/ok/ and tests/golden/corpus/ (the last covers every
method with non-default parameters, LoRA adapters, stacks and dtypes) is built on the
NumPy backend against the bf16 and float32 test families; the sha256 of each output
tensor's stored bytes must equal the one recorded in tests/golden/corpus.json. A change
of the runtime or of a method must leave them all unchanged; a deliberate change of
numbers is recorded by running this file with MERGEC_REGOLD=1 and saying why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from mergec.api import build

ROOT = Path(__file__).resolve().parent.parent
GOLD = ROOT / "tests" / "golden" / "corpus.json"
RECIPES = sorted([*(ROOT / "recipes").glob("*.merge"),
                  *(ROOT / "tests" / "golden" / "ok").glob("*.merge"),
                  *(ROOT / "tests" / "golden" / "corpus").glob("*.merge")])
IDS = [f"{p.parent.name}/{p.stem}" for p in RECIPES]
FAMILIES = ("bf16", "f32")


def tensor_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every tensor's dtype, shape and stored bytes, read from the safetensors
    files directly (no library decodes them)."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
            data = fh.read()
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            h = hashlib.sha256(f"{info['dtype']}{info['shape']}".encode())
            h.update(data[a:b])
            out[name] = h.hexdigest()
    return dict(sorted(out.items()))


@pytest.fixture(scope="module")
def gold() -> dict:
    if os.environ.get("MERGEC_REGOLD"):
        return {}
    return json.loads(GOLD.read_text(encoding="utf-8"))


_RECORDED: dict = {}


def setup_dir(tmp_path: Path, fam: dict, recipe: Path) -> Path:
    from stats_helpers import make_family_stats
    from test_lora import MODS, make_adapter

    (tmp_path / "ckpt").symlink_to(Path(fam["base"]).parent, target_is_directory=True)
    make_adapter(tmp_path / "lora", MODS, r=4, alpha=8, seed=3)
    make_family_stats(tmp_path / "stats", fam)
    shutil.copy(recipe, tmp_path / recipe.name)
    return tmp_path / recipe.name


@pytest.mark.parametrize("which", FAMILIES)
@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_numpy_outputs_match_the_golden_corpus(tmp_path, family, family_f32, gold, recipe,
                                               which):
    fam = family if which == "bf16" else family_f32
    path = setup_dir(tmp_path, fam, recipe)
    results = build(path, tmp_path / "out", backend="reference", jobs=1)
    got = {r.output: tensor_hashes(Path(r.path)) for r in results}
    key = f"{recipe.parent.name}/{recipe.name}:{which}"
    if os.environ.get("MERGEC_REGOLD"):
        data = json.loads(GOLD.read_text(encoding="utf-8")) if GOLD.exists() else {}
        data[key] = got
        GOLD.write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n",
                        encoding="utf-8")
        return
    assert key in gold, f"{key} is not in the golden corpus (record it with MERGEC_REGOLD=1)"
    want = gold[key]
    assert sorted(got) == sorted(want)
    for out, hashes in want.items():
        assert sorted(got[out]) == sorted(hashes), f"{key} {out}: other tensors"
        bad = [t for t in hashes if got[out][t] != hashes[t]]
        assert not bad, f"{key} {out}: {len(bad)} tensors changed, e.g. {bad[:3]}"


def test_the_corpus_covers_every_method():
    from mergec.methods import REGISTRY

    text = "\n".join(p.read_text(encoding="utf-8") for p in RECIPES)
    missing = [m for m in REGISTRY if f"{m}(" not in text]
    assert not missing, f"methods without a golden recipe: {missing}"
