"""Report on one or more training runs: plots, a self-contained HTML page and continual-learning metrics.

Reads each RUN_DIR written by `run.py train` (config.yaml, eval.jsonl, metrics.jsonl) and writes
to --out (default: the first RUN_DIR's report/ folder):

  scores.png            every game's score over the whole schedule, the periods when that game
                        is trained shaded (paper Fig. 3A); one line per run
  capped_sum.png        the sum over games of normalised scores capped at 1, one line
                        per run (paper Fig. 3B): compare e.g. EWC, no EWC and EWC with true labels
  matrix_<run>.png      the evaluation matrix: after each visit, the score on every game
  training_<run>.png    the training log: episode returns, TD loss, EWC penalty
  report.html           all of the above in one file (images embedded) with the tables
  report.json           per run: the evaluation matrix, the metrics and every evaluation round

Metrics, from the evaluation matrix on normalised scores (raw scores for a game without
reference scores); see docs/reporting.md for the exact definitions:
  average_final       mean over games of the score after the last visit
  forgetting          per game: its best score after it was first trained minus its final score
  backward_transfer   mean over games of final score minus the score at the end of its last visit
  forward_transfer    mean over games of the score just before its first visit minus the untrained
                      network's score (needs the run's "initial" evaluation round)
  round_forgetting    the share of a just-learned game's score lost by the end of its round
and, for MinAtar games, whether each learned in its first visit: its score against random play
and against the published DQN at the same number of agent steps. Runs whose configs differ only
in seed (and name) are also summarised together: each metric's mean and standard error over the
seeds, and each game's first visits (mean and weakest run).

Examples:
  python run.py report runs/smoke
  python run.py report runs/paper runs/paper_no_ewc runs/paper_fmn --out results/compare
  python run.py report runs/minatar_s{0,1,2} runs/minatar_no_ewc_s{0,1,2} --out report/minatar
"""
from __future__ import annotations

import argparse
import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common.errors import UsageError
from common.results import Progress, write_json_atomic
from envs.games import family_of
from reporting.metrics import (
    NORMALIZED,
    RAW,
    EvaluationMatrix,
    build_matrix,
    continual_metrics,
    first_visit_learning,
)
from reporting.runs import RunLog, expand_run_dirs, load_run
from reporting.seeds import seed_groups, seed_groups_text

SCALE_NAMES = {NORMALIZED: "normalised", RAW: "raw"}
FULL_EPISODE_FRAMES = 108_000  # the 30-minute Atari episodes the human reference scores were measured on
Analysis = tuple[EvaluationMatrix | None, dict[str, Any] | None]  # a run's matrix and metrics (None: no rows)
METRIC_NAMES = ("average_final", "average_forgetting", "round_forgetting_relative", "backward_transfer",
                "forward_transfer", "final_capped_sum")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories of `run.py train`, or folders of runs (a sweep's: every trial)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: report/ in the first RUN_DIR)")
    parser.add_argument("--quiet", action="store_true", help="no progress output on stderr")


# ----------------------------------------------------------------------------- analysis


def analyse_run(run: RunLog) -> Analysis:
    """The run's evaluation matrix and metrics (None, None if it has no round to build a row from)."""
    matrix = build_matrix(run.rounds, [v.game for v in run.visits], run.games)
    return matrix, None if matrix is None else continual_metrics(matrix)


def slugs(runs: Sequence[RunLog]) -> list[str]:
    """File-name-safe, unique names for the runs' own figures."""
    names: list[str] = []
    for run in runs:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", run.name).strip("._") or "run"
        name, n = base, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def run_summary(run: RunLog, matrix: EvaluationMatrix | None, metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": run.name,
        "run_dir": str(run.run_dir),
        "games": run.games,
        # start/end_frame as planned; played_*: when the run really played the visit (runs.played_visits)
        "visits": [{"index": v.index, "game": v.game, "start_frame": v.start_frame, "end_frame": v.end_frame,
                    "played_start_frame": played.start_frame, "played_end_frame": played.end_frame}
                   for v, played in zip(run.visits, run.played_visits)],
        "ewc_enabled": run.config.agent.ewc_enabled,
        "task_inference": run.config.task_inference,
        "frames_evaluated": max(r.frames for r in run.rounds),
        "eval_max_episode_frames": run.config.eval.max_episode_frames,
        "matrix": None if matrix is None else matrix.to_dict(),
        "metrics": metrics,
        "learning": {} if matrix is None else first_visit_learning(matrix, run.config.env.frame_skip),
        "rounds": [{"kind": r.kind, "frames": r.frames, "visit_index": r.visit_index, "score": r.scores,
                    "normalized": r.normalized, "capped_sum": r.capped_sum} for r in run.rounds],
        "skipped_lines": run.skipped_lines,
        "fmn_confusion": run.fmn_confusion,  # task_inference: fmn: frames per (game, inferred id), agreement
    }


# ----------------------------------------------------------------------------- HTML


def _fmt(value: float | None) -> str:
    if value is None:
        return "&ndash;"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _fmt_error(value: float | None, error: float | None) -> str:
    """A value with its standard error ('5.2 ± 0.4'); the value alone where there is no error."""
    return _fmt(value) + ("" if value is None or error is None else f" &plusmn; {_fmt(error)}")


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _metrics_table(metrics: dict[str, Any]) -> str:
    head = "<tr><th>game</th><th>scale</th><th>final</th><th>forgetting</th><th>backward transfer</th><th>forward transfer</th></tr>"
    rows = [
        f"<tr><td>{html.escape(game)}</td><td>{SCALE_NAMES[metrics['scale'][game]]}</td>"
        f"<td>{_fmt_error(metrics['final'][game], metrics['final_stderr'].get(game))}</td>"
        f"<td>{_fmt(metrics['forgetting'][game])}</td>"
        f"<td>{_fmt(metrics['backward_transfer_per_game'][game])}</td><td>{_fmt(metrics['forward_transfer_per_game'][game])}</td></tr>"
        for game in metrics["final"]
    ]
    rows.append(
        f"<tr class='total'><td>mean</td><td></td><td>{_fmt_error(metrics['average_final'], metrics['average_final_stderr'])}</td>"
        f"<td>{_fmt(metrics['average_forgetting'])}</td><td>{_fmt(metrics['backward_transfer'])}</td>"
        f"<td>{_fmt(metrics['forward_transfer'])}</td></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _matrix_table(matrix: EvaluationMatrix) -> str:
    """Raw scores, normalised in brackets (with the standard error over the round's episodes, on the
    game's scale); the cell of the game trained in that visit highlighted."""
    head = "<tr><th>after visit</th><th>frames</th>" + "".join(f"<th>{html.escape(g)}</th>" for g in matrix.games) + "</tr>"
    scales = matrix.scales()

    def cells(raw, norm, trained: str | None, errors=None) -> str:
        out = []
        for j, (game, r, n) in enumerate(zip(matrix.games, raw, norm)):
            error = None if errors is None else errors[j]
            if n is None:
                text = _fmt_error(r, error)
            else:
                text = _fmt(r) + f" <span class='norm'>({_fmt_error(n, error) if scales[game] != 'raw' else _fmt(n)})</span>"
            out.append(f"<td{' class=trained' if game == trained else ''}>{text}</td>")
        return "".join(out)

    rows = []
    if matrix.initial_raw is not None:
        rows.append(f"<tr><td>untrained</td><td>0</td>{cells(matrix.initial_raw, matrix.initial_normalized, None)}</tr>")
    for i, (game, frames) in enumerate(zip(matrix.trained, matrix.frames)):
        rows.append(f"<tr><td>{i + 1}: {html.escape(game)}</td><td>{_fmt(frames)}</td>"
                    f"{cells(matrix.raw[i], matrix.normalized[i], game, matrix.stderr[i] if matrix.stderr else None)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


STYLE = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
img { max-width: 100%; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; }
td:first-child { text-align: left; }
td.trained { background: #fde2e2; }
tr.total td { font-weight: bold; }
.norm { color: #777; }
"""

DEFINITIONS = """
<p>Metrics use the evaluation matrix V (row i: every game scored with the weights at the end of
visit i; K: the last row), on normalised scores, or raw scores for a game without reference
scores. f<sub>j</sub>, l<sub>j</sub>: the first and the last visit of game j up to K; b<sub>j</sub>: the
untrained network's score.</p>
<ul>
<li><b>average final</b>: mean<sub>j</sub> V[K][j]; <b>final capped sum</b>: &Sigma;<sub>j</sub> min(normalised V[K][j], 1) (the paper's metric)</li>
<li><b>forgetting</b> of game j: max<sub>f<sub>j</sub> &le; i &lt; K</sub> V[i][j] &minus; V[K][j] (games first trained before visit K)</li>
<li><b>backward transfer</b>: mean<sub>j</sub> V[K][j] &minus; V[l<sub>j</sub>][j] over games whose last visit is before K (negative: forgetting)</li>
<li><b>forward transfer</b>: mean<sub>j</sub> V[f<sub>j</sub>&minus;1][j] &minus; b<sub>j</sub> over games first trained after visit 1</li>
<li><b>round forgetting (relative)</b>: over visits i that other games follow in the same round (one visit per game),
the mean of V[i][g<sub>i</sub>] &minus; V[r<sub>i</sub>][g<sub>i</sub>] (r<sub>i</sub>: the round's last visit)
divided by the mean of V[i][g<sub>i</sub>]: the share of a just-learned game lost by the end of its round</li>
</ul>
<p>Details: docs/reporting.md.</p>
"""


def _learning_table(learning: dict[str, Any]) -> str:
    head = ("<tr><th>game</th><th>agent steps</th><th>score</th><th>random play</th><th>published DQN at those steps</th>"
            "<th>score / DQN</th><th>score / random</th></tr>")
    rows = [
        f"<tr><td>{html.escape(game)}</td><td>{entry['steps']:,}</td><td>{_fmt(entry['score'])}</td>"
        f"<td>{_fmt(entry['random'])}</td><td>{_fmt(entry['published_dqn'])}</td>"
        f"<td>{_fmt(entry['of_published'])}</td><td>{_fmt(entry['of_random'])}</td></tr>"
        for game, entry in learning.items()
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _task_inference_table(inference: dict[str, Any]) -> str:
    """Forget-me-not's confusion matrix: frames of each game played under each inferred task id."""
    tasks = inference.get("tasks") or sorted({int(t) for row in inference["frames"].values() for t in row})
    head = "<tr><th>game played</th>" + "".join(f"<th>task {t}</th>" for t in tasks) + "</tr>"
    rows = "".join(f"<tr><td>{html.escape(game)}</td>" + "".join(f"<td>{row.get(str(t), 0):,}</td>" for t in tasks)
                   + "</tr>" for game, row in inference["frames"].items())
    agreement = inference.get("adjusted_rand_index")
    note = ("" if agreement is None else
            f"<p>Adjusted Rand index of the inferred ids against the games played: {agreement:.3f} "
            "(1: one id per game and one game per id; 0: chance).</p>")
    return ("<h3>Task inference (forget-me-not): frames per game played and inferred task</h3>"
            f"<table>{head}{rows}</table>{note}")


def _stat(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "&ndash;"
    return _fmt(stat["mean"]) + ("" if stat["stderr"] is None else f" &plusmn; {_fmt(stat['stderr'])}")


def _seed_groups_html(groups: Sequence[dict[str, Any]]) -> str:
    parts = ["<h2>Across seeds</h2><p>Runs whose configs differ only in seed: mean &plusmn; standard error "
             "over the seeds; for each game's first visit also the weakest run.</p>"]
    for group in groups:
        parts.append(f"<h3>{html.escape(group['name'])}: {len(group['runs'])} runs "
                     f"({html.escape(', '.join(group['runs']))}; seed {', '.join(map(str, group['seeds']))})</h3><table><tr>"
                     + "".join(f"<th>{name.replace('_', ' ')}</th>" for name in METRIC_NAMES) + "</tr><tr>"
                     + "".join(f"<td>{_stat(group['metrics'][name])}</td>" for name in METRIC_NAMES) + "</tr></table>")
        if group["learning"]:
            rows = "".join(
                f"<tr><td>{html.escape(game)}</td><td>{_stat(stats['score'])}</td><td>{_fmt(stats['score']['min'])}</td>"
                f"<td>{_stat(stats['of_published'])}</td><td>{_fmt(stats['of_published']['min'])}</td>"
                f"<td>{_stat(stats['of_random'])}</td><td>{_fmt(stats['of_random']['min'])}</td></tr>"
                for game, stats in group["learning"].items())
            parts.append("<table><tr><th>first visit</th><th>score</th><th>weakest</th><th>score / DQN</th>"
                         f"<th>weakest</th><th>score / random</th><th>weakest</th></tr>{rows}</table>")
    return "".join(parts)


def render_html(runs: Sequence[RunLog], summaries: Sequence[dict[str, Any]], analyses: Sequence[Analysis],
                figures: dict[str, Path], run_figures: Sequence[dict[str, Path]],
                groups: Sequence[dict[str, Any]] = ()) -> str:
    """The report page: summary table, shared figures, then each run's metrics, matrix and figures."""
    names = ", ".join(html.escape(run.name) for run in runs)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Report: {names}</title>"
             f"<style>{STYLE}</style></head><body><h1>Continual-learning report: {names}</h1>"]
    parts.append("<h2>Runs</h2><table><tr><th>run</th><th>directory</th><th>games</th><th>visits</th><th>EWC</th>"
                 "<th>task ids</th><th>frames evaluated</th>"
                 + "".join(f"<th>{name.replace('_', ' ')}</th>" for name in METRIC_NAMES) + "</tr>")
    for run, summary in zip(runs, summaries):
        metrics = summary["metrics"] or {}
        parts.append(
            f"<tr><td>{html.escape(run.name)}</td><td>{html.escape(str(run.run_dir))}</td>"
            f"<td>{html.escape(', '.join(run.games))}</td><td>{len(run.visits)}</td>"
            f"<td>{'on' if run.config.agent.ewc_enabled else 'off'}</td><td>{run.config.task_inference}</td>"
            f"<td>{summary['frames_evaluated']:,}</td>"
            + "".join(f"<td>{_fmt(metrics.get(name))}</td>" for name in METRIC_NAMES) + "</tr>"
        )
    parts.append("</table>")
    if groups:
        parts.append(_seed_groups_html(groups))
    capped = [run.name for run in runs if run.config.eval.max_episode_frames < FULL_EPISODE_FRAMES
              and any(family_of(game).name == "atari" for game in run.games)]
    if capped:
        parts.append(f"<p><b>Note:</b> {html.escape(', '.join(capped))} cut evaluation episodes short "
                     "(eval.max_episode_frames below 108,000): a cut-off game scores differently from a full "
                     "one, so its normalised scores are not comparable with the paper's.</p>")
    parts.append("<h2>Score of every game over training (Fig. 3A)</h2>" + _image(figures["scores"], "scores"))
    parts.append("<h2>Capped normalised sum (Fig. 3B)</h2>" + _image(figures["capped_sum"], "capped sum"))
    for run, summary, (matrix, metrics), own in zip(runs, summaries, analyses, run_figures):
        parts.append(f"<h2>Run {html.escape(run.name)}</h2>")
        if matrix is None:
            parts.append("<p>No evaluation round at the end of a visit yet: no matrix, no metrics.</p>")
        else:
            parts.append("<h3>Continual-learning metrics</h3>" + _metrics_table(metrics))
            if summary["learning"]:
                parts.append("<h3>Did each game learn in its first visit?</h3>" + _learning_table(summary["learning"]))
            parts.append("<h3>Evaluation matrix</h3><p>Raw score (normalised in brackets); "
                         "the game trained in that visit is highlighted.</p>" + _matrix_table(matrix))
            parts.append(_image(own["matrix"], f"evaluation matrix of {run.name}"))
        if run.fmn_confusion is not None:
            parts.append(_task_inference_table(run.fmn_confusion))
        if "training" in own:
            parts.append("<h3>Training log</h3>" + _image(own["training"], f"training log of {run.name}"))
    parts.append("<h2>Definitions</h2>" + DEFINITIONS + "</body></html>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------- the command


def summary_table(summaries: Sequence[dict[str, Any]]) -> str:
    """Plain-text metrics per run for stdout."""
    width = max(len(s["name"]) for s in summaries) + 2
    columns = [max(18, len(name) + 2) for name in METRIC_NAMES]
    lines = ["run".ljust(width) + "".join(name.rjust(c) for name, c in zip(METRIC_NAMES, columns))]

    def cell(metrics: dict[str, Any], name: str) -> str:  # '0.512±0.031': the standard error where there is one
        if metrics.get(name) is None:
            return "-"
        error = metrics.get(f"{name}_stderr")
        return f"{metrics[name]:.4g}" + ("" if error is None else f"±{error:.2g}")

    for s in summaries:
        metrics = s["metrics"] or {}
        cells = [cell(metrics, n) for n in METRIC_NAMES]
        lines.append(s["name"].ljust(width) + "".join(cell.rjust(c) for cell, c in zip(cells, columns)))
    return "\n".join(lines)


def make_report(run_dirs: Sequence[str | Path], out: str | Path | None = None, *,
                progress: Progress | None = None) -> dict[str, Any]:
    """Read the runs, write the figures, report.html and report.json to `out`; return report.json's content."""
    from common.figures import save_figure
    from reporting import plots

    progress = progress or Progress(quiet=True)
    out = Path(out) if out is not None else Path(run_dirs[0]) / "report"
    run_dirs = expand_run_dirs(list(run_dirs))
    resolved = [Path(d).resolve() for d in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise UsageError("a RUN_DIR is given twice")
    runs = [load_run(d) for d in run_dirs]
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    for run in runs:
        progress(f"{run.name}: {len(run.rounds)} evaluation rounds, {len(run.visits)} visits ({run.run_dir})")
        for name, count in run.skipped_lines.items():
            progress(f"{run.name}: skipped {count} malformed line(s) of {name}")

    analyses = [analyse_run(run) for run in runs]
    summaries = [run_summary(run, *analysis) for run, analysis in zip(runs, analyses)]
    figures = {
        "scores": save_figure(plots.plot_game_scores(runs), out / "scores.png"),
        "capped_sum": save_figure(plots.plot_capped_sum(runs), out / "capped_sum.png"),
    }
    run_figures: list[dict[str, Path]] = []
    for run, slug, (matrix, _), summary in zip(runs, slugs(runs), analyses, summaries):
        own: dict[str, Path] = {}
        if matrix is not None:
            own["matrix"] = save_figure(plots.plot_matrix(matrix, f"{run.name}: evaluation matrix"), out / f"matrix_{slug}.png")
        if run.training is not None and len(run.training):
            own["training"] = save_figure(plots.plot_training(run), out / f"training_{slug}.png")
        summary["plots"] = {kind: path.name for kind, path in own.items()}
        run_figures.append(own)
    progress(f"plots written to {out}")

    groups = seed_groups(runs, summaries, METRIC_NAMES)
    page = render_html(runs, summaries, analyses, figures, run_figures, groups)
    try:
        (out / "report.html").write_text(page, encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot write {out / 'report.html'}: {err.strerror or err}") from err
    report = {
        "runs": summaries,
        "seed_groups": groups,
        "plots": {kind: path.name for kind, path in figures.items()},
        "html": "report.html",
    }
    write_json_atomic(out / "report.json", report)
    progress(f"wrote {out / 'report.html'} and {out / 'report.json'}")
    return report


def main(args: argparse.Namespace) -> int:
    progress = Progress(quiet=args.quiet)
    report = make_report(args.run_dirs, args.out, progress=progress)
    print(summary_table(report["runs"]))
    for summary in report["runs"]:
        agreement = (summary["fmn_confusion"] or {}).get("adjusted_rand_index")
        if agreement is not None:
            print(f"{summary['name']}: forget-me-not's inferred ids against the games played: "
                  f"adjusted Rand index {agreement:.3f}")
    if report["seed_groups"]:
        print(seed_groups_text(report["seed_groups"], METRIC_NAMES))
    return 0
