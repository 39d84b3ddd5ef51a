"""Seeded generators for the fuzz tests: recipes that follow the grammar (with values,
names and parameters drawn from what the language and the method registry accept, so that
many recipes check and build, and many others fail in every possible way), text-level
mutations of them, and corrupted copies of a checkpoint (safetensors headers, offsets,
dtypes, shapes, config.json, the shard index).

Each case is a function of its seed alone: a failing case is reproduced with
`pytest tests/test_fuzz.py -k ...` and the seed in the failure message.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

from mergec.methods import REGISTRY

MODELS = ("base", "math", "code", "chat", "deep", "other_vocab")
NUMBERS = ("0", "1", "0.5", "0.25", "-0.3", "2", "1e-3", "1e308", "1e999", "0.0", "3",
           "-1", "100", "7.5", "1.", ".5", "12345678901234567890", "0.999999")
STRINGS = ('"float16"', '"bfloat16"', '"float32"', '"int8"', '"model"', '"tensor"', '""',
           '"1GB"', '"0"', '"l1"', '"*.mlp.*"', '"model.layers.*"', '"\\u0007"', '"x' +
           "y" * 40 + '"', '"sum"', '"magnitude"', '"torch"', '"jax"', '"numpy"', '"cpu"',
           '"cuda:0"', '"auto"')
SETTINGS = ("seed", "backend", "device", "shard_size", "max_memory", "allow_nonfinite",
            "seeed", "jobs")
OPTIONS = ("dtype", "tokenizer", "config", "shard_size", "dtypes", "base")
BUILTINS = ("stack", "ramp", "sweep")


class RecipeGen:
    """A random recipe over the demo family's models (`./ckpt/<name>`)."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)
        self.values: list[str] = []  # tensor-valued names defined so far
        self.params: list[str] = []
        self.depth = 0

    def recipe(self) -> str:
        r = self.r
        lines = []
        for m in r.sample(MODELS, r.randint(1, 4)):
            path = f"./ckpt/{m}" if r.random() > 0.05 else r.choice(
                ["./ckpt/none", "ckpt/base", "./ckpt/base/config.json", "/dev/null", ""])
            lines.append(f'model {m} = "{path}"')
            self.values.append(m)
        for _ in range(r.randint(0, 8)):
            lines.append(self.statement())
        for i in range(r.randint(0, 3)):
            lines.append(self.output(i))
        if r.random() < 0.1:
            r.shuffle(lines)
        return "\n".join(lines) + "\n"

    def statement(self) -> str:
        r = self.r
        k = r.random()
        if k < 0.2:
            name = f"p{len(self.params)}"
            self.params.append(name)
            value = self.number() if r.random() < 0.8 else self.scalar()
            if r.random() < 0.1:
                value = f"sweep({', '.join(self.number() for _ in range(r.randint(0, 3)))})"
            return f"param {name} = {value}"
        if k < 0.3:
            return f"set {r.choice(SETTINGS)} = {self.scalar()}"
        name = f"v{len(self.values)}"
        text = f"let {name} = {self.tensor()}{self.wheres()}"
        self.values.append(name)
        return text

    def output(self, i: int) -> str:
        opts = ""
        if self.r.random() < 0.3:
            entries = [f"{self.r.choice(OPTIONS)} = {self.r.choice(STRINGS + tuple(self.values))}"
                       for _ in range(self.r.randint(0, 3))]
            opts = " { " + ", ".join(entries) + " }"
        return f"output o{i} = {self.tensor()}{self.wheres()}{opts}"

    def wheres(self) -> str:
        r = self.r
        out = ""
        for _ in range(r.choices((0, 1, 2), (6, 3, 1))[0]):
            sel = r.choice(['"*.mlp.*"', '"*"', '"*.self_attn.*"', "layers[0:2]",
                            "layers[1:]", "layers[3:1]", 'layers[0:9] and "*.mlp.*"',
                            '"nothing"'])
            p = r.choice(("t", "weight", "density", "lambda", "gamma", "epsilon", "nope"))
            out += f"\n    where {sel} {{ {p} = {self.number()} }}"
        return out

    def tensor(self) -> str:
        r = self.r
        self.depth += 1
        try:
            if self.depth > 4 or r.random() < 0.25:
                return self.atom()
            k = r.random()
            if k < 0.45:
                return self.call()
            if k < 0.6:
                a, b = self.atom(), self.atom()
                return r.choice([f"{a} + 0.5 * ({b} - {a})", f"0.5 * {a} + 0.5 * {b}",
                                 f"{a} - {b}", f"{a} + {b}", f"-{a}", f"{a} * {b}",
                                 f"{a} / {self.number()}", f"{self.number()} * ({a} - {b}) + {a}"])
            if k < 0.75:
                m = self.atom()
                return f"{m}.layers[{self.slice()}]"
            if k < 0.9:
                parts = ", ".join(f"{self.atom()}.layers[{self.slice()}]"
                                  for _ in range(r.randint(0, 3)))
                return f"stack({parts})"
            return f"({self.tensor()})"
        finally:
            self.depth -= 1

    def atom(self) -> str:
        r = self.r
        if r.random() < 0.03:
            return r.choice(["undefined", "mathh", self.number(), '"base"', "true"])
        return r.choice(self.values)

    def slice(self) -> str:
        r = self.r
        a = r.choice(["", "0", "1", "2", "3", "4", "8", "99999999999"])
        b = r.choice(["", "0", "1", "2", "3", "4", "8"])
        return f"{a}:{b}"

    def call(self) -> str:
        r = self.r
        name = r.choice(list(REGISTRY)) if r.random() < 0.9 else r.choice(
            ["lineer", "stack", "ramp", "sweep", "foo"])
        method = REGISTRY.get(name)
        n = r.choice((1, 2, 2, 3))
        args = [self.tensor() for _ in range(n)]
        if method is not None:
            for p in method.params:
                if r.random() < 0.4:
                    args.append(f"{p.name}={self.param_value(p, n)}")
            if method.base == "delta" and r.random() < 0.6:
                args.append(f"base={self.atom()}")
        if r.random() < 0.05:
            args.append(f"bogus={self.number()}")
        return f"{name}({', '.join(args)})"

    def param_value(self, p, n: int) -> str:
        r = self.r
        if self.params and r.random() < 0.15:
            return r.choice(self.params)
        if p.choices and r.random() < 0.7:
            return f'"{r.choice(p.choices)}"'
        if p.type == "bool":
            return r.choice(["true", "false", "1"])
        if p.type == "string":
            return r.choice(STRINGS)
        if p.per_input and r.random() < 0.3:
            return "[" + ", ".join(self.number() for _ in range(r.choice((n, n, n + 1)))) + "]"
        if p.rampable and r.random() < 0.15:
            return f"ramp({', '.join(self.number() for _ in range(r.randint(0, 3)))})"
        if p.min is not None and p.max is not None and r.random() < 0.6:
            return repr(round(r.uniform(p.min, p.max), 3))
        return self.number()

    def number(self) -> str:
        r = self.r
        if r.random() < 0.7:
            return repr(round(r.uniform(0, 1), 3))
        x = r.choice(NUMBERS)
        if r.random() < 0.2:
            x = f"{x} {r.choice('+-*/')} {r.choice(NUMBERS)}"
        return x

    def scalar(self) -> str:
        r = self.r
        return r.choice([self.number(), r.choice(STRINGS), "true", "false",
                         "[" + ", ".join(self.number() for _ in range(r.randint(0, 2))) + "]"])


class TameGen(RecipeGen):
    """Recipes that mostly check: models of one architecture, calls with the arity,
    parameters and ranges their methods declare. They reach the planner and the builder,
    where the hostile ones stop at a diagnostic."""

    def recipe(self) -> str:
        r = self.r
        models = ["base"] + r.sample(("math", "code", "chat"), r.randint(1, 3))
        lines = [f'model {m} = "./ckpt/{m}"' for m in models]
        self.values = list(models)
        if r.random() < 0.3:
            lines.append(f"set seed = {r.randint(0, 99)}")
        for _ in range(r.randint(0, 3)):
            name = f"v{len(self.values)}"
            lines.append(f"let {name} = {self.tensor()}")
            self.values.append(name)
        for i in range(r.randint(1, 2)):
            opts = f' {{ dtype = {r.choice(STRINGS[:3])} }}' if r.random() < 0.3 else ""
            lines.append(f"output o{i} = {self.tensor()}{self.wheres()}{opts}")
        return "\n".join(lines) + "\n"

    def wheres(self) -> str:
        if self.r.random() < 0.8:
            return ""
        sel = self.r.choice(['"*.mlp.*"', '"*.self_attn.*"', "layers[0:2]"])
        return f"\n    where {sel} {{ weight = {round(self.r.uniform(0.1, 0.9), 2)} }}"

    def tensor(self) -> str:
        r = self.r
        self.depth += 1
        try:
            k = r.random()
            if self.depth > 2 or k < 0.2:
                return r.choice(self.values)
            if k < 0.75:
                return self.call()
            a, b = r.sample(self.values, 2) if len(self.values) > 1 else (self.values[0],) * 2
            if k < 0.9:
                w = round(r.uniform(0, 1), 2)
                return f"{w} * {a} + {round(1 - w, 2)} * {b}"
            return f"stack({a}.layers[0:2], {b}.layers[2:4])"
        finally:
            self.depth -= 1

    def call(self) -> str:
        r = self.r
        name = r.choice(list(REGISTRY))
        method = REGISTRY[name]
        hi = method.max_inputs or 3
        n = r.randint(max(method.min_inputs, 2 if hi >= 2 else 1), min(hi, 3))
        args = [self.tensor() for _ in range(n)]
        for p in method.params:
            if p.required or r.random() < 0.4:
                v = self.tame_value(p, n)
                if v is not None:
                    args.append(f"{p.name}={v}")
        if method.base == "delta":
            args.append("base=base")
        return f"{name}({', '.join(args)})"

    def tame_value(self, p, n: int):
        r = self.r
        if p.choices:
            return f'"{r.choice(p.choices)}"'
        if p.type == "bool":
            return r.choice(["true", "false"])
        if p.type == "string":
            return None
        lo = p.min if p.min is not None else 0.0
        hi = p.max if p.max is not None else lo + 1.0
        if p.type == "int":
            return str(r.randint(int(max(lo, 1)), int(min(hi, 10))))

        def one():
            x = round(r.uniform(lo, hi), 3)
            return repr(min(max(x, lo + 0.01 if p.min_open else lo), hi))

        if p.per_input and r.random() < 0.3:
            return "[" + ", ".join(one() for _ in range(n)) + "]"
        if p.rampable and r.random() < 0.2:
            return f"ramp({one()}, {one()})"
        return one()


def mutate_text(text: str, r: random.Random) -> str:
    """A few character-level edits: deletions, duplications, swaps, inserted tokens."""
    s = list(text)
    for _ in range(r.randint(1, 4)):
        if not s:
            break
        i = r.randrange(len(s))
        k = r.random()
        if k < 0.3:
            del s[i]
        elif k < 0.5:
            s.insert(i, s[i])
        elif k < 0.7:
            j = r.randrange(len(s))
            s[i], s[j] = s[j], s[i]
        else:
            s.insert(i, r.choice(["(", ")", "[", "]", "{", "}", ",", "=", '"', "#", "\n",
                                  "where", "let ", "output ", ".layers", "\x00", "é", "\t",
                                  "1e400", "9" * 30]))
    return "".join(s)


def recipe(seed: int) -> str:
    """The recipe of case `seed`: in turn tame (mostly checks), hostile, and mutated."""
    if seed % 3 == 1:
        return TameGen(seed).recipe()
    text = RecipeGen(seed).recipe()
    if seed % 3 == 2:
        text = mutate_text(text, random.Random(seed * 7919 + 1))
    return text


# --- corrupted checkpoints ----------------------------------------------------------------

def corrupt_checkpoint(src: Path, dst: Path, seed: int) -> str:
    """Copy the checkpoint folder `src` to `dst` and damage it one way, chosen by `seed`;
    returns what was done (for failure messages)."""
    r = random.Random(seed)
    shutil.copytree(src, dst)
    st = dst / "model.safetensors"
    raw = bytearray(st.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    names = [k for k in header if k != "__metadata__"]
    kind = r.randrange(14)
    if kind == 0:  # truncate the data
        cut = r.randrange(8 + n, len(raw))
        st.write_bytes(raw[:cut])
        return f"truncated at {cut}"
    if kind == 1:  # truncate the header
        cut = r.randrange(0, 8 + n)
        st.write_bytes(raw[:cut])
        return f"header truncated at {cut}"
    if kind == 2:  # a header length beyond the file
        raw[:8] = struct.pack("<Q", r.choice([n + 1, len(raw), 2 ** 40, 2 ** 64 - 1]))
        st.write_bytes(raw)
        return "header length"
    if kind == 3:  # random bytes in the header
        for _ in range(r.randint(1, 5)):
            raw[8 + r.randrange(n)] = r.randrange(256)
        st.write_bytes(raw)
        return "header bytes"
    t = header[r.choice(names)]
    if kind == 4:
        t["dtype"] = r.choice(["F64", "I8", "BOOL", "F8_E4M3", "Q4", "", 5, None, "BF16"])
        what = f"dtype {t['dtype']!r}"
    elif kind == 5:
        t["shape"] = r.choice([[], [0], [1, 2, 3], [-1, 4], [2 ** 62, 2 ** 62], "4", [1.5]])
        what = f"shape {t['shape']!r}"
    elif kind == 6:
        a, b = t["data_offsets"]
        t["data_offsets"] = r.choice([[b, a], [a, b + 4], [0, 0], [a - 1, b], [a, 2 ** 63],
                                      [a], "x", [a + 0.5, b]])
        what = f"offsets {t['data_offsets']!r}"
    elif kind == 7:
        other = header[r.choice(names)]
        t["data_offsets"] = list(other["data_offsets"])
        what = "overlapping offsets"
    elif kind == 8:
        header[r.choice(["", "\x1b[31mred", "a" * 1000, "model.layers.99.x.weight"])] = dict(t)
        what = "extra tensor"
    elif kind == 9:
        header["__metadata__"] = r.choice([{"format": 5}, [], "x", {"k": {"nested": 1}}])
        what = "metadata"
    elif kind == 10:  # config.json
        cfg = json.loads((dst / "config.json").read_text())
        key = r.choice(list(cfg) + ["num_hidden_layers", "tie_word_embeddings"])
        cfg[key] = r.choice([None, -1, 0, 1e9, "x", [], {"a": [[[]]]}, True, 2 ** 70])
        (dst / "config.json").write_text(json.dumps(cfg))
        return f"config {key}={cfg[key]!r}"
    elif kind == 11:
        (dst / "config.json").write_text(r.choice(["", "{", "[]", "null", "{" * 200,
                                                   '{"model_type": "llama"'] ))
        return "config text"
    elif kind == 12:  # a shard index naming a missing or wrong file
        index = {"metadata": {}, "weight_map": {k: r.choice(["model.safetensors", "missing",
                                                             "../x", ""]) for k in names}}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index))
        return "index"
    else:
        st.unlink()
        (dst / "pytorch_model.bin").write_bytes(bytes(r.randrange(256) for _ in range(64)))
        return "garbage .bin"
    body = json.dumps(header).encode()
    st.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])
    return what
