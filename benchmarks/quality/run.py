"""Merge quality on real fine-tunes of all-MiniLM-L6-v2, merged with ``mergec build``.

Run it as ``bash benchmarks/quality/run.sh`` (which installs the experiment's requirements into
the project venv first) or directly ``.venv/bin/python benchmarks/quality/run.py``.

Stages (everything lives under benchmarks/work/quality/, git-ignored):

1. data      four generated tasks (tasks.py), tokenized once;
2. heads     a linear probe per task on the frozen pretrained encoder (weight decay chosen on
             validation); these heads are fixed for the whole experiment;
3. finetune  each task x seed: the whole encoder fine-tuned with the task's head frozen, saved as
             a Hugging Face checkpoint (ckpt/seed<S>/<task>/) - cached: a rerun with the same
             configuration reuses them;
4. merges    one recipe per method under recipes/, built with ``mergec build --set ...`` over
             a small grid; per seed the setting with the best validation average is kept and
             scored on the test split;
5. paint     recipes/paint.merge swept over alpha;
6. report    results.json, results.md, docs/img/*.png and the generated part of docs/quality.md.

Methods that ``mergec methods`` marks "(declared; not yet runnable)" are skipped and listed as
pending; rerunning the command once they land adds them (fine-tunes come from the cache).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see run.sh

import tasks as task_data  # noqa: E402
import training as tr  # noqa: E402

import torch  # noqa: E402

WORK = REPO / "benchmarks" / "work" / "quality"
RECIPES = HERE / "recipes"
DOC = REPO / "docs" / "quality.md"
IMG = REPO / "docs" / "img"


# -- configuration ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    tasks: tuple[str, ...] = task_data.TASK_NAMES
    seeds: tuple[int, ...] = (0, 1, 2)
    n_train: int = 640
    n_val: int = 100
    n_test: int = 300
    max_len: int = 32
    probe_weight_decays: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
    # Each probe head (weights and bias) is rescaled so that its class vectors have this norm:
    # the predictions (hence the probe's accuracy) are unchanged, but a head fitted with almost
    # no weight decay can have norms in the hundreds, and fine-tuning against such a frozen
    # head is badly conditioned (it fails on some seeds). CLIP's zero-shot heads are likewise
    # unit class vectors times a fixed logit scale.
    head_norm: float = 20.0
    finetune: tr.FinetuneConfig = tr.FinetuneConfig(lr=2e-4, epochs=2, batch_size=32)
    # Like Ilharco et al., the number of epochs is set per task: agreement needs more steps.
    epochs: tuple[tuple[str, int], ...] = (("grammar", 4),)
    paint_task: str = "grammar"
    paint_alphas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

    def fingerprint(self, *parts: object) -> str:
        """A key for cached heads and fine-tunes: configuration and the code that makes them."""
        code = [hashlib.sha256((HERE / f).read_bytes()).hexdigest()
                for f in ("tasks.py", "training.py")]
        text = json.dumps([task_data.DATA_SEED, self.n_train, self.n_val, self.n_test,
                           self.max_len, dataclasses.asdict(self.finetune),
                           self.probe_weight_decays, self.head_norm, self.epochs, code,
                           *parts],
                          sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class MergeMethod:
    """One row of the table: a recipe under recipes/, the registry method it calls, its grid."""

    name: str          # row label and recipe file stem
    label: str
    registry: str      # mergec method name (to know whether it runs yet)
    grid: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @property
    def recipe(self) -> Path:
        return RECIPES / f"{self.name}.merge"

    def settings(self) -> list[dict[str, float]]:
        keys = list(self.grid)
        return [dict(zip(keys, vals)) for vals in itertools.product(*(self.grid[k] for k in keys))]


# Grids are small on purpose: a sparsifying merge of 4 x 22.7 M parameters takes mergec several
# seconds per output on 2 cores, and every grid point builds one output per seed.
METHODS: tuple[MergeMethod, ...] = (
    MergeMethod("average", "Simple average", "linear"),
    MergeMethod("task_arithmetic", "Task arithmetic", "task_arithmetic",
                {"lam": (0.5, 0.7, 1.0, 1.3, 1.6)}),
    MergeMethod("ties", "TIES", "ties", {"density": (0.1, 0.3), "lam": (1.0, 1.4, 1.8)}),
    MergeMethod("dare_ties", "DARE-TIES", "dare_ties",
                {"density": (0.3, 0.6), "lam": (1.1, 1.5)}),
    MergeMethod("model_stock", "Model stock", "model_stock"),
    MergeMethod("breadcrumbs", "Breadcrumbs", "breadcrumbs",
                {"density": (0.9,), "lam": (0.7, 1.0, 1.3)}),
    MergeMethod("dare_linear", "DARE + task arithmetic", "dare_linear",
                {"density": (0.5,), "lam": (0.7, 1.0, 1.3)}),
    MergeMethod("della", "DELLA", "della", {"density": (0.5,), "lam": (1.0, 1.4, 1.8)}),
)


# -- small helpers --------------------------------------------------------------------------

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def mergec_exe() -> str:
    exe = Path(sys.executable).with_name("mergec")
    return str(exe) if exe.exists() else "mergec"


def runnable_methods() -> tuple[set[str], set[str]]:
    """(runnable, declared-only) registry names, read from ``mergec methods``."""
    out = subprocess.run([mergec_exe(), "methods"], check=True, capture_output=True,
                         text=True).stdout
    ok, pending = set(), set()
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s", line)
        if m:
            (pending if "not yet runnable" in line else ok).add(m.group(1))
    return ok, pending


def fmt_value(v: float) -> str:
    return f"{v:g}"


def setting_key(setting: dict[str, float]) -> str:
    return "_".join(f"{k}{fmt_value(v)}" for k, v in setting.items()) or "default"


def mergec_build(recipe: Path, out_dir: Path, setting: dict[str, float]) -> float:
    cmd = [mergec_exe(), "build", str(recipe), "--out-dir", str(out_dir), "--force", "--quiet"]
    for k, v in setting.items():
        cmd += ["--set", f"{k}={fmt_value(v)}"]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"mergec build failed ({' '.join(cmd)}):\n{proc.stdout}\n{proc.stderr}")
    return time.time() - t0


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs)


def std(xs):
    xs = list(xs)
    if len(xs) < 2:
        return 0.0
    m = mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


# -- the experiment ------------------------------------------------------------------------

class Experiment:
    def __init__(self, cfg: Config, work: Path):
        self.cfg = cfg
        self.work = work
        self.timings: dict[str, float] = {}
        self.smoke = False
        self.results: dict = {"config": json.loads(json.dumps(dataclasses.asdict(cfg),
                                                               default=str))}

    # stage 1 -------------------------------------------------------------------------------
    def data(self) -> None:
        t0 = time.time()
        cfg = self.cfg
        self.tasks = {t: task_data.make_task(t, cfg.n_train, cfg.n_val, cfg.n_test)
                      for t in cfg.tasks}
        self.pre_dir = tr.pretrained_dir()
        tok = tr.load_tokenizer(self.pre_dir)
        self.enc = {split: {t: tr.encode(tok, getattr(task, split), cfg.max_len)
                            for t, task in self.tasks.items()}
                    for split in ("train", "val", "test")}
        self.timings["data"] = time.time() - t0

    # stage 2 -------------------------------------------------------------------------------
    def heads(self) -> None:
        t0 = time.time()
        base_dir = self.work / "ckpt" / "pretrained"
        if not (base_dir / "model.safetensors").exists():
            log("saving the pretrained encoder as a checkpoint (the merges' base)")
            tr.save_encoder(tr.load_encoder(self.pre_dir), self.pre_dir, base_dir)
        self.base_dir = base_dir
        head_dir = self.work / "heads"
        fp = self.cfg.fingerprint("heads")
        meta_path = head_dir / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        self.head = {}
        if meta.get("fingerprint") == fp and all((head_dir / f"{t}.safetensors").exists()
                                                 for t in self.cfg.tasks):
            self.head = {t: tr.load_head(head_dir / f"{t}.safetensors") for t in self.cfg.tasks}
            self.probe_info = meta["probes"]
            log("linear-probe heads: cached")
        else:
            log("training linear-probe heads on the frozen pretrained encoder")
            encoder = tr.load_encoder(base_dir)
            self.probe_info = {}
            for t, task in self.tasks.items():
                ftr = tr.features(encoder, self.enc["train"][t])
                fva = tr.features(encoder, self.enc["val"][t])
                best = None
                for wd in self.cfg.probe_weight_decays:
                    h = tr.train_probe(ftr, self.enc["train"][t].labels, task.num_classes, wd)
                    acc = tr.accuracy(fva, self.enc["val"][t].labels, h)
                    if best is None or acc > best[0]:
                        best = (acc, wd, h)
                norm = best[2]["weight"].norm(dim=1).mean().item()
                head = {k: v * (self.cfg.head_norm / norm) for k, v in best[2].items()}
                self.head[t] = head
                self.probe_info[t] = {"weight_decay": best[1], "val": best[0],
                                      "fitted_norm": norm}
                tr.save_head(head_dir / f"{t}.safetensors", head)
                log(f"  {t}: weight decay {best[1]:g}, val acc {best[0]:.3f}")
            meta_path.write_text(json.dumps({"fingerprint": fp, "probes": self.probe_info},
                                            indent=1))
        self.evaluator = tr.Evaluator(base_dir, self.head)
        self.timings["heads"] = time.time() - t0

    # stage 3 -------------------------------------------------------------------------------
    def ft_dir(self, seed: int, t: str) -> Path:
        return self.work / "ckpt" / f"seed{seed}" / t

    def finetunes(self) -> None:
        t0 = time.time()
        self.ft_scores: dict[int, dict[str, dict]] = {}
        n_done = 0
        for seed in self.cfg.seeds:
            self.ft_scores[seed] = {}
            for t in self.cfg.tasks:
                d = self.ft_dir(seed, t)
                fp = self.cfg.fingerprint("finetune", t, seed)
                meta_path = d / "finetune.json"
                meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
                full = t == self.cfg.paint_task
                if meta.get("fingerprint") == fp and (not full or "test_all" in meta):
                    self.ft_scores[seed][t] = meta
                    continue
                log(f"fine-tuning {t}, seed {seed}")
                epochs = dict(self.cfg.epochs).get(t, self.cfg.finetune.epochs)
                ft_cfg = dataclasses.replace(self.cfg.finetune, epochs=epochs)
                secs = tr.finetune(self.base_dir, self.enc["train"][t], self.head[t], seed,
                                   ft_cfg, d, log=lambda m: None)
                # Score the fine-tune on its own task (and on every task for the PAINT task).
                test = {t: self.enc["test"][t]} if not full else self.enc["test"]
                scores = self.evaluator.scores(d, test)
                meta = {"fingerprint": fp, "task": t, "seed": seed, "train_seconds": secs,
                        "test": scores[t], "val": self.evaluator.scores(
                            d, {t: self.enc["val"][t]})[t]}
                if full:
                    meta["test_all"] = scores
                meta_path.write_text(json.dumps(meta, indent=1))
                self.ft_scores[seed][t] = meta
                n_done += 1
                log(f"  {secs:.1f}s, test acc {scores[t]:.3f}")
        if n_done == 0:
            log("fine-tunes: all cached")
        self.timings["finetune"] = time.time() - t0
        self.timings["finetune_new"] = n_done

    # stage 4 -------------------------------------------------------------------------------
    def baselines(self) -> None:
        t0 = time.time()
        pre = self.evaluator.scores(self.base_dir, self.enc["test"])
        self.results["pretrained"] = {"test": {str(s): pre for s in self.cfg.seeds},
                                      "probes": self.probe_info}
        self.results["finetuned"] = {
            "test": {str(s): {t: self.ft_scores[s][t]["test"] for t in self.cfg.tasks}
                     for s in self.cfg.seeds},
            "train_seconds": {str(s): {t: self.ft_scores[s][t]["train_seconds"]
                                       for t in self.cfg.tasks} for s in self.cfg.seeds}}
        self.results["task_vectors"] = self.task_vector_stats()
        self.timings["baselines"] = time.time() - t0

    def task_vector_stats(self) -> dict:
        """Per seed: norms of the task vectors and their pairwise cosines (how much they clash)."""
        from safetensors.torch import load_file

        base = load_file(str(self.base_dir / "model.safetensors"))
        out = {"base_norm": torch.cat([v.float().flatten() for v in base.values()]).norm().item()}
        for seed in self.cfg.seeds:
            tv = {}
            for t in self.cfg.tasks:
                ft = load_file(str(self.ft_dir(seed, t) / "model.safetensors"))
                tv[t] = torch.cat([(ft[k].float() - base[k].float()).flatten()
                                   for k in sorted(base) if k in ft])
            norms = {t: v.norm().item() for t, v in tv.items()}
            cos = {f"{a}|{b}": (torch.dot(tv[a], tv[b]) / (norms[a] * norms[b])).item()
                   for i, a in enumerate(self.cfg.tasks) for b in self.cfg.tasks[i + 1:]}
            out[str(seed)] = {"norm": norms, "cosine": cos}
            del tv
        return out

    def merges(self, only: set[str] | None, keep: bool) -> None:
        t0 = time.time()
        ok, pending = runnable_methods()
        self.results["methods"] = {}
        self.results["pending"] = []
        for m in METHODS:
            if only and m.name not in only:
                continue
            if m.registry not in ok:
                log(f"{m.name}: `{m.registry}` is not runnable in this mergec yet - skipped")
                self.results["pending"].append(m.name)
                continue
            try:
                self.results["methods"][m.name] = self.run_method(m, keep)
            except RuntimeError as e:  # a build that fails is reported, not fatal
                log(f"{m.name}: FAILED\n{e}")
                self.results["methods"][m.name] = {"error": str(e)[-2000:]}
        self.timings["merges"] = time.time() - t0

    def run_method(self, m: MergeMethod, keep: bool) -> dict:
        t_method = time.time()
        root = self.work / "merged" / m.name
        if root.exists():
            shutil.rmtree(root)
        val_only = {t: self.enc["val"][t] for t in self.cfg.tasks}
        grid = []
        build_s = 0.0
        settings = m.settings()[:2] if self.smoke else m.settings()
        for setting in settings:
            out = root / setting_key(setting)
            build_s += mergec_build(m.recipe, out, setting)
            vals = {}
            for seed in self.cfg.seeds:
                vals[str(seed)] = self.evaluator.scores(out / f"seed{seed}", val_only)
            grid.append({"setting": setting, "val": vals})
            avgs = " ".join(f"{mean(v.values()):.3f}" for v in vals.values())
            log(f"{m.name} {setting_key(setting)}: val avg per seed {avgs}")
        chosen, test = {}, {}
        for seed in self.cfg.seeds:
            best = max(grid, key=lambda g: mean(g["val"][str(seed)].values()))
            chosen[str(seed)] = best["setting"]
            out = root / setting_key(best["setting"]) / f"seed{seed}"
            test[str(seed)] = self.evaluator.scores(out, self.enc["test"])
        if m.name == "average":
            self.checks(root / "default" / "seed0")
        if not keep:
            shutil.rmtree(root)
        res = {"grid": grid, "chosen": chosen, "test": test, "build_seconds": build_s,
               "seconds": time.time() - t_method}
        avg = mean(mean(v.values()) for v in test.values())
        log(f"{m.name}: chosen {chosen}, test avg {avg:.3f} ({res['seconds']:.0f}s)")
        return res

    def checks(self, merged: Path) -> None:
        """Cross-check one mergec output: it loads with transformers and equals the mean."""
        from safetensors.torch import load_file

        got = load_file(str(merged / "model.safetensors"))
        ins = [load_file(str(self.ft_dir(self.cfg.seeds[0], t) / "model.safetensors"))
               for t in self.cfg.tasks]
        diff = max((got[k].float() - sum(d[k].float() for d in ins) / len(ins)).abs().max().item()
                   for k in got)
        model = tr.load_encoder(merged)  # AutoModel.from_pretrained on mergec's output folder
        model.eval()
        data = self.enc["test"][self.cfg.tasks[0]]
        small = tr.Encoded(data.ids[:64], data.labels[:64])
        self.evaluator.load(merged)
        f1 = tr.features(model, small)
        f2 = tr.features(self.evaluator.encoder, small)
        feat_diff = (f1 - f2).abs().max().item()
        self.results["checks"] = {"average_vs_manual_mean_max_abs": diff,
                                  "automodel_vs_state_dict_feature_max_abs": feat_diff}
        log(f"check: mergec average vs manual mean, max |diff| {diff:.2e}; "
            f"AutoModel.from_pretrained features vs loaded state dict {feat_diff:.2e}")

    # stage 5 -------------------------------------------------------------------------------
    def paint(self, keep: bool) -> None:
        t0 = time.time()
        cfg = self.cfg
        t = cfg.paint_task
        recipe = RECIPES / "paint.merge"
        root = self.work / "merged" / "paint"
        curve = {}
        pre = self.results["pretrained"]["test"][str(cfg.seeds[0])]
        for alpha in cfg.paint_alphas:
            if alpha == 0.0:  # the pretrained encoder itself
                curve[str(alpha)] = {str(s): pre for s in cfg.seeds}
                continue
            if alpha == 1.0:  # the fine-tune itself
                curve[str(alpha)] = {str(s): self.ft_scores[s][t]["test_all"] for s in cfg.seeds}
                continue
            out = root / f"alpha{fmt_value(alpha)}"
            mergec_build(recipe, out, {"alpha": alpha})
            curve[str(alpha)] = {str(s): self.evaluator.scores(out / f"seed{s}", self.enc["test"])
                                 for s in cfg.seeds}
            if not keep:
                shutil.rmtree(out)
            a = mean(curve[str(alpha)][str(s)][t] for s in cfg.seeds)
            o = mean(mean(v for k, v in curve[str(alpha)][str(s)].items() if k != t)
                     for s in cfg.seeds)
            log(f"paint alpha {alpha}: {t} {a:.3f}, others {o:.3f}")
        self.results["paint"] = {"task": t, "curve": curve}
        self.timings["paint"] = time.time() - t0


# -- main ------------------------------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {torch.get_num_threads()} torch threads ({os.cpu_count()} CPUs visible), "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clean", action="store_true",
                    help="delete benchmarks/work/quality first (a cold run: fine-tunes redone)")
    ap.add_argument("--methods", default="",
                    help="comma-separated subset of merge methods (default: all that run)")
    ap.add_argument("--no-paint", action="store_true", help="skip the PAINT sweep")
    ap.add_argument("--keep-merged", action="store_true",
                    help="keep the merged checkpoints under benchmarks/work/quality/merged/")
    ap.add_argument("--no-docs", action="store_true",
                    help="do not write docs/img/*.png and the generated part of docs/quality.md")
    ap.add_argument("--smoke", action="store_true",
                    help="a tiny run to test the pipeline (tiny data, 2 grid points per method)")
    ap.add_argument("--hard", action="store_true",
                    help="the harder experiment instead: six tasks on the same sentences "
                         "(hard.py; benchmarks/work/quality_hard/)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("QUALITY_THREADS", 2)))
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the mergec subprocesses
    if args.hard:
        import hard

        return hard.main(args)
    if args.clean and WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True, exist_ok=True)

    cfg = Config()
    if args.smoke:
        cfg = dataclasses.replace(cfg, n_train=32, n_val=16, n_test=16, paint_alphas=(0.0, 0.5, 1.0))
    exp = Experiment(cfg, WORK)
    exp.smoke = args.smoke
    load_start = os.getloadavg()
    log(f"machine: {machine()}; load average {load_start[0]:.1f}")
    exp.data()
    exp.heads()
    exp.finetunes()
    exp.baselines()
    only = {x for x in args.methods.split(",") if x} or None
    exp.merges(only, args.keep_merged)
    if not args.no_paint:
        exp.paint(args.keep_merged)
    exp.timings["total"] = time.time() - T0
    ru_self = resource.getrusage(resource.RUSAGE_SELF)
    ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    exp.timings["cpu"] = (ru_self.ru_utime + ru_self.ru_stime + ru_kids.ru_utime
                          + ru_kids.ru_stime)
    exp.results["load_average"] = {"start": load_start, "end": os.getloadavg()}
    exp.results["timings"] = exp.timings
    exp.results["machine"] = machine()
    exp.results["cpus"] = os.cpu_count()
    exp.results["command"] = " ".join(["bash benchmarks/quality/run.sh", *(argv or sys.argv[1:])])

    # Merge with an earlier results.json so that a run limited to some methods keeps the rest.
    res_path = WORK / "results.json"
    if only and res_path.exists():
        old = json.loads(res_path.read_text())
        for k, v in old.get("methods", {}).items():
            exp.results["methods"].setdefault(k, v)
        if args.no_paint and "paint" in old:
            exp.results["paint"] = old["paint"]
        # A partial run keeps the full run's command and timings, which the docs report.
        exp.results["partial_run"] = {"command": exp.results["command"],
                                      "timings": exp.results["timings"]}
        for k in ("command", "timings", "load_average"):
            if k in old:
                exp.results[k] = old[k]
    res_path.write_text(json.dumps(exp.results, indent=1))
    log(f"wrote {res_path}")

    import report

    report.write(exp.results, WORK, None if args.no_docs else (DOC, IMG))
    log(f"done in {exp.timings['total']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
