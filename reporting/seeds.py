"""Runs that differ only in their seed, summarised together: mean and standard error over seeds.

One run of a continual benchmark says little (a game learned late in one seed is learned early in
another), so a report on several seeds of a config also gives each metric's mean over them and, for
MinAtar games, how the first visits went across seeds: the mean score and the weakest run's.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from common.stats import mean_and_error
from reporting.runs import RunLog
from training.config import config_to_dict

# Config entries that do not change what a run measures: its name, its seed, where it ran, how it logged.
NOT_THE_EXPERIMENT = ("run_name", "seed", "device", "logging")
SEED_SUFFIX = re.compile(r"[_-]?(seed|s)?\d+$")


def experiment_key(run: RunLog) -> str:
    """The run's config without the entries that a repeat with another seed may change."""
    config = config_to_dict(run.config)
    return repr(sorted((k, v) for k, v in config.items() if k not in NOT_THE_EXPERIMENT))


def over_seeds(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, standard error and extremes of the finite values, and how many there were."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    mean, stderr = mean_and_error(finite)
    return {"n": len(finite), "mean": mean, "stderr": stderr,
            "min": min(finite, default=None), "max": max(finite, default=None)}


def group_name(names: Sequence[str]) -> str:
    """minatar_s0, minatar_s1 -> minatar; names without a common seed-free stem are joined."""
    stems = {SEED_SUFFIX.sub("", name) or name for name in names}
    return stems.pop() if len(stems) == 1 else " / ".join(dict.fromkeys(names))


def seed_groups(runs: Sequence[RunLog], summaries: Sequence[dict[str, Any]],
                metric_names: Sequence[str]) -> list[dict[str, Any]]:
    """For every experiment run with two or more seeds: its runs, each metric over seeds and each game's first visit."""
    by_key: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        by_key.setdefault(experiment_key(run), []).append(i)
    groups = []
    for members in by_key.values():
        if len(members) < 2:
            continue
        chosen = [summaries[i] for i in members]
        metrics = {name: over_seeds([(s["metrics"] or {}).get(name) for s in chosen]) for name in metric_names}
        games = list(dict.fromkeys(game for s in chosen for game in s["learning"]))
        learning = {
            game: {key: over_seeds([s["learning"].get(game, {}).get(key) for s in chosen])
                   for key in ("score", "of_published", "of_random")}
            for game in games
        }
        groups.append({
            "name": group_name([s["name"] for s in chosen]),
            "runs": [s["name"] for s in chosen],
            "seeds": [runs[i].config.seed for i in members],
            "metrics": metrics,
            "learning": learning,
        })
    return groups


def _cell(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.3g}" + ("" if stat["stderr"] is None else f" ± {stat['stderr']:.2g}")


def seed_groups_text(groups: Sequence[dict[str, Any]], metric_names: Sequence[str]) -> str:
    """Plain-text summary for stdout: metrics as mean ± standard error, then each game's first visits."""
    lines = []
    for group in groups:
        lines.append(f"{group['name']}: {len(group['runs'])} runs (seed {', '.join(map(str, group['seeds']))}), "
                     "mean ± standard error")
        lines += [f"  {name:<28}{_cell(group['metrics'][name])}" for name in metric_names]
        for game, stats in group["learning"].items():
            score, published, random_play = stats["score"], stats["of_published"], stats["of_random"]
            lines.append(f"  first visit {game}: score {_cell(score)} (weakest {_min(score)}); "
                         f"x published DQN {_cell(published)} (weakest {_min(published)}); "
                         f"x random {_cell(random_play)} (weakest {_min(random_play)})")
    return "\n".join(lines)


def _min(stat: dict[str, Any]) -> str:
    return "-" if stat["min"] is None else f"{stat['min']:.3g}"
