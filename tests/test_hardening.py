"""Hostile or broken inputs get a clear diagnostic (issue 13): non-finite numbers, nesting
and literal-size limits, recipe files that are not regular files, command-line sizes,
broken checkpoints and control characters in what is printed."""

from __future__ import annotations

import os

import pytest

from mergec.api import check
from mergec.diagnostics import MergecError


def _diags(text: str):
    with pytest.raises(MergecError) as e:
        check("r.merge", text=text)
    return [(d.code, d.message, str(d.span) if d.span else None) for d in e.value.diagnostics]


def _head(family) -> str:
    return f'model b = "{family["base"]}"\nmodel m = "{family["math"]}"\n'


# --- D1: non-finite numbers never reach a weight --------------------------------------

@pytest.mark.parametrize("expr,diag", [
    ("task_arithmetic(m - b, weight=1e999)",
     ("E108", "number `1e999` is too large: numbers are at most 1e308", "r.merge:3:42")),
    ("task_arithmetic(m - b, weight=ramp(1e999, 1))",
     ("E108", "number `1e999` is too large: numbers are at most 1e308", "r.merge:3:47")),
    ("task_arithmetic(m - b, weight=ramp(0, 1e300 * 1e10))",
     ("E221", "`1e+300 * 1e+10` is not a finite number", "r.merge:3:50")),
    ("task_arithmetic(m - b, weight=1e300 * 1e300)",
     ("E221", "`1e+300 * 1e+300` is not a finite number", "r.merge:3:42")),
    ("linear(b, m, weight=[0.5, -1e308 - 1e308])",
     ("E221", "`-1e+308 - 1e+308` is not a finite number", "r.merge:3:38")),
    ("1e300 * 1e300 * (m - b) + b",
     ("E221", "`1e+300 * 1e+300` is not a finite number", "r.merge:3:12")),
    ("1e200 * (1e200 * (m - b)) + b",
     ("E221", "this scaling gives a weight that is not a finite number", "r.merge:3:12")),
    ("1e308 * (m - b) + 1e308 * (m - b) + b",
     ("E221", "this combination has a weight that is not a finite number", "r.merge:3:12")),
    ("(m - b) / 1e-320 + b",
     ("E221", "this scaling gives a weight that is not a finite number", "r.merge:3:12")),
])
def test_non_finite_numbers_are_rejected(family, expr, diag):
    assert _diags(_head(family) + f"output o = {expr}\n") == [diag]


@pytest.mark.parametrize("word", ["nan", "inf"])
def test_nan_and_inf_are_not_numbers(family, word):
    # the language has no literal for them: they are unknown names
    ((code, msg, span),) = _diags(
        _head(family) + f"output o = task_arithmetic(m - b, weight=ramp(0, {word}))\n")
    assert (code, msg, span) == ("E201", f"unknown name `{word}`", "r.merge:3:50")


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e999", "9" * 5000])
def test_non_finite_set_override_is_rejected(family, raw):
    text = _head(family) + "param w = 0.5\noutput o = task_arithmetic(m - b, weight=ramp(0, w))\n"
    with pytest.raises(MergecError) as e:
        check("r.merge", text=text, overrides={"w": raw})
    (d,) = e.value.diagnostics
    assert (d.code, d.message, str(d.span)) == (
        "E208", f"`--set w={raw}` is not a finite number", "r.merge:3:11")


# --- D5-D7: nesting depth and literal size ----------------------------------------------

@pytest.mark.parametrize("expr,col", [
    ("(" * 500 + "b" + ")" * 500, 113),
    ("linear(" * 350 + "b" + ")" * 350, 713),
    ("-" * 2000 + "1", 112),
])
def test_deep_nesting_is_e107(family, expr, col):
    (d,) = _diags(_head(family) + f"let x = {expr}\noutput o = b\n")
    assert d[0] == "E107"
    assert d[1] == ("expression nested too deeply: more than 100 levels of calls, brackets "
                    "or operators")
    assert d[2].startswith("r.merge:3:")


def test_sum_of_more_than_a_thousand_terms_is_e110(family):
    text = _head(family) + "param w = " + " + ".join(["1"] * 1001) + "\noutput o = b\n"
    ((code, msg, span),) = _diags(text)
    assert (code, msg, span) == ("E110", "expression too long: more than 1,000 terms joined "
                                 "by `+`/`-`", "r.merge:3:11")


def test_sum_of_a_thousand_models_checks_formats_and_plans(family, tmp_path):
    from mergec.api import compile
    from mergec.lang.fmt import format_text

    terms = " + ".join(f"0.001 * {'m' if i % 2 else 'b'}" for i in range(1000))
    text = _head(family) + f"output o = {terms}\n"
    out = check("r.merge", text=text).outputs[0]
    got = {t.name: k for t, k in out.expr.terms}
    assert set(got) == {"b", "m"}
    assert got["b"] == pytest.approx(0.5) and got["m"] == pytest.approx(0.5)
    formatted = format_text(text, "r.merge")
    assert format_text(formatted, "r.merge") == formatted
    r = tmp_path / "r.merge"
    r.write_text(text)
    assert [t.name for t in compile(r).lowered[0].tensors]


def test_long_product_chain_counts_as_one_level(family):
    text = _head(family) + "param w = " + " * ".join(["1"] * 300) + "\noutput o = b\n"
    assert check("r.merge", text=text).params["w"] == 1


def test_nesting_below_the_limit_checks(family):
    text = _head(family) + "output o = " + "linear(" * 95 + "b, m" + ")" * 95 + "\n"
    assert check("r.merge", text=text).outputs


@pytest.mark.parametrize("literal,msg", [
    ("1" * 5000, "number literal of 5000 characters is too long: a number has at most 100"),
    ("1" * 400 + ".5", "number literal of 402 characters is too long: a number has at most 100"),
    ("2e308", "number `2e308` is too large: numbers are at most 1e308"),
])
def test_literal_size_is_e108(family, literal, msg):
    assert _diags(_head(family) + f"param w = {literal}\noutput o = b\n") == [
        ("E108", msg, "r.merge:3:11")]


@pytest.mark.parametrize("stmt,col", [
    ("output o = stack(m.layers[0:" + "9" * 5000 + "])", 29),
    ("output o = linear(b, m) where layers[" + "1" * 10 + ":] { weight = 1 }", 38),
])
def test_long_block_index_is_e108(family, stmt, col):
    ((code, msg, span),) = _diags(_head(family) + stmt + "\n")
    n = 5000 if "9" * 10 in stmt else 10
    assert (code, msg, span) == (
        "E108", f"block index of {n} digits is too long: an index has at most 9",
        f"r.merge:3:{col}")


# --- recipe files -----------------------------------------------------------------------

def test_recipe_that_is_a_device_is_refused(run_cli):
    code, out, err = run_cli("check", "/dev/zero")
    assert code == 2
    assert "E501 cannot read recipe `/dev/zero`: not a regular file" in out + err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_recipe_that_is_a_fifo_is_refused(run_cli, tmp_path):
    fifo = tmp_path / "r.merge"
    os.mkfifo(fifo)
    code, out, err = run_cli("check", fifo)
    assert code == 2
    assert f"E501 cannot read recipe `{fifo}`: not a regular file" in out + err


def test_recipe_over_the_size_cap_is_e504(run_cli, tmp_path):
    big = tmp_path / "big.merge"
    big.write_text("# padding\n" * 1_100_000)
    code, out, err = run_cli("check", big)
    assert code == 2
    assert f"E504 recipe `{big}` is larger than 10 MB" in out + err


def test_recipe_with_crlf_line_ends_reads_as_before(family, run_cli, tmp_path):
    r = tmp_path / "r.merge"
    r.write_bytes((_head(family) + "output o = b\n").replace("\n", "\r\n").encode())
    code, out, err = run_cli("check", r)
    assert code == 0, out + err


# --- D16: command-line sizes --------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--max-memory", "--shard-size"])
@pytest.mark.parametrize("value", ["0", "0.5"])
def test_cli_size_below_one_byte_is_e502(family, run_cli, tmp_path, flag, value):
    r = tmp_path / "r.merge"
    r.write_text(_head(family) + "output o = b\n")
    code, out, err = run_cli("build", r, "-o", tmp_path / "out", flag, value)
    assert code == 2
    assert f"E502 `{flag} {value}`: a size must be at least 1 byte" in out + err
    assert not (tmp_path / "out").exists()


# --- broken checkpoints: JSON depth (D8), block counts (D10, D11), empty names (D15) ----

def _copy(family, tmp_path, name="bad"):
    import shutil

    dst = tmp_path / name
    shutil.copytree(family["math"], dst)
    return dst


def _rewrite_header(path, change):
    """Rewrite the JSON header of a safetensors file with ``change(header) -> header``."""
    import json
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = change(json.loads(raw[8:8 + n]))
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def _model_diags(family, ckpt):
    text = f'model b = "{family["base"]}"\nmodel x = "{ckpt}"\noutput o = linear(b, x)\n'
    return _diags(text)


DEEP = "[" * 5000 + "]" * 5000


def test_deeply_nested_config_json_is_e420(family, tmp_path):
    bad = _copy(family, tmp_path)
    (bad / "config.json").write_text('{"model_type": "llama", "x": ' + DEEP + "}")
    assert _model_diags(family, bad) == [
        ("E420", f"{bad / 'config.json'} nests JSON objects or lists more than 64 levels deep",
         "r.merge:2:11")]


def test_config_json_nested_past_the_limit_is_e420(family, tmp_path):
    # deep enough to pass json.loads, too deep for the limit
    bad = _copy(family, tmp_path)
    (bad / "config.json").write_text('{"x": ' + "[" * 70 + "]" * 70 + "}")
    ((code, _, _),) = _model_diags(family, bad)
    assert code == "E420"


def test_deeply_nested_safetensors_header_is_e420(family, tmp_path):
    bad = _copy(family, tmp_path)
    st = bad / "model.safetensors"
    raw = st.read_bytes()
    import json
    import struct

    (n,) = struct.unpack("<Q", raw[:8])
    head = json.loads(raw[8:8 + n])
    text = (json.dumps(head)[:-1] + ', "__metadata__": {"x": ' + DEEP + "}}").encode()
    text += b" " * (-len(text) % 8)
    st.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    assert _model_diags(family, bad) == [
        ("E420", f"{st} nests JSON objects or lists more than 64 levels deep", "r.merge:2:11")]


def test_deeply_nested_index_json_is_e420(family, tmp_path):
    bad = _copy(family, tmp_path)
    (bad / "model.safetensors").rename(bad / "model-00001-of-00001.safetensors")
    (bad / "model.safetensors.index.json").write_text('{"weight_map": ' + DEEP + "}")
    ((code, msg, _),) = _model_diags(family, bad)
    assert (code, msg) == (
        "E420", f"{bad / 'model.safetensors.index.json'} nests JSON objects or lists more "
        "than 64 levels deep")


@pytest.mark.parametrize("value,why", [
    ("0", "`num_hidden_layers` is 0, not a whole number of blocks >= 1"),
    ("-2", "`num_hidden_layers` is -2, not a whole number of blocks >= 1"),
    ("1e9", "`num_hidden_layers` is 1000000000.0, not a whole number of blocks >= 1"),
    ('"4"', '`num_hidden_layers` is "4", not a whole number of blocks >= 1'),
    ("1000000000", "`num_hidden_layers` is 1000000000, but the weights have 4 blocks (0 to 3)"),
    ("5", "`num_hidden_layers` is 5, but the weights have 4 blocks (0 to 3)"),
])
def test_bad_block_count_in_config_is_e411(family, tmp_path, value, why):
    import json

    bad = _copy(family, tmp_path)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["num_hidden_layers"] = json.loads(value)
    (bad / "config.json").write_text(json.dumps(cfg))
    assert _model_diags(family, bad) == [
        ("E411", f"config.json of `{bad}`: {why}", "r.merge:2:11")]


def test_tensor_with_an_empty_name_is_e407(family, tmp_path):
    bad = _copy(family, tmp_path)
    st = bad / "model.safetensors"
    _rewrite_header(st, lambda h: {("" if k == "model.norm.weight" else k): v
                                   for k, v in h.items()})
    assert _model_diags(family, bad) == [
        ("E407", f"corrupt safetensors header in {st}: a tensor has an empty name",
         "r.merge:2:11")]


# --- D17: control characters from input files are escaped in diagnostics -----------------

def test_control_characters_in_tensor_names_are_escaped(family, tmp_path, run_cli):
    bad = _copy(family, tmp_path)
    st = bad / "model.safetensors"
    evil = "model.norm.weight\x1b[2J\x1b]0;owned\x07\u202e"
    _rewrite_header(st, lambda h: {(evil if k == "model.norm.weight" else k): v
                                   for k, v in h.items()})
    r = tmp_path / "r.merge"
    r.write_text(f'model b = "{family["base"]}"\nmodel x = "{bad}"\noutput o = linear(b, x)\n')
    code, out, err = run_cli("check", r)
    text = out + err
    assert code == 1
    assert "E303" in text
    assert "model.norm.weight\\x1b[2J\\x1b]0;owned\\x07\\u202e" in text
    assert not any(c in text for c in "\x1b\x07\u202e")


def test_escape_keeps_ordinary_text():
    from mergec.diagnostics import escape

    assert escape("tab\there, line\nbreak, é, 中") == "tab\there, line\nbreak, é, 中"
    assert escape("a\x1b[31mb\x9bc\rd") == "a\\x1b[31mb\\x9bc\\x0dd"


def test_plan_escapes_control_characters_in_tensor_names(family, tmp_path, run_cli):
    bad = _copy(family, tmp_path)
    st = bad / "model.safetensors"
    evil = "model.norm.weight\x1b[2J"
    _rewrite_header(st, lambda h: {(evil if k == "model.norm.weight" else k): v
                                   for k, v in h.items()})
    r = tmp_path / "r.merge"
    r.write_text(f'model x = "{bad}"\noutput o = x\n')
    code, out, err = run_cli("plan", r, "--tensors")
    assert code == 0, out + err
    assert "model.norm.weight\\x1b[2J" in out
    assert "\x1b" not in out + err


@pytest.mark.parametrize("kw", ["max_memory", "shard_size"])
@pytest.mark.parametrize("value", [0, -1, 0.5])
def test_api_size_below_one_byte_is_e502(family, tmp_path, kw, value):
    from mergec.api import build

    with pytest.raises(MergecError) as e:
        build("r.merge", tmp_path / "out", text=_head(family) + "output o = b\n",
              **{kw: value})
    (d,) = e.value.diagnostics
    assert (d.code, d.message) == (
        "E502", f"`{kw}={value!r}`: a size must be a whole number of bytes >= 1")
    assert not (tmp_path / "out").exists()


# --- NaN and infinity that a build would create -----------------------------------------

def _nf_models(tmp_path, nan_in_a: bool = False):
    import numpy as np

    from tests.io_helpers import CONFIG, make_safetensors, write_config

    rng = np.random.default_rng(0)
    big = {"model.layers.0.mlp.weight": (rng.standard_normal((4, 4)) * 6e4).astype(np.float32),
           "model.norm.weight": np.ones(4, dtype=np.float32)}
    a = {"model.layers.0.mlp.weight": rng.standard_normal((4, 4)).astype(np.float32),
         "model.norm.weight": np.full(4, 2.0, dtype=np.float32)}
    if nan_in_a:
        a["model.layers.0.mlp.weight"][1, 2] = np.nan
    for name, tensors in (("big", big), ("a", a)):
        make_safetensors(tmp_path / name, tensors, config=False)
        write_config(tmp_path / name, {**CONFIG, "num_hidden_layers": 1})
    return big, a


def _build_diags(r, tmp_path, backend="numpy"):
    from mergec.api import build

    from mergec.io.errors import CheckpointError

    with pytest.raises(CheckpointError) as e:
        build(r, tmp_path / "out", backend=backend)
    assert not (tmp_path / "out" / "o").exists()
    return [(e.value.code, e.value.message, e.value.help)]


def test_overflow_of_the_storage_dtype_is_e421(tmp_path, backend):
    _nf_models(tmp_path)
    r = tmp_path / "r.merge"
    r.write_text('model big = "./big"\nmodel a = "./a"\noutput o = linear(big, a, '
                 'weight=[1.9, -0.9], normalize=false) { dtype = "float16" }\n')
    ((code, msg, help_),) = _build_diags(r, tmp_path, backend)
    assert code == "E421"
    assert msg.startswith("output `o`, tensor `model.layers.0.mlp.weight`: ")
    assert msg.endswith(" beyond the range of float16 (largest 65504) would be written as "
                        "infinity")
    assert help_ == ("store the output in a wider dtype (`dtype = \"bfloat16\"` or "
                     "`\"float32\"` in its options), or `set allow_nonfinite = true` to write "
                     "them anyway")


def test_merge_that_overflows_is_e421(tmp_path, backend):
    _nf_models(tmp_path)
    r = tmp_path / "r.merge"
    r.write_text('model big = "./big"\nmodel a = "./a"\n'
                 'output o = linear(a, big, weight=[1e300, 1e300], normalize=false)\n')
    diags = _build_diags(r, tmp_path, backend)
    assert [d[0] for d in diags] == ["E421"]
    assert diags[0][1].startswith("output `o`, tensor `model.")
    assert "the merge produced" in diags[0][1] and diags[0][1].endswith(
        "NaN or infinite values, and no input has any")


def test_allow_nonfinite_writes_them(tmp_path):
    import numpy as np

    from mergec.api import build
    from mergec.demo import load_tensors

    big, a = _nf_models(tmp_path)
    r = tmp_path / "r.merge"
    r.write_text('model big = "./big"\nmodel a = "./a"\nset allow_nonfinite = true\n'
                 'output o = linear(big, a, weight=[1.9, -0.9], normalize=false) '
                 '{ dtype = "float16" }\n')
    build(r, tmp_path / "out")
    got = load_tensors(tmp_path / "out" / "o")["model.layers.0.mlp.weight"]
    ref = (1.9 * big["model.layers.0.mlp.weight"].astype(np.float64)
           - 0.9 * a["model.layers.0.mlp.weight"]).astype(np.float16)
    assert np.isinf(got).sum() == np.isinf(ref).sum() > 0
    np.testing.assert_array_equal(got, ref)


def test_nan_an_input_has_is_carried_through(tmp_path):
    import numpy as np

    from mergec.api import build
    from mergec.demo import load_tensors

    _nf_models(tmp_path, nan_in_a=True)
    r = tmp_path / "r.merge"
    r.write_text('model big = "./big"\nmodel a = "./a"\n'
                 'output o = linear(big, a, weight=[0.5, 0.5])\n')
    build(r, tmp_path / "out")
    got = load_tensors(tmp_path / "out" / "o")["model.layers.0.mlp.weight"]
    assert np.isnan(got).sum() == 1 and np.isnan(got[1, 2])


def test_allow_nonfinite_takes_a_bool(tmp_path):
    _nf_models(tmp_path)
    ((code, msg, _span),) = _diags('model a = "' + str(tmp_path / "a") + '"\n'
                                   'set allow_nonfinite = 1\noutput o = a\n')
    assert (code, msg) == ("E208", "`set allow_nonfinite` expects true or false, found 1")


def test_conversion_that_overflows_is_e421(tmp_path):
    _nf_models(tmp_path)
    r = tmp_path / "r.merge"
    r.write_text('model big = "./big"\noutput o = big { dtype = "float16" }\n')
    ((code, msg, _),) = _build_diags(r, tmp_path)
    assert code == "E421"
    assert msg.startswith("output `o`, tensor `model.layers.0.mlp.weight`: ")
    assert msg.endswith("beyond the range of float16 (largest 65504) would be written as "
                        "infinity")


# --- D13/D14: a symbolic link as the output folder --------------------------------------

def _link_recipe(family, tmp_path):
    r = tmp_path / "r.merge"
    r.write_text(_head(family) + "output o = linear(b, m, weight=[0.5, 0.5])\n")
    real = tmp_path / "disk" / "o"
    real.mkdir(parents=True)
    (tmp_path / "out").mkdir()
    os.symlink(real, tmp_path / "out" / "o")
    return r, real


def test_symlinked_empty_output_folder_is_written_through(family, tmp_path):
    from mergec.api import build

    r, real = _link_recipe(family, tmp_path)
    build(r, tmp_path / "out")
    link = tmp_path / "out" / "o"
    assert link.is_symlink() and os.path.realpath(link) == str(real)
    assert (real / "model.safetensors").is_file() and (real / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["o"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["o"]


def test_symlinked_output_folder_with_force_leaves_nothing_behind(family, tmp_path):
    from mergec.api import build

    r, real = _link_recipe(family, tmp_path)
    (real / "old.txt").write_text("previous build")
    with pytest.raises(MergecError) as e:
        build(r, tmp_path / "out")
    assert [d.code for d in e.value.diagnostics] == ["E413"]
    build(r, tmp_path / "out", force=True)
    link = tmp_path / "out" / "o"
    assert link.is_symlink() and os.path.realpath(link) == str(real)
    assert not (real / "old.txt").exists() and (real / "model.safetensors").is_file()
    # no renamed-aside or temporary folder remains, beside the link or the folder
    assert sorted(p.name for p in (tmp_path / "disk").iterdir()) == ["o"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["o"]


def test_weights_whose_sum_overflows_are_not_an_internal_error(family):
    # found by the fuzz tests: the zero-sum check of normalized weights summed 1e308s
    text = _head(family) + "output o = linear(b, m, weight=[ramp(0.8, 1e308), 1e308])\n"
    try:
        check("r.merge", text=text)
    except MergecError as e:
        assert "E599" not in [d.code for d in e.diagnostics]


def test_sum_of_exactly_a_thousand_terms_checks(family):
    text = _head(family) + "param w = " + " + ".join(["1"] * 1000) + "\noutput o = b\n"
    assert check("r.merge", text=text).params["w"] == 1000
