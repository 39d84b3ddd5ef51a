"""`mergec import`: mergekit YAML configs -> recipes (exact text), diagnostics at the YAML
line (exact text), and imported recipes that build bit-identically to the hand-written
recipes the parity suite checks against mergekit."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mergec.diagnostics import MergecError, SourceMap, render_all
from mergec.tools.mergekit_import import import_text

PARITY = Path(__file__).resolve().parent / "parity"


def imp(tmp_path: Path, yaml_text: str, **kw):
    cfg = tmp_path / "config.yml"
    cfg.write_text(textwrap.dedent(yaml_text))
    return import_text(cfg.read_text(), str(cfg), out_dir=tmp_path, base_dir=tmp_path, **kw)


def errors(tmp_path: Path, yaml_text: str) -> str:
    with pytest.raises(MergecError) as e:
        imp(tmp_path, yaml_text)
    return render_all(e.value.diagnostics, SourceMap()).replace(str(tmp_path) + "/", "")


def test_linear_with_local_and_hub_models(tmp_path):
    (tmp_path / "models" / "math").mkdir(parents=True)
    r = imp(tmp_path, """
        merge_method: linear
        models:
          - model: models/math
            parameters: {weight: 2}
          - model: org/Code-7B
            parameters:
              weight: 1.0
        dtype: bfloat16
        """)
    assert r.text == textwrap.dedent("""\
        # imported from config.yml by `mergec import`
        model math = "./models/math"
        model code_7b = "org/Code-7B"

        output merged = linear(math, code_7b, weight=[2, 1.0]) {
            dtype = "bfloat16"
        }
        """)
    assert [d.code for d in r.warnings] == ["W331"]  # mergekit computes in bfloat16


def test_ties_writes_mergekit_defaults_and_drops_base_from_inputs(tmp_path):
    r = imp(tmp_path, """
        merge_method: ties
        base_model: org/base
        models:
          - model: org/base
          - model: org/a
            parameters: {weight: 1.0, density: 0.5}
          - model: org/b
            parameters: {weight: 0.5}
        parameters:
          normalize: false
          int8_mask: true
        dtype: float32
        out_dtype: bfloat16
        tokenizer_source: org/a
        """)
    assert r.text == textwrap.dedent("""\
        # imported from config.yml by `mergec import`
        model base = "org/base"
        model a = "org/a"
        model b = "org/b"

        output merged = ties(
            a,
            b,
            base=base,
            weight=[1.0, 0.5],
            density=[0.5, 1.0],
            normalize=false,
            weighted_elect=true,
            count="floor",
        ) {
            dtype     = "bfloat16"
            tokenizer = a
        }
        """)
    assert r.warnings == []


def test_dare_ties_rescale_and_normalize(tmp_path):
    r = imp(tmp_path, """
        merge_method: dare_ties
        base_model: org/base
        models:
          - model: org/a
            parameters: {weight: 0.6, density: 0.4}
        parameters:
          rescale: false
        """)
    assert r.text.endswith(textwrap.dedent("""\
        output merged = dare_ties(
            a,
            base=base,
            weight=0.6,
            density=0.4,
            normalize=false,
            rescale="none",
            weighted_elect=true,
        )
        """))
    r = imp(tmp_path, """
        merge_method: dare_ties
        base_model: org/base
        models:
          - model: org/a
            parameters: {weight: 0.6, density: 0.4}
        """)
    assert 'rescale="l1"' in r.text


def test_slerp_gradient_filters_become_where_blocks_first_match_last(tmp_path):
    r = imp(tmp_path, """
        merge_method: slerp
        base_model: org/a
        models:
          - model: org/b
          - model: org/a
        parameters:
          t:
            - filter: self_attn
              value: [0, 0.5, 1]
            - filter: mlp
              value: [1, 0.2]
            - value: 0.5
        """)
    assert r.text.endswith(textwrap.dedent("""\
        output merged = slerp(a, b, t=0.5)
            where "*mlp*" { t = ramp(1, 0.2) }
            where "*self_attn*" { t = ramp(0, 0.5, 1) }
        """))


def test_model_level_filters_and_overlapping_filters(tmp_path):
    """A tensor matching both filters takes the first of each model's list: an `and`
    block where the two models' orders disagree."""
    r = imp(tmp_path, """
        merge_method: task_arithmetic
        base_model: org/base
        models:
          - model: org/a
            parameters:
              weight: [{filter: q_proj, value: 2}, {filter: self_attn, value: 3}, {value: 1}]
          - model: org/b
            parameters:
              weight: [{filter: self_attn, value: 5}, {filter: q_proj, value: 7}, {value: 1}]
        """)
    assert r.text.endswith(textwrap.dedent("""\
        output merged = task_arithmetic(a, b, base=base, weight=1)
            where "*self_attn*" { weight = [3, 5] }
            where "*q_proj*" { weight = [2, 7] }
            where "*self_attn*" and "*q_proj*" { weight = [2, 5] }
        """))


def test_passthrough_slices_and_one_block_gradient(tmp_path):
    r = imp(tmp_path, """
        merge_method: passthrough
        slices:
          - sources:
              - model: org/a
                layer_range: [0, 2]
          - sources:
              - model: org/b
                layer_range: [1, 3]
                parameters: {scale: 0.5}
        """)
    assert r.text.endswith(
        "output merged = stack(a.layers[0:2], passthrough(b.layers[1:3], scale=0.5))\n")
    r = imp(tmp_path, """
        merge_method: slerp
        base_model: org/a
        slices:
          - sources:
              - {model: org/a, layer_range: [0, 1]}
              - {model: org/b, layer_range: [1, 2]}
            parameters: {t: [0.0, 1.0]}
          - sources:
              - {model: org/a, layer_range: [1, 4]}
              - {model: org/b, layer_range: [1, 4]}
            parameters:
              t: [{filter: mlp, value: 0.2}, {value: [0.0, 1.0]}]
        """)
    assert r.text.endswith(textwrap.dedent("""\
        let merged_slice_1 = slerp(a.layers[1:4], b.layers[1:4], t=ramp(0.0, 1.0))
            where "*mlp*" { t = 0.2 }
        output merged = stack(slerp(a.layers[0:1], b.layers[1:2], t=1.0), merged_slice_1)
        """))


def test_multi_document_config_feeds_earlier_outputs(tmp_path):
    r = imp(tmp_path, """
        name: math-code
        merge_method: task_arithmetic
        base_model: org/base
        models:
          - model: org/math
            parameters: {weight: 1.0}
          - model: org/code
            parameters: {weight: 0.5}
        ---
        name: final
        merge_method: slerp
        base_model: math-code
        models:
          - model: math-code
          - model: org/chat
        parameters: {t: 0.3}
        """)
    assert r.outputs == ["math_code", "final"]
    assert r.text == textwrap.dedent("""\
        # imported from config.yml by `mergec import`
        model base = "org/base"
        model math = "org/math"
        model code = "org/code"
        model chat = "org/chat"

        output math_code = task_arithmetic(math, code, base=base, weight=[1.0, 0.5])
        output final = slerp(math_code, chat, t=0.3)
        """)


def test_lora_reference_is_an_adapter_added_to_its_model(tmp_path):
    r = imp(tmp_path, """
        merge_method: linear
        models:
          - model: org/base+org/lora-math
            parameters: {weight: 1.0}
          - model: org/base
            parameters: {weight: 1.0}
        """)
    assert "adapter lora_math = \"org/lora-math\"" in r.text
    assert "let base_lora_math = base + lora_math" in r.text
    assert "linear(base_lora_math, base, weight=1.0)" in r.text


def test_unsupported_keys_and_values_are_errors_at_their_line(tmp_path):
    text = errors(tmp_path, """
        merge_method: ties
        base_model: org/base
        models:
          - model: org/a
            parameters: {weight: 1.0, densty: 0.5}
        tokenizer_source: union
        residual: 1
        """)
    assert text == textwrap.dedent("""\
        config.yml:8:1: E241 unknown key `residual` in a mergekit config
          |
        8 | residual: 1
          | ^^^^^^^^
          = help: the keys are `merge_method`, `base_model`, `models`, `slices`, `parameters`, `dtype`, `out_dtype`, `tokenizer_source`, `tokenizer`, `chat_template`, `name`

        config.yml:6:31: E243 `ties` takes no parameter `densty`
          |
        6 |     parameters: {weight: 1.0, densty: 0.5}
          |                               ^^^^^^
          = help: its parameters: `weight`, `density`, `normalize`, `lambda`, `int8_mask`

        config.yml:7:19: E245 `tokenizer_source: union` (a merged vocabulary) has no mergec counterpart
          |
        7 | tokenizer_source: union
          |                   ^^^^^
          = help: mergec copies one model's tokenizer: `tokenizer_source: base` or a model

        found 3 errors""")


def test_unsupported_method_and_string_gradient(tmp_path):
    assert errors(tmp_path, """
        merge_method: arcee_fusion
        models: [{model: org/a}]
        """).startswith(textwrap.dedent("""\
        config.yml:2:15: E242 mergekit's merge method `arcee_fusion` has no mergec counterpart
          |
        2 | merge_method: arcee_fusion
          |               ^^^^^^^^^^^^
          = help: mergec imports: linear, task_arithmetic, ties,"""))
    assert errors(tmp_path, """
        merge_method: nuslerp
        models: [{model: org/a}, {model: org/b}]
        parameters:
          nuslerp_flatten: [true, false]
        """).splitlines()[0] == (
        "config.yml:5:20: E243 a gradient of strings or true/false values (mergekit steps "
        "through them by depth) has no mergec counterpart")
    assert errors(tmp_path, "merge_method: [ties\n").splitlines()[0].startswith(
        "config.yml:2:1: E240 not valid YAML")
    assert errors(tmp_path, """
        merge_method: ties
        models: [{model: org/a}]
        """).splitlines()[0] == (
        "config.yml:2:15: E244 mergekit's `ties` needs a `base_model`")


def test_cli_writes_a_recipe_that_checks(tmp_path, family_f32, run_cli):
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(textwrap.dedent(f"""\
        merge_method: ties
        base_model: {family_f32['base']}
        models:
          - model: {family_f32['math']}
            parameters: {{weight: 1.0, density: 0.5}}
          - model: {family_f32['code']}
            parameters: {{weight: 0.5, density: 0.5}}
        """))
    out = tmp_path / "r.merge"
    r = run_cli("import", cfg, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stderr == "" and r.stdout == f"wrote {out} (1 output: merged)\n"
    r = run_cli("check", out)
    assert r.exit_code == 0, r.stderr
    assert r.stdout.endswith("ok (3 inputs, 1 output)\n")
    r = run_cli("import", tmp_path / "missing.yml")
    assert r.exit_code == 2 and "E501" in r.stderr


# The imported parity configs build bit-identically to the hand-written recipes that the
# parity suite compares against mergekit 0.1.5 (tests/parity: EXACT).
PAIRS = [  # (config, hand-written recipe, its output)
    ("linear_norm", "linear", "linear_norm"),
    ("ties_d05_raw", "ties", "ties_d05_raw"),
    # mergekit's int(density * n): the hand-written recipe sets a density per tensor size
    ("ties_d03", "ties", "ties_d03_floor"),
    ("breadcrumbs_gamma001", "breadcrumbs", "breadcrumbs_gamma001_floor"),
    ("slerp_gradient", "slerp", "slerp_gradient"),
    ("slerp_slices", "slerp", "slerp_slices_last"),
    ("passthrough_slices", "passthrough", "passthrough_slices"),
    ("breadcrumbs_density1", "breadcrumbs", "breadcrumbs_density1_gamma0"),
    ("model_stock", "model_stock", "model_stock"),
    ("dare_ties", "random", "dare_ties"),
]


@pytest.fixture(scope="module")
def parity_ckpt(tmp_path_factory):
    from mergec.demo import make_family, make_llama

    root = tmp_path_factory.mktemp("import-parity")
    sizes = dict(layers=4, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=128,
                 dtype="float32")
    make_family(root / "ckpt", names=("base", "a", "b", "c"), seed=0, noise=0.02, **sizes)
    for i, name in enumerate(("tiny1", "tiny2", "half1", "half2", "half3")):
        make_llama(root / "ckpt" / name, base=root / "ckpt" / "base", seed=11 + i,
                   noise=0.0002, **sizes)
    return root


def test_every_parity_config_imports_to_a_recipe_that_checks(parity_ckpt):
    import mergec.api
    from mergec.lang.fmt import format_text

    configs = sorted((PARITY / "configs").glob("*.yml"))
    assert len(configs) == 41
    for cfg in configs:
        got = import_text(cfg.read_text(), cfg.name, out_dir=parity_ckpt,
                          base_dir=parity_ckpt)
        assert format_text(got.text) == got.text, cfg.name  # canonical
        path = parity_ckpt / f"check_{cfg.stem}.merge"
        path.write_text(got.text)
        checked = mergec.api.check(path)
        assert [o.name for o in checked.outputs] == ["merged"], cfg.name


def _one_output(recipe: str, output: str) -> str:
    """The hand-written recipe with only `output` kept (its other outputs dropped)."""
    import mergec.api
    from mergec.lang import ast
    from mergec.lang.fmt import format_program

    program = mergec.api.parse(recipe)
    keep = [s for s in program.statements
            if not isinstance(s, ast.OutputStmt) or s.name.name == output]
    return format_program(type(program)(**{**program.__dict__, "statements": tuple(keep)}))


@pytest.mark.parametrize("config,recipe,output", PAIRS, ids=[p[0] for p in PAIRS])
def test_imported_parity_configs_build_like_the_checked_recipes(parity_ckpt, config, recipe,
                                                                output):
    import mergec.api
    from mergec.demo import load_tensors

    root = parity_ckpt
    yml = (PARITY / "configs" / f"{config}.yml").read_text()
    if config == "dare_ties":  # the seed is the recipe's; mergekit's is on its command line
        yml = yml.replace("dtype: float32", "dtype: float32\n")
    got = import_text(yml, f"{config}.yml", out_dir=root, base_dir=root, name=output)
    text = got.text
    if config == "dare_ties":
        text = text.replace("model base", "set seed = 7\nmodel base", 1)
    (root / f"imported_{config}.merge").write_text(text)
    hand = _one_output((PARITY / "recipes" / f"{recipe}.merge").read_text(), output)
    (root / f"hand_{config}.merge").write_text(hand)
    mergec.api.build(root / f"imported_{config}.merge", out_dir=root / "imp" / config)
    mergec.api.build(root / f"hand_{config}.merge", out_dir=root / "hand" / config)
    a = load_tensors(root / "imp" / config / output)
    b = load_tensors(root / "hand" / config / output)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    shutil.rmtree(root / "imp" / config)
    shutil.rmtree(root / "hand" / config)


def test_slices_of_a_merge_with_a_base_slice_the_whole_merge(tmp_path):
    src = """
        merge_method: ties
        base_model: org/base
        slices:
          - sources:
              - {model: org/base, layer_range: [0, 2]}
              - {model: org/a, layer_range: [0, 2], parameters: {weight: 1.0, density: 0.5}}
          - sources:
              - {model: org/base, layer_range: [2, 4]}
              - {model: org/a, layer_range: [2, 4], parameters: {weight: 1.0, density: 0.7}}
        """
    r = imp(tmp_path, src)
    assert r.text.endswith(textwrap.dedent("""\
        output merged = stack(
            ties(a, base=base, weight=1.0, density=0.5, weighted_elect=true, count="floor").layers[0:2],
            ties(a, base=base, weight=1.0, density=0.7, weighted_elect=true, count="floor").layers[2:4],
        )
        """))
    text = errors(tmp_path, src.replace("[2, 4], parameters", "[1, 3], parameters")
                  .replace("density: 0.5}", "density: [0.5, 1]}"))
    assert [line.split(" ", 2)[:2] for line in text.splitlines() if ": E" in line] == [
        ["config.yml:5:5:", "E243"], ["config.yml:9:7:", "E241"]]
