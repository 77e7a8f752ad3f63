"""Markdown and HTML reports of pruning runs: what was pruned, what it cost, with plots.

A *run folder* is either one checkpoint written by ``reprune prune`` (it holds ``reprune_report.json``)
or a folder whose direct subfolders are such checkpoints (several methods and ratios). File names:

- ``<checkpoint>/reprune_report.json``: the pruning report (``reprune prune``), required;
- ``<checkpoint>/reprune_eval.json``: that checkpoint's evaluation (``reprune eval --json``), optional;
- ``<run_dir>/dense_eval.json``: the dense model's evaluation, the baseline, optional.

:func:`write_report` writes ``report.md`` (images linked relatively from ``report_assets/``),
``report.html`` (self-contained: the same images embedded as base64 data URIs) and the PNG plots in
``report_assets/``. Whatever is missing (evaluations, speed, dense baseline) is left out.
Accuracies are the tasks' ``acc``; a checkpoint's size on disk is its folder's files, less the
evaluation and report files; the dense size is ``bytes_on_disk`` of ``dense_eval.json``.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter, PercentFormatter

from reprune.config import PruneConfig
from reprune.record import DENSE_EVAL_FILE, EVAL_FILE, RECORD_FILE, LayerRecord, ParameterCounts, RunRecord

ASSETS_DIR = "report_assets"
OUTPUT_NAMES = frozenset({EVAL_FILE, DENSE_EVAL_FILE, "report.md", "report.html", ASSETS_DIR})
DASH = "—"


@dataclass
class Run:
    """One pruned checkpoint: its folder, run record and (optional) evaluation."""

    name: str
    path: Path
    record: RunRecord
    evaluation: dict[str, Any] | None

    @property
    def config(self) -> PruneConfig:
        return self.record.config

    @property
    def params(self) -> ParameterCounts:
        return self.record.parameters

    @property
    def label(self) -> str:
        return method_label(self.config)


# ---------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def find_runs(run_dir: str | Path) -> list[Run]:
    """The checkpoints of ``run_dir`` (itself, or its direct subfolders), sorted by method and ratio."""
    root = Path(run_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Run folder not found: {root}. Pass a checkpoint folder written by "
                                f"'reprune prune' or a folder of such checkpoints.")
    if (root / RECORD_FILE).is_file():
        folders = [root]
    else:  # hidden folders are e.g. save_pruned's unfinished '.name.partial-*' staging folders
        folders = [d for d in sorted(root.iterdir())
                   if d.is_dir() and not d.name.startswith(".") and (d / RECORD_FILE).is_file()]
    if not folders:
        raise FileNotFoundError(
            f"No {RECORD_FILE} in {root} or its subfolders. Pass a checkpoint folder written by "
            f"'reprune prune --out DIR' or a folder whose subfolders are such checkpoints.")
    runs = [Run(d.name, d, RunRecord.read(d), _read_json(d / EVAL_FILE)) for d in folders]
    return sorted(runs, key=lambda r: (r.label, r.config.ratio, r.name))


def method_label(config: PruneConfig) -> str:
    """criterion / reconstruction / allocation (/ recovery) (/ targets), e.g. ``flap / liar / uniform``.

    The criterion is the one of the pruned modules; ``attn:X+ffn:Y`` when heads and neurons differ.
    """
    targets = config.targets
    attention, ffn = config.criterion_for("attention"), config.criterion_for("ffn")
    criterion = {"attention": attention, "ffn": ffn}.get(targets, attention if attention == ffn
                                                             else f"attn:{attention}+ffn:{ffn}")
    parts = [criterion, config.reconstruction, config.allocation]
    if config.recovery != PruneConfig.recovery:  # a recovery was asked for
        parts.append(f"{config.recovery} recovery")
    if targets != "both":
        parts.append(f"{targets} only")
    return " / ".join(parts)


def checkpoint_bytes(path: Path) -> int:
    """Bytes of a checkpoint folder's files, without the evaluation and report files."""
    return sum(f.stat().st_size for f in path.rglob("*")
               if f.is_file() and f.relative_to(path).parts[0] not in OUTPUT_NAMES)


# a module's errors in the record, each a row key per kind (``attention_heldout_error``, ...)
ERROR_FIELDS = ("error_none", "error", "heldout_error_none", "heldout_error", "recovery_error_before",
                "recovery_error_after", "heldout_recovery_error_before", "heldout_recovery_error_after")


def block_rows(record: RunRecord) -> list[dict[str, Any]]:
    """Per block: heads and neurons before/after and the errors of its pruned modules (``None`` if untouched).
    A mixture's FFN shows its experts' common width, their mean errors and their summed times."""
    per_module: dict[tuple[int, str], list[LayerRecord]] = {}
    for layer in record.layers:
        per_module.setdefault((layer.block, layer.kind), []).append(layer)
    layers = {key: _merged(records) for key, records in per_module.items()}
    rows = []
    for block, shape in enumerate(record.shapes):
        row: dict[str, Any] = {"block": block}
        for kind, key, now in (("attention", "heads", shape.num_heads), ("ffn", "neurons", shape.intermediate_size)):
            layer = layers.get((block, kind))
            row[f"{key}_before"] = layer.units_before if layer else now
            row[f"{key}_after"] = layer.units_after if layer else now
            for name in ERROR_FIELDS:
                row[f"{kind}_{name}"] = getattr(layer, name) if layer else None
        touched = [layers[(block, kind)] for kind in ("attention", "ffn") if (block, kind) in layers]
        row["stats_seconds"] = sum(layer.seconds_stats for layer in touched) if touched else None
        row["solve_seconds"] = sum(layer.seconds_solve for layer in touched) if touched else None
        rows.append(row)
    return rows


def _merged(records: list[LayerRecord]) -> LayerRecord:
    """One module's record, or its experts' records as one (mean errors, summed times, no kept units)."""
    if len(records) == 1:
        return records[0]

    def mean(values: list[float | None]) -> float | None:
        return None if None in values else sum(values) / len(values)

    return replace(records[0], kept_units=[], expert=None,
                   **{name: mean([getattr(r, name) for r in records]) for name in ERROR_FIELDS},
                   seconds_stats=sum(r.seconds_stats for r in records),
                               seconds_solve=sum(r.seconds_solve for r in records))


# ---------------------------------------------------------------- metrics


def ppl_lengths(evaluations: list[dict[str, Any]]) -> list[int]:
    """Perplexity window lengths (``ppl@<len>`` keys) found in any evaluation, ascending."""
    return sorted({int(k.split("@", 1)[1]) for e in evaluations for k in e if re.fullmatch(r"ppl@\d+", k)})


def task_names(evaluations: list[dict[str, Any]]) -> list[str]:
    return sorted({t for e in evaluations for t in e.get("tasks", {})})


def metrics(evaluation: dict[str, Any] | None, lengths: list[int], tasks: list[str]) -> dict[str, float]:
    """Quality numbers of one evaluation by name: ``ppl@L``, ``<task> acc`` and ``STS-B ρ``."""
    if not evaluation:
        return {}
    out = {f"ppl@{n}": evaluation[f"ppl@{n}"]["ppl"] for n in lengths if f"ppl@{n}" in evaluation}
    out |= {f"{t} acc": evaluation["tasks"][t]["acc"] for t in tasks if t in evaluation.get("tasks", {})}
    if "spearman" in evaluation.get("sts", {}):
        out["STS-B ρ"] = evaluation["sts"]["spearman"]
    return out


def speed(evaluation: dict[str, Any] | None, phase: str) -> float | None:
    """Tokens per second of ``phase`` (prefill or decode), if measured."""
    return ((evaluation or {}).get("speed") or {}).get(f"{phase}_tokens_per_s")


def speedup(run: Run, dense: dict[str, Any] | None, phase: str) -> float | None:
    """Pruned / dense tokens per second (> 1: the pruned model is faster)."""
    pruned, base = speed(run.evaluation, phase), speed(dense, phase)
    return pruned / base if pruned and base else None


# ---------------------------------------------------------------- formatting


def fmt_count(n: float) -> str:
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.1f}{suffix}"
    return f"{n:.0f}"


def fmt_bytes(n: float) -> str:
    for limit, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= limit:
            return f"{n / limit:.1f} {suffix}"
    return f"{n:.0f} B"


def fmt_metric(name: str, value: float) -> str:
    if name.startswith("ppl@"):
        return f"{value:.2f}" if value < 1000 else f"{value:,.0f}"
    return f"{value:.1%}" if name.endswith(" acc") else f"{value:.3f}"


def fmt_error(value: float) -> str:
    return f"{value:.3g}"


def fmt_ratio_asked(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def sentence(parts: list[str]) -> str:
    """Join clauses with semicolons into one sentence starting with a capital letter."""
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "."


def _fmt_speed(evaluation: dict[str, Any] | None, dense: dict[str, Any] | None, phase: str) -> str:
    """Tokens per second, with the speed-up over ``dense`` when that was measured."""
    value = speed(evaluation, phase)
    if not value:
        return DASH
    base = speed(dense, phase)
    return f"{value:,.0f} tok/s" + (f" ({value / base:.2f}×)" if base else "")


# ---------------------------------------------------------------- plots


def _new_figure(width: float, height: float, rows: int = 1, cols: int = 1) -> tuple[Figure, list[Any]]:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False).ravel().tolist()
    return figure, axes


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=110)
    return path


def _by_method(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return {label: sorted(group, key=lambda r: r.params.ratio_prunable) for label, group in groups.items()}


def _ratio_axis(axis: Any) -> None:
    axis.set_xlabel("removed share of attention+FFN parameters")
    axis.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    axis.grid(alpha=0.3)


def _panels(figure_cols: int, count: int) -> tuple[int, int]:
    cols = min(count, figure_cols)
    return math.ceil(count / cols), cols


def _log_y(axis: Any, values: list[float]) -> None:
    """Log y axis labelled with plain numbers; minor ticks are labelled too when ``values`` span under a decade."""
    axis.set_yscale("log")
    plain = FuncFormatter(lambda y, _: f"{y:,.0f}" if y >= 100 else f"{y:.3g}")
    axis.yaxis.set_major_formatter(plain)
    positive = [v for v in values if v > 0]
    narrow = bool(positive) and max(positive) < 10 * min(positive)
    axis.yaxis.set_minor_formatter(plain if narrow else NullFormatter())


def plot_by_ratio(runs: list[Run], base: float | None, value: Callable[[Run], float | None], axis: Any,
                  title: str) -> list[float]:
    """One line per method: ``value`` against the achieved ratio, starting from the dense point ``base`` at 0.

    Returns the plotted values.
    """
    plotted = [] if base is None else [base]
    for label, group in _by_method(runs).items():
        points = [(r.params.ratio_prunable, value(r)) for r in group]
        points = [(x, y) for x, y in points if y is not None]
        if points:
            plotted += [y for _, y in points]
            if base is not None:
                points.insert(0, (0.0, base))
            axis.plot(*zip(*points), marker="o", label=label)
    if base is not None:
        axis.plot([0.0], [base], marker="*", markersize=14, color="black", linestyle="none", label="dense")
    axis.set_title(title)
    _ratio_axis(axis)
    return plotted


def plot_quality(runs: list[Run], dense: dict[str, Any] | None, names: list[str], lengths: list[int],
                 tasks: list[str], path: Path) -> Path:
    """Quality vs ratio: one panel per perplexity length, task and STS-B."""
    rows, cols = _panels(3, len(names))
    figure, axes = _new_figure(4.6 * cols, 3.6 * rows + 0.6, rows, cols)
    for axis, name in zip(axes, names):
        values = plot_by_ratio(runs, metrics(dense, lengths, tasks).get(name),
                               lambda r: metrics(r.evaluation, lengths, tasks).get(name), axis, name)
        axis.ticklabel_format(axis="y", useOffset=False)
        if name.startswith("ppl@") and max(values) >= 2 * min(values):
            _log_y(axis, values)
            axis.set_ylabel("perplexity (log scale)")
        elif name.startswith("ppl@"):
            axis.set_ylabel("perplexity")
        elif name.endswith(" acc"):
            axis.yaxis.set_major_formatter(PercentFormatter(1.0))
            axis.set_ylabel("accuracy")
        else:
            axis.set_ylabel("Spearman ρ")
    for axis in axes[len(names):]:
        axis.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3), fontsize="small")
    figure.suptitle("Quality vs pruning ratio")
    return _save(figure, path)


def plot_speedup(runs: list[Run], dense: dict[str, Any], path: Path) -> Path:
    """Prefill and decode speed-up over the dense model against the achieved ratio."""
    phases = [p for p in ("prefill", "decode") if any(speedup(r, dense, p) for r in runs)]
    figure, axes = _new_figure(4.8 * len(phases), 4.0, 1, len(phases))
    for axis, phase in zip(axes, phases):
        plot_by_ratio(runs, 1.0, lambda r: speedup(r, dense, phase), axis, f"{phase} speed-up")
        axis.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        axis.set_ylabel("tokens/s pruned ÷ dense")
        axis.legend(fontsize="small")
    figure.suptitle("Speed-up over the dense model")
    return _save(figure, path)


def plot_kept(run: Run, rows: list[dict[str, Any]], path: Path) -> Path:
    """Fraction of heads and of neurons kept in every block."""
    figure, (axis,) = _new_figure(max(7.0, 0.35 * len(rows) + 2.5), 4.2)
    blocks = [r["block"] for r in rows]
    for offset, key, name in ((-0.2, "heads", "attention heads"), (0.2, "neurons", "FFN neurons")):
        axis.bar([b + offset for b in blocks], [r[f"{key}_after"] / r[f"{key}_before"] for r in rows], width=0.4,
                 label=name)
    axis.set_xticks(blocks)
    axis.set_ylim(0, 1.05)
    axis.yaxis.set_major_formatter(PercentFormatter(1.0))
    axis.set_xlabel("block")
    axis.set_ylabel("kept")
    axis.grid(axis="y", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=2, fontsize="small")
    axis.set_title(f"{run.name}: kept heads and neurons per block\n{run.label}\n"
                   f"{run.params.ratio_prunable:.1%} of attention+FFN parameters removed", fontsize="medium")
    return _save(figure, path)


def plot_errors(run: Run, rows: list[dict[str, Any]], path: Path) -> Path:
    """Relative output error per block without and with the reconstruction, on the calibration rows (solid)
    and the held-out rows (dashed), log scale; a panel per pruned kind, and one per kind for a recovery's
    error against the dense model before and after it."""
    kinds = [k for k in ("attention", "ffn") if any(r[f"{k}_error"] is not None for r in rows)]
    reconstruction = run.config.reconstruction
    panels = [(kind, "reconstruction", (("error_none", "pruned, no reconstruction", "x"),
                                        ("error", f"after {reconstruction}", "o"))) for kind in kinds]
    panels += [(kind, f"recovery {run.config.recovery}, against the dense model",
                (("recovery_error_before", "before recovery", "x"), ("recovery_error_after", "after recovery", "o")))
               for kind in kinds if any(r[f"{kind}_recovery_error_after"] is not None for r in rows)]
    figure, axes = _new_figure(max(6.0, 0.3 * len(rows) + 3.0), 0.6 + 2.6 * len(panels), len(panels), 1)
    for axis, (kind, title, series) in zip(axes, panels):
        values = []
        for key, name, marker in series:
            for rows_name, prefix, style in (("calibration rows", "", "-"), ("held-out rows", "heldout_", "--")):
                column = f"{kind}_{prefix}{key}"
                points = [(r["block"], r[column]) for r in rows if (r[column] or 0) > 0]
                if points:
                    axis.plot(*zip(*points), marker=marker, linestyle=style, label=f"{name} ({rows_name})")
                    values += [y for _, y in points]
        _log_y(axis, values)
        axis.set_title(f"{'attention' if kind == 'attention' else 'FFN'}: {title}", fontsize="medium")
        axis.set_ylabel("relative error")
        axis.grid(alpha=0.3)
        axis.set_xticks([r["block"] for r in rows])
        if axis.has_data():
            axis.legend(fontsize="small")
    axes[-1].set_xlabel("block")
    figure.suptitle(f"{run.name}: relative output error per block (dashed: held-out rows, which no fit saw)")
    return _save(figure, path)


# ---------------------------------------------------------------- document


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: Path
    alt: str


Element = tuple[str, Any]  # ("h1" | "h2" | "h3" | "p" | "ul", text or items) or ("table", Table) / ("img", Image)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _model_name(runs: list[Run]) -> str:
    record = runs[0].record
    name = Path(record.input_model).name if record.input_model else record.architecture
    return f"{name} ({record.model_type})"


def run_summary(run: Run, dense: dict[str, Any] | None, lengths: list[int], tasks: list[str]) -> str:
    """Plain-language sentences: what was removed, the quality and speed cost, the time it took."""
    p = run.params
    sentences = [f"Removed {p.ratio_prunable:.1%} of attention+FFN parameters ({p.ratio_total:.1%} of all: "
                 f"{fmt_count(p.total_before)} → {fmt_count(p.total_after)}) with {run.label}"
                 f" (asked {fmt_ratio_asked(run.config.ratio)})."]
    pruned, base = metrics(run.evaluation, lengths, tasks), metrics(dense, lengths, tasks)
    quality = []
    for n in lengths:
        if f"ppl@{n}" in pruned:
            before = f"{fmt_metric('ppl@', base[f'ppl@{n}'])} → " if f"ppl@{n}" in base else ""
            quality.append(f"perplexity {before}{fmt_metric('ppl@', pruned[f'ppl@{n}'])} at length {n}")
    scored = [f"{t} acc" for t in tasks if f"{t} acc" in pruned]
    if scored:
        mean = sum(pruned[n] for n in scored) / len(scored)
        before = f"{sum(base[n] for n in scored) / len(scored):.1%} → " if all(n in base for n in scored) else ""
        quality.append(f"mean accuracy on {len(scored)} task{'s' * (len(scored) > 1)} {before}{mean:.1%}")
    if "STS-B ρ" in pruned:
        before = f"{base['STS-B ρ']:.3f} → " if "STS-B ρ" in base else ""
        quality.append(f"STS-B Spearman {before}{pruned['STS-B ρ']:.3f}")
    if quality:
        sentences.append(sentence(quality))
    speeds = [f"{phase} {s:.2f}×" for phase in ("prefill", "decode") if (s := speedup(run, dense, phase))]
    costs = [f"{' and '.join(speeds)} the dense speed"] if speeds else []
    size = f"checkpoint {fmt_bytes(checkpoint_bytes(run.path))}"
    if dense and dense.get("bytes_on_disk"):
        size = f"checkpoint {fmt_bytes(dense['bytes_on_disk'])} → {fmt_bytes(checkpoint_bytes(run.path))}"
    costs += [size, f"pruning took {run.record.timings.total_seconds:.1f} s"]
    sentences.append(sentence(costs))
    return " ".join(sentences)


def summary_table(runs: list[Run], dense: dict[str, Any] | None, names: list[str], lengths: list[int],
                  tasks: list[str]) -> Table:
    """One row per checkpoint (the dense baseline first): sizes, quality (``names``), speed, pruning time."""
    phases = [p for p in ("prefill", "decode") if any(speed(e, p) for e in [dense] + [r.evaluation for r in runs])]
    header = ["run", "method", "ratio asked", "removed (attn+FFN)", "removed (all)", "parameters", "size on disk",
              *names, *[f"{p} speed" for p in phases], "pruning time (stats / solve)"]
    rows = []
    if dense:
        values = metrics(dense, lengths, tasks)
        rows.append(["dense", DASH, DASH, DASH, DASH,
                     fmt_count(dense["parameters"]) if "parameters" in dense else DASH,
                     fmt_bytes(dense["bytes_on_disk"]) if "bytes_on_disk" in dense else DASH,
                     *[fmt_metric(n, values[n]) if n in values else DASH for n in names],
                     *[_fmt_speed(dense, None, p) for p in phases], DASH])
    for run in runs:
        p, t, values = run.params, run.record.timings, metrics(run.evaluation, lengths, tasks)
        rows.append([run.name, run.label, fmt_ratio_asked(run.config.ratio), f"{p.ratio_prunable:.1%}",
                     f"{p.ratio_total:.1%}", f"{fmt_count(p.total_before)} → {fmt_count(p.total_after)}",
                     fmt_bytes(checkpoint_bytes(run.path)),
                     *[fmt_metric(n, values[n]) if n in values else DASH for n in names],
                     *[_fmt_speed(run.evaluation, dense, ph) for ph in phases],
                     f"{t.total_seconds:.1f} s ({t.stats_seconds:.1f} s / {t.solve_seconds:.1f} s)"])
    return Table(header, rows)


def layer_table(rows: list[dict[str, Any]]) -> Table:
    """Per block: kept/before heads and neurons, error_none → error of each pruned module on the calibration
    rows and the held-out rows, a recovery's error against the dense model before → after, and the cost."""
    def arrow(row: dict[str, Any], before: str, after: str) -> str:
        return f"{fmt_error(row[before])} → {fmt_error(row[after])}"

    def errors(row: dict[str, Any], kind: str, prefix: str) -> str:
        if row[f"{kind}_{prefix}error"] is None:
            return DASH
        return arrow(row, f"{kind}_{prefix}error_none", f"{kind}_{prefix}error")

    def recovery(row: dict[str, Any], kind: str, prefix: str) -> str:
        if row[f"{kind}_{prefix}recovery_error_after"] is None:
            return DASH
        return arrow(row, f"{kind}_{prefix}recovery_error_before", f"{kind}_{prefix}recovery_error_after")

    def present(key: str) -> bool:
        return any(r[f"{kind}_{key}"] is not None for r in rows for kind in ("attention", "ffn"))

    columns: list[tuple[str, Any]] = [("block", lambda r: str(r["block"])),
                                      ("heads kept", lambda r: f"{r['heads_after']}/{r['heads_before']}"),
                                      ("neurons kept", lambda r: f"{r['neurons_after']}/{r['neurons_before']}")]
    for kind, label in (("attention", "attention"), ("ffn", "FFN")):
        columns.append((f"{label} error (none → reconstructed)", lambda r, k=kind: errors(r, k, "")))
        if present("heldout_error"):
            columns.append((f"{label} held-out error", lambda r, k=kind: errors(r, k, "heldout_")))
        if present("recovery_error_after"):
            columns.append((f"{label} recovery vs dense (before → after)", lambda r, k=kind: recovery(r, k, "")))
        if present("heldout_recovery_error_after"):
            columns.append((f"{label} held-out recovery vs dense", lambda r, k=kind: recovery(r, k, "heldout_")))
    columns.append(("seconds: statistics / solve", lambda r: DASH if r["stats_seconds"] is None
                    else f"{r['stats_seconds']:.2f} / {r['solve_seconds']:.3f}"))
    return Table([name for name, _ in columns], [[cell(r) for _, cell in columns] for r in rows])


def _setting(value: Any) -> str:
    if value is None:
        return DASH
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


def settings_table(runs: list[Run]) -> Table:
    """Every PruneConfig field and the run's context, one column per checkpoint."""
    def flat(run: Run) -> dict[str, Any]:
        record = run.record
        values = asdict(record.config)
        values |= {k: getattr(record, k) for k in ("model_type", "architecture", "input_model", "plain_transformers",
                                                   "saved_architecture", "intercepts")}
        values |= {f"calibration.{k}": v for k, v in asdict(record.calibration).items()}
        values |= {f"versions.{k}": v for k, v in record.versions.items()}
        return values

    columns = [flat(run) for run in runs]
    keys = list(dict.fromkeys(k for c in columns for k in c))
    return Table(["setting", *[run.name for run in runs]], [[k, *[_setting(c.get(k)) for c in columns]] for k in keys])


def build_document(runs: list[Run], dense: dict[str, Any] | None, assets: Path) -> tuple[list[Element], list[Path]]:
    """The report's elements and the PNG files written for it."""
    evaluations = [dense or {}] + [r.evaluation or {} for r in runs]
    lengths, tasks = ppl_lengths(evaluations), task_names(evaluations)
    run_values = [metrics(r.evaluation, lengths, tasks) for r in runs]
    names = [n for n in [*[f"ppl@{x}" for x in lengths], *[f"{t} acc" for t in tasks], "STS-B ρ"]
             if any(n in v for v in run_values)]
    doc: list[Element] = [("h1", f"Pruning report: {_model_name(runs)}")]
    if len(runs) == 1:
        doc.append(("p", run_summary(runs[0], dense, lengths, tasks)))
    else:
        ratios = ", ".join(fmt_ratio_asked(x) for x in sorted({r.config.ratio for r in runs}))
        doc.append(("p", f"{len(runs)} pruned checkpoints with {len(_by_method(runs))} method(s) at ratio(s) {ratios}"
                         f"{', compared with the dense model' if dense else ''}. Per checkpoint:"))
        doc.append(("ul", [f"{r.name}: {run_summary(r, dense, lengths, tasks)}" for r in runs]))
    images: list[Path] = []
    doc += [("h2", "Summary"), ("table", summary_table(runs, dense, names, lengths, tasks))]
    if names:
        images.append(plot_quality(runs, dense, names, lengths, tasks, assets / "quality_vs_ratio.png"))
        doc.append(("img", Image(images[-1], "quality vs pruning ratio")))
    if dense and any(speedup(r, dense, p) for r in runs for p in ("prefill", "decode")):
        images.append(plot_speedup(runs, dense, assets / "speedup.png"))
        doc.append(("img", Image(images[-1], "speed-up over the dense model")))
    doc.append(("h2", "Per layer"))
    for run in runs:
        rows = block_rows(run.record)
        doc.append(("h3", f"{run.name}: {run.label}, {run.params.ratio_prunable:.1%} removed"))
        images.append(plot_kept(run, rows, assets / f"kept_{_slug(run.name)}.png"))
        doc.append(("img", Image(images[-1], f"{run.name}: kept heads and neurons per block")))
        if any(layer.error is not None for layer in run.record.layers):  # data-free runs measure none
            images.append(plot_errors(run, rows, assets / f"error_{_slug(run.name)}.png"))
            doc.append(("img", Image(images[-1], f"{run.name}: relative output error per block")))
        doc.append(("table", layer_table(rows)))
    doc += [("h2", "Settings"), ("table", settings_table(runs))]
    return doc, images


# ---------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(doc: list[Element], root: Path) -> str:
    """Markdown with images linked relative to ``root``."""
    out = []
    for kind, value in doc:
        if kind in ("h1", "h2", "h3"):
            out.append(f"{'#' * int(kind[1])} {value}")
        elif kind == "p":
            out.append(value)
        elif kind == "ul":
            out.append("\n".join(f"- {item}" for item in value))
        elif kind == "table":
            lines = [value.header, ["---"] * len(value.header), *value.rows]
            out.append("\n".join("| " + " | ".join(_md_cell(c) for c in line) + " |" for line in lines))
        elif kind == "img":
            out.append(f"![{value.alt}]({value.path.relative_to(root).as_posix()})")
    return "\n\n".join(out) + "\n"


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; display: block; margin: 1em 0; }
h1 + p, h1 + p + ul { font-size: 1.05em; background: #f5f8ff; padding: 0.8em 1.2em; border-left: 4px solid #4a7bd0; }
h1 + p + ul { margin-top: -1em; padding-left: 2.4em; }
"""


def render_html(doc: list[Element], title: str) -> str:
    """A self-contained HTML page: images embedded as base64 PNG data URIs; the summary under the title stands out."""
    esc = html.escape
    parts = []
    for kind, value in doc:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{esc(value)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{esc(value)}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in value) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{esc(c)}</th>" for c in value.header)
            body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in value.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(value.path.read_bytes()).decode("ascii")
            parts.append(f'<img alt="{esc(value.alt)}" title="{esc(value.path.name)}" '
                         f'src="data:image/png;base64,{data}">')
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")


def write_report(run_dir: str | Path) -> list[Path]:
    """Write ``report.md``, ``report.html`` and ``report_assets/*.png`` into ``run_dir``; returns their paths.

    ``run_dir`` is a checkpoint folder or a folder of checkpoint folders (see the module docstring).
    """
    root = Path(run_dir)
    runs = find_runs(root)
    dense = _read_json(root / DENSE_EVAL_FILE)
    assets = root / ASSETS_DIR
    assets.mkdir(exist_ok=True)
    doc, images = build_document(runs, dense, assets)
    markdown, page = root / "report.md", root / "report.html"
    markdown.write_text(render_markdown(doc, root), encoding="utf-8")
    page.write_text(render_html(doc, doc[0][1]), encoding="utf-8")
    return [markdown, page, *images]
