"""Sweep config values with Ray Tune: one full training run per combination and seed, then a ranking.

Examples:
  python run.py sweep --config configs/minatar.yaml --grid agent.ewc_lambda=0,100,1000 --seeds 3
  python run.py sweep --config configs/minatar.yaml --grid agent.ewc_lambda=0,10,100,1000 \\
      --grid agent.fisher_kind=softmax_exact,td_empirical --seeds 3 --max-concurrent 4 --address auto
  python run.py sweep --config configs/minatar.yaml --methods finetune,ewc,online_ewc,reset,rehearsal,ewc_rehearsal \\
      --seeds 3                                                # the baselines (tuning/methods.py)
  python run.py sweep --resume runs/sweep_minatar             # continue an interrupted sweep
  python run.py report runs/sweep_minatar                      # every trial in one report

Each trial is a whole `run.py train` run (its own env actors, learner and consolidation actor),
reserved as one placement group whose bundles cover the trial's driver and actors, so trials
never starve each other of cores. Every trial writes its own run directory (metrics, evaluation
rounds, TensorBoard events, checkpoints) under SWEEP_DIR/trials/, so `tensorboard --logdir
SWEEP_DIR` shows them all, and reports its evaluation rounds to Tune as they happen.

At the end the combinations are ranked by average final score (the last row of the evaluation
matrix, on normalised scores), then by round forgetting, as mean and standard error over seeds:
printed, and written to SWEEP_DIR/sweep.json and sweep.csv. Failed trials are listed, not
dropped. An interrupted sweep continues with --resume: finished trials are kept, unfinished ones
continue from their own last checkpoint. A trial that fails while the sweep runs (its learner or
driver killed, a node lost) is restarted the same way, up to --trial-retries times.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from common.errors import UsageError
from common.results import write_json_atomic
from common.stats import mean_and_error
from training.config import (
    apply_overrides,
    config_from_dict,
    learner_device,
    load_yaml,
    parse_override,
)
from tuning.methods import METHODS, method_overrides, parse_methods

METHOD_KEY = "method"  # the grid dimension --methods adds: a name from tuning/methods.py, not a config key
SPEC_FILE = "sweep_spec.json"  # what the sweep was started with: --resume reads it back
TRIALS_DIR = "trials"
DRIVER_BUNDLE = {"CPU": 0.01}  # the trial's own process: the driver loop, mostly waiting on its actors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the run config every trial starts from (not with --resume)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="config values to try, e.g. agent.ewc_lambda=0,100,1000 (repeatable: every combination)")
    parser.add_argument("--methods", default=None, metavar="NAME,NAME,...|all",
                        help="continual-learning methods to compare, each a bundle of config keys: "
                             f"{', '.join(METHODS)} (tuning/methods.py); one more grid dimension, 'method'")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per combination (default 1): 0, 1, ...")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config entry for every trial, as in `run.py train`")
    parser.add_argument("--name", default=None, help="the sweep's folder name (default: sweep_<run_name>)")
    parser.add_argument("--logdir", default="runs", help="parent of the sweep's folder (default: runs)")
    parser.add_argument("--max-concurrent", type=int, default=0,
                        help="trials running at once (default 0: as many as the cluster's resources hold)")
    parser.add_argument("--trial-retries", type=int, default=3, metavar="N",
                        help="times a failed trial (its driver or learner killed, a node lost) is restarted from its "
                             "own last checkpoint before it counts as failed (default 3; 0: never)")
    parser.add_argument("--address", default=None, help="Ray cluster to join ('auto' or HOST:PORT); default: local")
    parser.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def parse_grid(texts: list[str]) -> dict[str, list[Any]]:
    """['agent.ewc_lambda=0,100'] -> {'agent.ewc_lambda': [0, 100]} (each value parsed as YAML)."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        if "=" not in text:
            raise UsageError(f"--grid expects KEY=V1,V2,..., got {text!r}")
        key_text, values_text = text.split("=", 1)
        path, raw = parse_override(f"{key_text}=[{values_text}]")
        key = ".".join(path)
        if key == "seed":
            raise UsageError("give the number of seeds with --seeds, not --grid seed=...")
        if key == METHOD_KEY:
            raise UsageError("give the methods with --methods, not --grid method=...")
        if not isinstance(raw, list) or not raw:
            raise UsageError(f"--grid {key}: expects a comma-separated list of values, got {text!r}")
        if key in grid:
            raise UsageError(f"--grid {key} is given twice")
        grid[key] = raw
    return grid


def combinations(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def trial_name(combination: dict[str, Any], seed: int) -> str:
    """A folder name that says the trial's values: 'agent.ewc_lambda=100,seed=1'."""
    parts = [f"{key}={value}" for key, value in combination.items()] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9_.,=+-]+", "_", ",".join(parts))


def trial_config_data(base: dict[str, Any], combination: dict[str, Any], seed: int, name: str) -> dict[str, Any]:
    """The base config with the combination's values (a method's keys first, so --grid may refine them)."""
    values = dict(method_overrides(combination[METHOD_KEY])) if METHOD_KEY in combination else {}
    values.update({key: value for key, value in combination.items() if key != METHOD_KEY})
    overrides = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    data = apply_overrides(json.loads(json.dumps(base)), overrides)
    data["seed"], data["run_name"] = seed, name
    return data


# ---- one trial, inside Tune -----------------------------------------------------------------


def run_trial(space: dict[str, Any]) -> None:
    """Tune's function trainable: one `run.py train` run, resumed from its own checkpoint if it has one."""
    from ray import tune

    from training import checkpoint, records
    from training.hooks import TrainerHook
    from training.loop import Trainer

    class ReportToTune(TrainerHook):
        def after_eval(self, trainer: Trainer, evaluation: records.EvalRound) -> None:
            normalized = [v for v in evaluation.normalized.values() if v is not None]
            tune.report({
                "frames": evaluation.frames, "kind": evaluation.kind, "capped_sum": evaluation.capped_sum,
                "mean_normalized": sum(normalized) / len(normalized) if normalized else math.nan,
                **{f"score/{game}": score for game, score in evaluation.scores.items()},
            })

    params = space["trial"]
    run_dir = Path(params["run_dir"])
    config = config_from_dict(params["config"])
    resume_state = None
    if (run_dir / records.CHECKPOINT_DIR).is_dir() and checkpoint.list_checkpoints(run_dir / records.CHECKPOINT_DIR):
        _, resume_state = checkpoint.load_latest(run_dir / records.CHECKPOINT_DIR)
        if (run_dir / records.SUMMARY_FILE).is_file():
            summary = json.loads((run_dir / records.SUMMARY_FILE).read_text())
            if summary.get("completed"):
                return  # finished before the sweep was interrupted
    Trainer(config, run_dir, quiet=True, hooks=[ReportToTune()]).run(resume_state)


def trial_bundles(config, cluster_has_gpu: bool) -> list[dict[str, float]]:
    """The placement group of one trial: its driver, its learner (with the GPU its device setting will take
    on this cluster), its env actors."""
    actors = config.actors
    learner = {"CPU": actors.learner_cpus}
    if learner_device(config.device, cluster_has_gpu) == "cuda":
        learner["GPU"] = 1
    return [dict(DRIVER_BUNDLE), learner, *({"CPU": actors.cpus_per_actor} for _ in range(actors.num_env_actors))]


def require_room_for_one_trial(bundles: list[dict[str, float]], cluster: dict[str, float], actors) -> None:
    """Refuse a sweep whose trials could never start (Tune would wait for them forever)."""
    for resource in ("CPU", "GPU"):
        needed, has = sum(bundle.get(resource, 0.0) for bundle in bundles), cluster.get(resource, 0.0)
        if needed > has + 1e-9:
            raise UsageError(
                f"one trial needs {needed:g} {resource}s (its driver, learner and {actors.num_env_actors} env actors) "
                f"but the Ray cluster has {has:g}: "
                "lower actors.cpus_per_actor or actors.learner_cpus with --set (e.g. --set actors.cpus_per_actor=0.25), "
                "or add nodes")


# ---- the ranking ----------------------------------------------------------------------------


def rank(trials: list[dict[str, Any]], grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """One row per combination: mean ± s.e. over its finished seeds, best average final score first."""
    rows = []
    for combination in combinations(grid):
        own = [t for t in trials if t["combination"] == combination]
        done = [t for t in own if t["status"] == "finished"]
        row: dict[str, Any] = {**combination, "seeds": len(done), "failed": len(own) - len(done)}
        for metric in ("average_final", "round_forgetting_relative", "average_forgetting", "forward_transfer",
                       "final_capped_sum"):
            row[metric], row[f"{metric}_se"] = mean_and_error([t["metrics"].get(metric) for t in done])
        rows.append(row)
    def order(row: dict[str, Any]) -> tuple:
        final, forgetting = row["average_final"], row["round_forgetting_relative"]
        return (final is None, -(final or 0.0), forgetting if forgetting is not None else math.inf)
    return sorted(rows, key=order)


def table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    def cell(mean: float | None, error: float | None) -> str:
        if mean is None:
            return "-"
        return f"{mean:.3f}" + (f" ± {error:.3f}" if error is not None else "")

    header = [*keys, "seeds", "failed", "average final", "round forgetting", "forgetting", "forward transfer"]
    lines = [[*(str(row[k]) for k in keys), str(row["seeds"]), str(row["failed"]),
              cell(row["average_final"], row["average_final_se"]),
              cell(row["round_forgetting_relative"], row["round_forgetting_relative_se"]),
              cell(row["average_forgetting"], row["average_forgetting_se"]),
              cell(row["forward_transfer"], row["forward_transfer_se"])] for row in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def collect(sweep_dir: Path, spec: dict[str, Any], errors: dict[str, str]) -> list[dict[str, Any]]:
    """Every trial of the spec with its status and metrics, read from its run directory."""
    from reporting.report import analyse_run
    from reporting.runs import load_run

    trials = []
    for combination in combinations(spec["grid"]):
        for seed in range(spec["seeds"]):
            name = trial_name(combination, seed)
            run_dir = sweep_dir / TRIALS_DIR / name
            entry = {"name": name, "combination": combination, "seed": seed, "run_dir": str(run_dir), "metrics": {}}
            summary_path = run_dir / "summary.json"
            completed = summary_path.is_file() and json.loads(summary_path.read_text()).get("completed")
            if name in errors or not completed:
                entry["status"], entry["error"] = "failed", errors.get(name, "did not finish")
            else:
                _, metrics = analyse_run(load_run(run_dir))
                entry["status"], entry["metrics"] = "finished", metrics or {}
            trials.append(entry)
    return trials


# ---- the command ----------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    # Tune's own TensorBoard logger would show every trial twice beside the trials' own events: JSON and CSV only.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Which trials have finished is saved every 5 s (Tune's default: 10 s or more), so a sweep whose driver
    # is lost runs again at most the trials that finished in its last seconds (`--resume`).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from training.cluster import init_ray

    say = (lambda message: None) if args.quiet else (lambda message: print(f"[sweep] {message}", file=sys.stderr, flush=True))
    if (args.config is None) == (args.resume is None):
        raise UsageError("give either --config CONFIG (a new sweep) or --resume SWEEP_DIR")
    if args.seeds < 1 or args.max_concurrent < 0 or args.trial_retries < 0:
        raise UsageError("--seeds must be at least 1, --max-concurrent and --trial-retries at least 0")
    if args.resume:
        sweep_dir = Path(args.resume).expanduser().resolve()
        if not (sweep_dir / SPEC_FILE).is_file():
            raise UsageError(f"{str(sweep_dir)!r} is not a sweep folder (no {SPEC_FILE})")
        spec = json.loads((sweep_dir / SPEC_FILE).read_text())
    else:
        methods = parse_methods(args.methods)
        grid = {METHOD_KEY: methods, **parse_grid(args.grid)} if methods else parse_grid(args.grid)
        base = apply_overrides(load_yaml(args.config), list(args.overrides))
        config_from_dict(base)  # a mistake in the base config ends the command here, before any trial
        for combination in combinations(grid):  # and so does a bad grid value, or a combination of them
            try:
                config_from_dict(trial_config_data(base, combination, 0, "check"))
            except UsageError as err:
                raise UsageError(f"--grid combination {trial_name(combination, 0).removesuffix(',seed=0')}: {err}") from None
        sweep_dir = (Path(args.logdir).expanduser() / (args.name or f"sweep_{base.get('run_name', 'run')}")).resolve()
        if (sweep_dir / SPEC_FILE).exists():
            raise UsageError(f"{sweep_dir} already holds a sweep: continue it with --resume {sweep_dir}, or pick --name")
        spec = {"base": base, "grid": grid, "seeds": args.seeds, "config_file": str(args.config)}

    # seed-major: every combination's first seed runs before any second seed, so a sweep stopped early
    # (or with fewer cores than trials) already compares them all
    pairs = [(combination, seed) for seed in range(spec["seeds"]) for combination in combinations(spec["grid"])]
    params = {}
    for combination, seed in pairs:
        name = trial_name(combination, seed)
        data = trial_config_data(spec["base"], combination, seed, name)
        params[name] = {"run_dir": str(sweep_dir / TRIALS_DIR / name), "config": data}
    one_config = config_from_dict(next(iter(params.values()))["config"])
    say(f"{len(pairs)} trials ({len(combinations(spec['grid']))} combinations x {spec['seeds']} seeds) "
        f"in {sweep_dir}")

    init_ray(args.address)
    try:
        cluster = ray.cluster_resources()
        bundles = trial_bundles(one_config, cluster.get("GPU", 0) >= 1)
        require_room_for_one_trial(bundles, cluster, one_config.actors)
        if not args.resume:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(sweep_dir / SPEC_FILE, spec)
        trainable = tune.with_resources(run_trial, tune.PlacementGroupFactory(bundles))
        if (sweep_dir / "tune").is_dir():  # --resume: Tune keeps the finished trials and reruns the rest
            tuner = tune.Tuner.restore(str(sweep_dir / "tune"), trainable, resume_unfinished=True, restart_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"trial": tune.grid_search(list(params.values()))},
                tune_config=tune.TuneConfig(max_concurrent_trials=args.max_concurrent or None),
                run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), verbose=0 if args.quiet else 1,
                                          callbacks=[JsonLoggerCallback(), CSVLoggerCallback()],
                                          failure_config=tune.FailureConfig(max_failures=args.trial_retries)),
            )
        results = tuner.fit()
        errors = {}
        for result in results:
            if result.error is not None:
                name = Path(result.config["trial"]["run_dir"]).name
                errors[name] = " ".join(str(result.error).split())[:300]
    finally:
        ray.shutdown()

    trials = collect(sweep_dir, spec, errors)
    ranking = rank(trials, spec["grid"])
    keys = list(spec["grid"])
    text = table(ranking, keys)
    print(text)
    write_json_atomic(sweep_dir / "sweep.json", {"grid": spec["grid"], "seeds": spec["seeds"], "ranking": ranking,
                                                 "trials": trials})
    with open(sweep_dir / "sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(ranking[0]))
        writer.writeheader()
        writer.writerows(ranking)
    failed = [t for t in trials if t["status"] != "finished"]
    for trial in failed:
        say(f"failed: {trial['name']}: {trial.get('error')}")
    say(f"wrote {sweep_dir / 'sweep.json'} and sweep.csv; every trial: python run.py report {sweep_dir}; "
        f"curves: tensorboard --logdir {sweep_dir}")
    return 1 if failed else 0
