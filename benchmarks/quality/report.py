"""Tables and plots from results.json (written by run.py).

``python benchmarks/quality/report.py`` re-renders them from the last run without rerunning.
The generated markdown goes to benchmarks/work/quality/results.md and, between the markers
``<!-- results:begin -->`` and ``<!-- results:end -->``, into docs/quality.md.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs)


def _std(xs):
    xs = list(xs)
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def _pm(xs, scale=100.0, digits=1):
    xs = [x * scale for x in xs]
    return f"{_mean(xs):.{digits}f} ± {_std(xs):.{digits}f}"


def rows(results: dict) -> list[tuple[str, str, dict | None]]:
    """(key, label, per-seed test scores or None when the method did not run)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import METHODS

    out = [("pretrained", "Pretrained + linear probe (zero-shot analogue)",
            results["pretrained"]["test"]),
           ("finetuned", "Individual fine-tunes (one model per task)",
            results["finetuned"]["test"])]
    for m in METHODS:
        r = results.get("methods", {}).get(m.name)
        out.append((m.name, m.label, r.get("test") if r and "test" in r else None))
    return out


def table(results: dict, normalized: bool) -> str:
    tasks = results["config"]["tasks"]
    seeds = [str(s) for s in results["config"]["seeds"]]
    ft = results["finetuned"]["test"]
    head = "| method | " + " | ".join(tasks) + " | **average** |"
    lines = [head, "|---" * (len(tasks) + 2) + "|"]
    pending = set(results.get("pending", []))
    for key, label, test in rows(results):
        if test is None:
            why = ("pending: not yet runnable in mergec" if key in pending
                   else "failed, see results.json" if key in results.get("methods", {})
                   else "not run")
            lines.append(f"| {label} | " + " | ".join("–" for _ in tasks) + f" | {why} |")
            continue

        def val(s, t):
            return test[s][t] / ft[s][t] if normalized else test[s][t]

        cells = [_pm([val(s, t) for s in seeds]) for t in tasks]
        avg = _pm([_mean(val(s, t) for t in tasks) for s in seeds])
        lines.append(f"| {label} | " + " | ".join(cells) + f" | **{avg}** |")
    return "\n".join(lines)


def chosen_table(results: dict) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import METHODS

    seeds = [str(s) for s in results["config"]["seeds"]]
    lines = ["| method | grid (validation) | chosen per seed | build time (s) |", "|---|---|---|---|"]
    for m in METHODS:
        r = results.get("methods", {}).get(m.name)
        if not r or "chosen" not in r:
            continue
        grid = ", ".join(f"{k} ∈ {{{', '.join(f'{v:g}' for v in vals)}}}"
                         for k, vals in m.grid.items()) or "none"
        chosen = "; ".join(
            f"s{s}: " + (", ".join(f"{k}={v:g}" for k, v in r["chosen"][s].items()) or "–")
            for s in seeds)
        n = len(r["grid"])
        lines.append(f"| {m.label} | {grid} | {chosen} | {r['build_seconds']:.0f} "
                     f"({n} build{'s' if n > 1 else ''}) |")
    return "\n".join(lines)


def grid_tables(results: dict) -> str:
    """Validation average (mean over seeds) of every grid point, one table per method."""
    seeds = [str(s) for s in results["config"]["seeds"]]
    parts = []
    for name, r in results.get("methods", {}).items():
        if "grid" not in r or len(r["grid"]) < 2:
            continue
        parts.append(f"`{name}`: " + ", ".join(
            ", ".join(f"{k}={v:g}" for k, v in g["setting"].items())
            + f" → {100 * _mean(_mean(g['val'][s].values()) for s in seeds):.1f}"
            for g in r["grid"]))
    return "\n\n".join(parts)


def paint_table(results: dict) -> str:
    p = results.get("paint")
    if not p:
        return "(PAINT sweep not run)"
    t = p["task"]
    tasks = results["config"]["tasks"]
    others = [x for x in tasks if x != t]
    seeds = [str(s) for s in results["config"]["seeds"]]
    lines = [f"| α | {t} (patched task) | others (mean) | " + " | ".join(others) + " |",
             "|---" * (len(others) + 3) + "|"]
    for a, per_seed in p["curve"].items():
        cells = [_pm([per_seed[s][t] for s in seeds]),
                 _pm([_mean(per_seed[s][o] for o in others) for s in seeds])]
        cells += [_pm([per_seed[s][o] for s in seeds]) for o in others]
        lines.append(f"| {float(a):g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def task_vector_text(results: dict) -> str:
    tv = results.get("task_vectors")
    if not tv:
        return ""
    seeds = [str(s) for s in results["config"]["seeds"] if str(s) in tv]
    tasks = results["config"]["tasks"]
    norms = ", ".join(f"{t} {_mean(tv[s]['norm'][t] for s in seeds):.2f}" for t in tasks)
    pairs = list(tv[seeds[0]]["cosine"])
    cos = ", ".join(f"{p.replace('|', '–')} {_mean(tv[s]['cosine'][p] for s in seeds):+.3f}"
                    for p in pairs)
    return (f"Task vectors (fine-tune − pretrained, all tensors), mean over seeds: L2 norms "
            f"{norms} (the pretrained weights: {tv['base_norm']:.0f}); pairwise cosines {cos}.")


def timings_text(results: dict) -> str:
    t = results.get("timings", {})
    parts = [f"{k} {v:.0f} s" for k, v in t.items()
             if k not in ("total", "finetune_new", "cpu") and isinstance(v, float)]
    load = results.get("load_average")
    load_text = (f"; load average (1 min) {load['start'][0]:.1f} at the start, "
                 f"{load['end'][0]:.1f} at the end, on {results.get('cpus', 2)} cores"
                 if load else "")
    return (f"wall **{t.get('total', 0):.0f} s** ({t.get('total', 0) / 60:.1f} min), CPU "
            f"{t.get('cpu', 0):.0f} s (this process and its mergec subprocesses){load_text}; "
            "stages: " + ", ".join(parts)
            + f"; fine-tunes trained in this run: {t.get('finetune_new', 0)}")


def markdown(results: dict, img_rel: str | None) -> str:
    cfg = results["config"]
    out = [f"Machine: {results.get('machine', '?')}.",
           f"Command: `{results.get('command', '')}`.",
           f"Time: {timings_text(results)}.", ""]
    if "checks" in results:
        c = results["checks"]
        out += [f"Cross-checks on seed 0: mergec's `linear` output vs the mean computed by hand, "
                f"max |Δ| = {c['average_vs_manual_mean_max_abs']:.1e}; sentence embeddings "
                f"from `AutoModel.from_pretrained(<mergec output>)` vs the tensors loaded "
                f"directly, max |Δ| = {c['automodel_vs_state_dict_feature_max_abs']:.1e}.", ""]
    if results.get("task_vectors"):
        out += [task_vector_text(results), ""]
    out += [f"### Test accuracy (%), mean ± std over {len(cfg['seeds'])} seeds", "",
            table(results, normalized=False), "",
            "### Normalized accuracy (% of the individual fine-tune's accuracy, per task and seed)",
            "", table(results, normalized=True), ""]
    if img_rel:
        out += [f"![average accuracy per method]({img_rel}/quality_methods.png)", ""]
    out += ["### Hyperparameters chosen on the validation split", "", chosen_table(results), "",
            "Validation average accuracy (%) of every grid point, mean over seeds:", "",
            grid_tables(results), "",
            f"### PAINT: patching the {results.get('paint', {}).get('task', '?')} fine-tune "
            "(test accuracy %, mean ± std over seeds)", "", paint_table(results), ""]
    if img_rel and results.get("paint"):
        out += [f"![PAINT curve]({img_rel}/quality_paint.png)", ""]
    return "\n".join(out)


def plots(results: dict, img: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    tasks = results["config"]["tasks"]
    seeds = [str(s) for s in results["config"]["seeds"]]
    labels, means, stds, colors = [], [], [], []
    for key, label, test in rows(results):
        if test is None:
            continue
        avgs = [_mean(test[s][t] for t in tasks) * 100 for s in seeds]
        labels.append(label.split(" (")[0].replace("Pretrained + linear probe", "Pretrained"))
        means.append(_mean(avgs))
        stds.append(_std(avgs))
        colors.append("#999999" if key == "pretrained" else "#333333" if key == "finetuned"
                      else "#4C72B0")
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.6), gridspec_kw={"width_ratios": [1, 1.4]})
    ax = axes[0]
    ypos = range(len(labels))[::-1]
    ax.barh(list(ypos), means, xerr=stds, color=colors, capsize=3)
    ax.set_yticks(list(ypos), labels)
    lo = min(means) - 10
    ax.set_xlim(max(0, lo), 104)
    for y, m, sd in zip(ypos, means, stds):
        ax.text(min(m + sd + 0.4, 100.2), y, f"{m:.1f}", va="center", fontsize=8)
    ax.set_xlabel("average test accuracy over 4 tasks (%)")
    ax.set_title("all-MiniLM-L6-v2, 4 tasks: merged encoders")

    ax = axes[1]
    present = [(k, lab, test) for k, lab, test in rows(results) if test is not None]
    width = 0.8 / len(present)
    cmap = plt.get_cmap("tab10")
    for i, (key, label, test) in enumerate(present):
        vals = [_mean(test[s][t] for s in seeds) * 100 for t in tasks]
        errs = [_std([test[s][t] * 100 for s in seeds]) for t in tasks]
        xs = [j + (i - len(present) / 2 + 0.5) * width for j in range(len(tasks))]
        ax.bar(xs, vals, width, yerr=errs, label=label.split(" (")[0], color=cmap(i % 10),
               capsize=1.5)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylim(40, 101)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("per task")
    ax.legend(fontsize=7, ncol=1, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(img / "quality_methods.png", dpi=110)
    plt.close(fig)

    p = results.get("paint")
    if not p:
        return
    t = p["task"]
    others = [x for x in tasks if x != t]
    alphas = [float(a) for a in p["curve"]]
    per = list(p["curve"].values())
    own = [[per_seed[s][t] * 100 for s in seeds] for per_seed in per]
    oth = [[_mean(per_seed[s][o] for o in others) * 100 for s in seeds] for per_seed in per]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    ax = axes[0]
    ax.errorbar(alphas, [_mean(x) for x in own], yerr=[_std(x) for x in own], marker="o",
                label=f"{t} (patched task)", capsize=3)
    ax.errorbar(alphas, [_mean(x) for x in oth], yerr=[_std(x) for x in oth], marker="s",
                label="other tasks (mean)", capsize=3)
    for o in others:
        ax.plot(alphas, [_mean(per_seed[s][o] * 100 for s in seeds) for per_seed in per],
                linestyle=":", linewidth=1, label=o)
    ax.set_xlabel("α  (0 = pretrained, 1 = fine-tuned)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"PAINT: pretrained + α · ({t} fine-tune − pretrained)")
    ax.legend(fontsize=8)
    ax = axes[1]
    xs, ys = [_mean(x) for x in oth], [_mean(x) for x in own]
    ax.plot(xs, ys, marker="o")
    for a, x, y in zip(alphas, xs, ys):
        ax.annotate(f"{a:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("accuracy on the other tasks (%)")
    ax.set_ylabel(f"accuracy on {t} (%)")
    ax.set_title("trade-off (labels: α)")
    fig.tight_layout()
    fig.savefig(img / "quality_paint.png", dpi=110)
    plt.close(fig)


def write(results: dict, work: Path, docs: tuple[Path, Path] | None) -> None:
    (work / "results.md").write_text(markdown(results, None))
    if docs is None:
        return
    doc, img = docs
    plots(results, img)
    if doc.exists():
        text = doc.read_text()
        if BEGIN in text and END in text:
            rel = Path("img")  # docs/quality.md -> docs/img
            body = markdown(results, str(rel))
            text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END),
                          lambda _: f"{BEGIN}\n\n{body}\n{END}", text, flags=re.S)
            doc.write_text(text)


if __name__ == "__main__":
    here = Path(__file__).resolve()
    repo = here.parent.parent.parent
    work = repo / "benchmarks" / "work" / "quality"
    res = json.loads((work / "results.json").read_text())
    write(res, work, (repo / "docs" / "quality.md", repo / "docs" / "img"))
    print((work / "results.md").read_text())
