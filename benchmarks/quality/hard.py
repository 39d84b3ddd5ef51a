"""The harder merge-quality experiment: six tasks on the same sentences, where merging interferes.

Run it as ``bash benchmarks/quality/run.sh --hard`` (``--hard --smoke`` for a tiny pipeline
test). Everything lives under benchmarks/work/quality_hard/ (git-ignored); the report goes to
the part of docs/quality.md between ``<!-- hard:begin -->`` and ``<!-- hard:end -->`` and to
docs/img/quality_hard.png.

Every task labels the *same* generated sentences, "the fox was chased by the nurse
twenty three times", by a different rule, and every label set is a yes/no:

* ``doer``         - is the one who did it an animal (the voice decides which noun that is);
* ``target``       - is the one it was done to an animal;
* ``same``         - are both nouns of the same kind (two people or two animals);
* ``parity``       - is the number of times odd;
* ``first_voice``  - the first noun is an animal in an active sentence, a person in a passive
  one (first noun XOR passive);
* ``second_voice`` - the same for the second noun.

The rules read the same few words (the two nouns, "was ... by", the last digit) and combine
them differently, several as exclusive-ors that no linear probe on the pretrained sentence
embedding can read. A fine-tune for one rule moves the shared encoder in ways the others
must undo: this is the interference the 4-task experiment lacks.

Protocol as in run.py (frozen linear-probe heads, whole encoder fine-tuned per task and
seed, merged encoders read by each task's head), plus the statistics of the data-aware
methods: Gram matrices with ``mergec stats --kind gram`` on each fine-tune and its task's
training sentences, and the diagonal Fisher information of each fine-tune's classifier
(encoder + mean pooling + its frozen head), computed here and written in mergec's statistics
format (``mergec stats`` computes Fisher for models with a head of their own; these encoders
keep their heads outside the checkpoint, so it refuses them with E452).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import run as base_run
import tasks as task_data
import training as tr
from run import Config, Experiment, MergeMethod, log, mean, mergec_exe, runnable_methods, std

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
WORK = REPO / "benchmarks" / "work" / "quality_hard"
DOC = REPO / "docs" / "quality.md"
PLOT = REPO / "docs" / "img" / "quality_hard.png"
BEGIN, END = "<!-- hard:begin -->", "<!-- hard:end -->"

# -- the tasks ----------------------------------------------------------------------------------

_PEOPLE = ("boy girl doctor farmer teacher child woman man nurse baker sailor hunter king "
           "student").split()
_ANIMALS = "dog cat horse snake bee goose bull wolf fox bear monkey rat lion spider".split()
_ACTIONS = (("chased", "chased"), ("bit", "bitten"), ("pushed", "pushed"), ("kicked", "kicked"),
            ("followed", "followed"), ("scared", "scared"), ("saw", "seen"), ("woke", "woken"),
            ("found", "found"), ("watched", "watched"), ("attacked", "attacked"),
            ("ignored", "ignored"), ("fed", "fed"), ("hurt", "hurt"))

HARD_TASKS: tuple[str, ...] = ("doer", "target", "same", "parity", "first_voice",
                               "second_voice")
CLASSES = {"doer": ("person", "animal"), "target": ("person", "animal"),
           "same": ("different", "same"), "parity": ("even", "odd"),
           "first_voice": ("no", "yes"), "second_voice": ("no", "yes")}


def _sentence(rng: random.Random) -> tuple[str, dict[str, int]]:
    a_animal, b_animal = rng.random() < 0.5, rng.random() < 0.5
    a = rng.choice(_ANIMALS if a_animal else _PEOPLE)
    b = rng.choice(_ANIMALS if b_animal else _PEOPLE)
    active, passive = rng.choice(_ACTIONS)
    is_passive = rng.random() < 0.5
    n = rng.randrange(2, 100)
    times = task_data.number_words(n)
    if is_passive:
        text = f"the {a} was {passive} by the {b} {times} times"
        doer, target = b_animal, a_animal
    else:
        text = f"the {a} {active} the {b} {times} times"
        doer, target = a_animal, b_animal
    odd = n % 2 == 1
    labels = {"doer": int(doer), "target": int(target), "same": int(a_animal == b_animal),
              "parity": int(odd), "first_voice": int(a_animal != is_passive),
              "second_voice": int(b_animal != is_passive)}
    return text, labels


def make_hard_tasks(n_train: int, n_val: int, n_test: int,
                    seed: int = task_data.DATA_SEED) -> dict[str, task_data.Task]:
    """One pool of distinct sentences, split once; every task labels the same splits."""
    rng = random.Random(f"{seed}:hard")
    seen: set[str] = set()
    rows: list[tuple[str, dict[str, int]]] = []
    total = n_train + n_val + n_test
    while len(rows) < total:
        text, labels = _sentence(rng)
        if text not in seen:
            seen.add(text)
            rows.append((text, labels))
    parts = (rows[:n_train], rows[n_train:n_train + n_val], rows[n_train + n_val:])

    def split(part, name):
        return task_data.Split([t for t, _ in part], [lab[name] for _, lab in part])

    return {name: task_data.Task(name, CLASSES[name], *(split(p, name) for p in parts))
            for name in HARD_TASKS}


# -- configuration ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HardConfig(Config):
    def fingerprint(self, *parts: object) -> str:
        """run.py's key, with the code here that makes the data and the statistics (editing
        the report does not invalidate the cached fine-tunes)."""
        import hashlib
        import inspect

        code = "".join(inspect.getsource(f) for f in (_sentence, make_hard_tasks, fisher_stats))
        words = repr((_PEOPLE, _ANIMALS, _ACTIONS, HARD_TASKS, CLASSES))
        return super().fingerprint(hashlib.sha256((code + words).encode()).hexdigest(), *parts)


def hard_config(smoke: bool) -> Config:
    cfg = HardConfig(tasks=HARD_TASKS, n_train=512, n_val=96, n_test=200, max_len=24,
                 finetune=tr.FinetuneConfig(lr=2e-4, epochs=3, batch_size=32), epochs=(),
                 paint_task="", paint_alphas=())
    if smoke:
        cfg = dataclasses.replace(cfg, seeds=(0,), n_train=32, n_val=16, n_test=16,
                                  finetune=tr.FinetuneConfig(lr=2e-4, epochs=1, batch_size=32))
    return cfg


STATS_EXAMPLES = 64  # examples per fine-tune for the Gram and Fisher statistics


@dataclasses.dataclass(frozen=True)
class HardMethod(MergeMethod):
    @property
    def recipe(self) -> Path:
        return WORK / "recipes" / f"{self.name}.merge"


# The call of each method (on the six inputs of one seed); `{inputs}` and `{stats}` are
# filled per seed. Grids are small: each point builds 3 outputs of 6 x 22.7 M parameters.
HARD_METHODS: tuple[tuple[HardMethod, str], ...] = (
    (HardMethod("average", "Simple average", "linear"), "linear({inputs})"),
    (HardMethod("task_arithmetic", "Task arithmetic", "task_arithmetic",
                {"lam": (0.3, 0.5, 0.8)}),
     "task_arithmetic({inputs}, base=base, lambda=lam)"),
    (HardMethod("ties", "TIES", "ties", {"density": (0.2,), "lam": (0.7, 1.0)}),
     "ties({inputs}, base=base, density=density, lambda=lam)"),
    (HardMethod("dare_ties", "DARE-TIES", "dare_ties", {"density": (0.3,), "lam": (0.7, 1.0)}),
     "dare_ties({inputs}, base=base, density=density, lambda=lam)"),
    (HardMethod("iso_c", "Iso-C", "iso_c", {"lam": (0.6, 1.0)}),
     "iso_c({inputs}, base=base, lambda=lam)"),
    (HardMethod("fisher", "Fisher merging", "fisher"),
     "fisher({inputs}, stats=[{fisher}], fallback=linear({inputs}))"),
    (HardMethod("regmean", "RegMean", "regmean", {"reduce": (0.9,)}),
     "regmean({inputs}, stats=[{gram}], reduce=reduce, fallback=linear({inputs}))"),
    # Last and one setting: mergec's tsv took 250 s for the three outputs here (6 inputs each),
    # more than all the other methods' builds together.
    (HardMethod("tsv", "TSV-Merge", "tsv", {"lam": (0.6,)}),
     "tsv({inputs}, base=base, lambda=lam)"),
)


def write_recipes(cfg: Config) -> None:
    d = WORK / "recipes"
    d.mkdir(parents=True, exist_ok=True)
    head = ["# Generated by benchmarks/quality/hard.py (the harder quality experiment).",
            'model base = "../ckpt/pretrained"']
    for s in cfg.seeds:
        for t in cfg.tasks:
            head.append(f'model s{s}_{t} = "../ckpt/seed{s}/{t}"')
    for m, call in HARD_METHODS:
        lines = list(head)
        if m.registry in ("fisher", "regmean"):
            kind = "fisher" if m.registry == "fisher" else "gram"
            for s in cfg.seeds:
                for t in cfg.tasks:
                    lines.append(f'stats s{s}_{t}_{kind} = "../stats/{kind}/seed{s}/{t}"')
        for k, vals in m.grid.items():
            lines.append(f"param {k} = {vals[0]:g}")
        if m.registry.startswith("dare"):
            lines.append("set seed = 0")
        for s in cfg.seeds:
            inputs = ", ".join(f"s{s}_{t}" for t in cfg.tasks)
            expr = call.format(inputs=inputs,
                               fisher=", ".join(f"s{s}_{t}_fisher" for t in cfg.tasks),
                               gram=", ".join(f"s{s}_{t}_gram" for t in cfg.tasks))
            lines.append(f"output seed{s} = {expr} {{\n    tokenizer = base\n    config    = base\n}}")
        (d / f"{m.name}.merge").write_text("\n".join(lines) + "\n")


# -- statistics -----------------------------------------------------------------------------

def fisher_stats(ckpt: Path, data: tr.Encoded, head: dict[str, torch.Tensor], out: Path) -> None:
    """Diagonal Fisher of the classifier head(normalize(mean_pool(encoder(x)))): for each
    example, sum over the classes y of p(y|x) (d log p(y|x) / dP)^2 (the exact expectation
    over the model's prediction, as Matena & Raffel), averaged over the examples."""
    from safetensors import safe_open

    from mergec.io.stats_files import model_fingerprint, write_stats

    enc = tr.load_encoder(ckpt)
    enc.eval()
    # The embedding tables are left out (their entries take the fallback): their gradients
    # are 12 M values per example, most of them zero, and make this several times slower.
    for n, p in enc.named_parameters():
        p.requires_grad_(not n.startswith("embeddings."))
    params = {n: p for n, p in enc.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros_like(p) for n, p in params.items()}
    unused: set[str] = set()
    if head["weight"].shape[0] != 2:
        raise ValueError("fisher_stats handles two-class heads")
    for i in range(len(data)):
        ids, mask = tr.collate([data.ids[i]])
        z = tr.logits(tr.embed(enc, ids, mask), head)[0]
        p = F.softmax(z, -1).detach()
        # Two classes: d log p(1|x) = p0 d(z1 - z0) and d log p(0|x) = -p1 d(z1 - z0), so
        # sum_y p(y|x) (d log p(y|x))^2 = p0 p1 (d(z1 - z0))^2: one backward pass.
        grads = torch.autograd.grad(z[1] - z[0], list(params.values()), allow_unused=True)
        w = (p[0] * p[1]).item()
        for n, g in zip(params, grads):
            if g is None:  # the pooler: the classifier does not use it
                unused.add(n)
            else:
                acc[n] += w * g.pow(2)
    with safe_open(str(ckpt / "model.safetensors"), "np") as f:
        names = set(f.keys())
        shapes = [(k, f.get_slice(k).get_shape()) for k in f.keys()]
    tensors = {n: (a / len(data)).numpy() for n, a in acc.items()
               if n in names and n not in unused}
    write_stats(out, "fisher", len(data), model_fingerprint(shapes), tensors,
                {"fisher": "expected", "source": str(ckpt)}, force=True)


class HardExperiment(Experiment):
    def data(self) -> None:
        t0 = time.time()
        cfg = self.cfg
        self.tasks = make_hard_tasks(cfg.n_train, cfg.n_val, cfg.n_test)
        self.pre_dir = tr.pretrained_dir()
        tok = tr.load_tokenizer(self.pre_dir)
        self.enc = {split: {t: tr.encode(tok, getattr(task, split), cfg.max_len)
                            for t, task in self.tasks.items()}
                    for split in ("train", "val", "test")}
        self.timings["data"] = time.time() - t0

    def statistics(self) -> None:
        t0 = time.time()
        n = min(STATS_EXAMPLES, self.cfg.n_train)
        fp = self.cfg.fingerprint("stats", n)
        n_done = 0
        for seed in self.cfg.seeds:
            for t in self.cfg.tasks:
                ckpt = self.ft_dir(seed, t)
                ft_fp = json.loads((ckpt / "finetune.json").read_text())["fingerprint"]
                gdir = self.work / "stats" / "gram" / f"seed{seed}" / t
                fdir = self.work / "stats" / "fisher" / f"seed{seed}" / t
                mark = self.work / "stats" / f"seed{seed}_{t}.json"
                key = {"fingerprint": fp, "finetune": ft_fp}
                if mark.exists() and json.loads(mark.read_text()) == key:
                    continue
                data_file = self.work / "stats" / f"{t}.jsonl"
                data_file.parent.mkdir(parents=True, exist_ok=True)
                task = self.tasks[t]
                data_file.write_text("".join(
                    json.dumps({"text": x, "label": y}) + "\n"
                    for x, y in zip(task.train.texts[:n], task.train.labels[:n])))
                cmd = [mergec_exe(), "stats", str(ckpt), "--data", str(data_file),
                       "--kind", "gram", "--out", str(gdir), "--max-examples", str(n),
                       "--max-length", str(self.cfg.max_len), "--batch-size", "32",
                       "--force", "--quiet"]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise RuntimeError(f"mergec stats failed:\n{proc.stdout}\n{proc.stderr}")
                small = tr.Encoded(self.enc["train"][t].ids[:n], self.enc["train"][t].labels[:n])
                fisher_stats(ckpt, small, self.head[t], fdir)
                mark.write_text(json.dumps(key))
                n_done += 1
        log(f"statistics: {n_done} fine-tunes ({time.time() - t0:.0f}s)")
        self.timings["statistics"] = time.time() - t0

    def merges(self, only: set[str] | None, keep: bool) -> None:
        t0 = time.time()
        write_recipes(self.cfg)
        ok, _ = runnable_methods()
        self.results["methods"] = {}
        self.results["pending"] = []
        for m, _call in HARD_METHODS:
            if only and m.name not in only:
                continue
            if m.registry not in ok:
                self.results["pending"].append(m.name)
                continue
            try:
                self.results["methods"][m.name] = self.run_method(m, keep)
            except RuntimeError as e:
                log(f"{m.name}: FAILED\n{e}")
                self.results["methods"][m.name] = {"error": str(e)[-2000:]}
        self.timings["merges"] = time.time() - t0


# -- report ---------------------------------------------------------------------------------

PUBLISHED = (("RegMean", 82.4), ("TIES", 72.2), ("Task arithmetic", 68.0),
             ("Simple average", 66.5))


def _rows(results: dict) -> list[tuple[str, dict]]:
    out = [("Pretrained + linear probe", results["pretrained"]["test"]),
           ("Individual fine-tunes", results["finetuned"]["test"])]
    for m, _ in HARD_METHODS:
        r = results["methods"].get(m.name)
        if r and "test" in r:
            out.append((m.label, r["test"]))
    return out


def render(results: dict) -> str:
    tasks = results["config"]["tasks"]
    seeds = [str(s) for s in results["config"]["seeds"]]
    pm = (lambda xs: f"{mean(xs) * 100:.1f} ± {std(xs) * 100:.1f}") if len(seeds) > 1 else \
        (lambda xs: f"{mean(xs) * 100:.1f}")
    lines = [f"Test accuracy (%), {'mean ± std over ' + str(len(seeds)) + ' seeds' if len(seeds) > 1 else 'one seed'} "
             f"({results['config']['n_test']} test sentences per task; chance is 50):", "",
             "| method | " + " | ".join(tasks) + " | **average** |",
             "|---" * (len(tasks) + 2) + "|"]
    avgs = {}
    for label, test in _rows(results):
        cells = [pm([test[s][t] for s in seeds]) for t in tasks]
        per_seed = [mean(test[s][t] for t in tasks) for s in seeds]
        avgs[label] = mean(per_seed)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | **{pm(per_seed)}** |")
    lines += ["", "Settings chosen on the validation split (per seed):", ""]
    for m, _ in HARD_METHODS:
        r = results["methods"].get(m.name)
        if r and "chosen" in r and m.grid:
            ch = "; ".join(f"seed {s}: " + ", ".join(f"{k}={v:g}" for k, v in c.items())
                           for s, c in r["chosen"].items())
            lines.append(f"- {m.label}: {ch}")
        elif r and "error" in r:
            lines.append(f"- {m.label}: FAILED ({r['error'][-200:]})")
    merged = [(lab, a) for lab, a in avgs.items() if lab not in
              ("Pretrained + linear probe", "Individual fine-tunes")]
    merged.sort(key=lambda x: -x[1])
    lines += ["", "Ordering of the merges here (average accuracy) next to the published one "
              "(FusionBench, ViT-B/32, 8 tasks):", "",
              "| rank | here | published |", "|---|---|---|"]
    for i in range(max(len(merged), len(PUBLISHED))):
        a = f"{merged[i][0]} {merged[i][1] * 100:.1f}" if i < len(merged) else ""
        b = f"{PUBLISHED[i][0]} {PUBLISHED[i][1]}" if i < len(PUBLISHED) else ""
        lines.append(f"| {i + 1} | {a} | {b} |")
    runs = results.get("runs") or [{"command": results["command"],
                                     "timings": results["timings"],
                                     "load_average": results["load_average"]}]
    lines += ["", f"Machine: {results['machine']}."]
    for r in runs:
        tm = r["timings"]
        lines.append(
            f"- `{r['command']}`: {tm['total'] / 60:.1f} min wall ({tm.get('cpu', 0) / 60:.1f} "
            f"min CPU); fine-tuning {tm.get('finetune', 0) / 60:.1f} min "
            f"({tm.get('finetune_new', 0)} new fine-tunes), statistics "
            f"{tm.get('statistics', 0) / 60:.1f} min, merges and evaluation "
            f"{tm.get('merges', 0) / 60:.1f} min; load average "
            f"{r['load_average']['start'][0]:.1f} at the start.")
    if len(runs) > 1:
        lines.append(f"- together: {sum(r['timings']['total'] for r in runs) / 60:.1f} min wall.")
    lines.append("")
    return "\n".join(lines), avgs


def plot(results: dict, avgs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = results["config"]["tasks"]
    seeds = [str(s) for s in results["config"]["seeds"]]
    rows = _rows(results)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels = [lab for lab, _ in rows]
    ys = [[mean(test[s][t] for t in tasks) * 100 for s in seeds] for _, test in rows]
    x = range(len(rows))
    ax.bar(x, [mean(y) for y in ys], yerr=[std(y) for y in ys], capsize=4,
           color=["#999999", "#444444"] + ["#4477aa"] * (len(rows) - 2))
    for i, y in enumerate(ys):
        ax.plot([i] * len(y), y, "k.", ms=4)
    ax.set_xticks(list(x), labels, rotation=30, ha="right")
    ax.set_ylim(40, 102)
    ax.axhline(50, color="gray", lw=0.8, ls=":")
    ax.set_ylabel("average test accuracy over 6 tasks (%)")
    ax.set_title(f"Six interfering tasks on MiniLM ({len(seeds)} seed{'s' * (len(seeds) > 1)}; "
                 "bars: mean, dots: seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict, docs: bool) -> None:
    body, avgs = render(results)
    (WORK / "results.md").write_text(body)
    if not docs:
        return
    plot(results, avgs, PLOT)
    text = DOC.read_text()
    block = f"{BEGIN}\n\n![average accuracy per method](img/quality_hard.png)\n\n{body}\n{END}"
    if BEGIN in text and END in text:
        import re

        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text,
                      flags=re.S)
        DOC.write_text(text)


def main(args) -> int:
    import os
    import resource

    if args.clean and WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True, exist_ok=True)
    cfg = hard_config(args.smoke)
    exp = HardExperiment(cfg, WORK)
    exp.smoke = args.smoke
    load_start = os.getloadavg()
    log(f"hard experiment; machine: {base_run.machine()}; load average {load_start[0]:.1f}")
    exp.data()
    exp.heads()
    exp.finetunes()
    exp.baselines()
    exp.statistics()
    only = {x for x in args.methods.split(",") if x} or None
    exp.merges(only, args.keep_merged)
    exp.timings["total"] = time.time() - base_run.T0
    ru_self = resource.getrusage(resource.RUSAGE_SELF)
    ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    exp.timings["cpu"] = (ru_self.ru_utime + ru_self.ru_stime + ru_kids.ru_utime
                          + ru_kids.ru_stime)
    exp.results["load_average"] = {"start": load_start, "end": os.getloadavg()}
    exp.results["timings"] = exp.timings
    exp.results["machine"] = base_run.machine()
    exp.results["smoke"] = args.smoke
    exp.results["command"] = " ".join(["bash benchmarks/quality/run.sh", *sys.argv[1:]])
    res_path = WORK / "results.json"
    if only and res_path.exists():  # a run of some methods keeps the others' results
        old = json.loads(res_path.read_text())
        if old.get("config") == exp.results["config"]:
            for k, v in old.get("methods", {}).items():
                exp.results["methods"].setdefault(k, v)
            exp.results.setdefault("runs", old.get("runs", []))
    exp.results.setdefault("runs", []).append(
        {"command": exp.results["command"], "timings": exp.timings,
         "load_average": exp.results["load_average"]})
    res_path.write_text(json.dumps(exp.results, indent=1))
    report(exp.results, docs=not (args.no_docs or args.smoke))
    log(f"done in {exp.timings['total']:.0f}s")
    return 0


if __name__ == "__main__":  # re-render the table and plot from the last results.json
    report(json.loads((WORK / "results.json").read_text()), docs=True)
