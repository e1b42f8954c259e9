"""The benchmark on a small network: MinAtar throughput and time to score, ours against a loop and RLlib.

On the paper's Atari network the update's arithmetic decides everything; MinAtar's reference
network updates in about a millisecond, where every Ray round trip, pickle and per-step Python
call shows. Three systems do the same work (the game, the network, batch 32, one update per
agent step, the same replay ratio, epsilon schedule and evaluation):

- ours: `training.loop.Trainer` (env actors, learner actor, chunks through the object store);
- loop: `perf.loop.SingleProcessLoop`, the CleanRL shape in one process over the same pieces;
- rllib: RLlib's DQN configured like ours (`perf.rllib_dqn`).

`throughput` measures env steps/s of each after learning has started, and the limits: bare
learner updates/s (`perf.measure.BareUpdate`) times agent steps per update, and one env actor's
act + step rate in this process times the number of actors. `time_to_score` runs each system
from scratch until its greedy evaluation first reaches a score (a cap bounds a run that never
does) and reports the median over seeds.
"""
from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from perf.measure import bare_updates_per_s, replay_figures, with_threads
from perf.ours import ROOT
from training.config import RunConfig, config_from_dict, config_to_dict, load_yaml
from training.hooks import TimeLimit, TrainerHook

GAME = "MinAtar/SpaceInvaders"
EVAL_EVERY = 2500  # agent steps between evaluations while timing the score
EVAL_EPISODES = 5


def minatar_run_config(*, game: str = GAME, learning_starts: int = 5000, learner_threads: int = 1,
                       seed: int = 0, decay_steps: int | None = None, device: str = "cpu") -> RunConfig:
    """configs/minatar.yaml narrowed to one long visit of `game` (one update per agent step)."""
    data = load_yaml(ROOT / "configs" / "minatar.yaml")
    data.update(run_name="bench_minatar", games=[game], seed=seed, device=device)
    data["schedule"].update(order="fixed", repeats=1, frames_per_visit=10**12)
    data["agent"].update(learning_starts=learning_starts, ewc_min_frames=0)
    data["eval"].update(every_frames=0, at_visit_end=False)
    data["logging"].update(log_every_s=5.0, checkpoint_every_s=1e9, keep_checkpoints=1)
    data["actors"]["learner_threads"] = learner_threads
    if decay_steps is not None:
        data["epsilon"]["decay_steps"] = decay_steps
    return config_from_dict(data)


def actor_steps_per_s(config: RunConfig, seconds: float) -> float:
    """One env runner acting with its network and stepping the game, in this process (one thread)."""
    from agents.dqn.actor import EnvRunner

    def measure() -> float:
        runner = EnvRunner(0, 1, config.agent.network, config.env, seed=0)
        runner.set_game(config.games[0], 0)
        runner.collect(200, 0.1)  # warm-up
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            steps += runner.collect(200, 0.1).steps
        return steps / (time.perf_counter() - start)

    return with_threads(1, measure)


def loop_steps_per_s(config: RunConfig, seconds: float) -> dict[str, float]:
    """The single-process loop's env steps/s once it learns (after filling `learning_starts`)."""
    from perf.loop import SingleProcessLoop

    def measure() -> dict[str, float]:
        loop = SingleProcessLoop(config, seed=0)
        loop.run(steps=config.agent.learning_starts + 200)  # warm-up: filled, learning
        result = loop.run(seconds=seconds)
        return {"env_steps_per_s": result.steps_per_s, "updates_per_s": result.updates / result.seconds}

    return with_threads(config.actors.learner_threads or torch.get_num_threads(), measure)


def throughput(config: RunConfig, *, seconds: float, run_ours, run_rllib, say) -> dict[str, Any]:
    """Env steps/s of ours, the loop and RLlib on `config`, and the limits. `run_ours(config)` and
    `run_rllib(config)` run those systems in a fresh Ray instance each (the bench's own helpers)."""
    agent, actors = config.agent, config.actors
    micro = max(2.0, min(10.0, seconds / 3))
    say("minatar: bare learner updates/s and one actor's act + step rate")
    bare = bare_updates_per_s(agent, threads=actors.learner_threads or 1, seconds=micro, device=config.device)
    actor = actor_steps_per_s(config, micro)
    limit = min(bare * agent.update_period, actor * actors.num_env_actors)
    say(f"minatar: our trainer on {config.games[0]}, measuring {seconds:g} s")
    ours = run_ours(config)
    say(f"minatar: the single-process loop, {seconds:g} s")
    loop = loop_steps_per_s(config, seconds)
    rllib = run_rllib(config) if run_rllib is not None else None
    out: dict[str, Any] = {
        "game": config.games[0],
        "ours_env_steps_per_s": ours["env_steps_per_s"],
        "ours_updates_per_s": ours["updates_per_s"],
        "ours_learner_busy_fraction": ours["learner_busy_fraction"],
        "ours_learner_cpu_per_busy_s": ours["learner_cpu_per_busy_s"],
        "loop_env_steps_per_s": loop["env_steps_per_s"],
        "loop_updates_per_s": loop["updates_per_s"],
        "rllib_env_steps_per_s": None if rllib is None else rllib["env_steps_per_s"],
        "rllib_updates_per_s": None if rllib is None else rllib["updates_per_s"],
        "bare_learner_updates_per_s": bare,
        "actor_env_steps_per_s": actor,
        "limit_env_steps_per_s": limit,
        "ours_over_loop": ours["env_steps_per_s"] / loop["env_steps_per_s"],
        "ours_over_rllib": None if rllib is None else ours["env_steps_per_s"] / rllib["env_steps_per_s"],
        "ours_fraction_of_limit": ours["env_steps_per_s"] / limit,
        "update_period": agent.update_period,
        "num_env_actors": actors.num_env_actors,
    }
    replay = replay_figures(capacity=20_000, batch_size=agent.batch_size, seconds=min(micro, 3.0), network=agent.network,
                            game=config.games[0], compression=agent.replay_compression)
    out["bytes_per_transition"] = replay["bytes_per_transition"]
    out["naive_bytes_per_transition"] = replay["naive_stacked_bytes_per_transition"]
    out["float32_bytes_per_transition"] = replay["float32_grid_bytes_per_transition"]
    return out


# ---- time to score ---------------------------------------------------------------------------


class StopAtScore(TrainerHook):
    """Ends our trainer's run at the first evaluation round that reaches `threshold` on the game."""

    def __init__(self, game: str, threshold: float):
        self.game, self.threshold = game, threshold
        self.reached_s: float | None = None
        self.evaluations: list[tuple[float, int, float]] = []

    def after_eval(self, trainer, evaluation) -> None:
        score = evaluation.scores[self.game]
        elapsed = time.monotonic() - trainer.progress.started
        self.evaluations.append((elapsed, evaluation.frames, score))
        if score >= self.threshold and self.reached_s is None:
            self.reached_s = elapsed

    def should_stop(self, trainer) -> str | None:
        return None if self.reached_s is None else "score reached"


def score_config(game: str, seed: int, threads: int, device: str = "cpu") -> RunConfig:
    """The time-to-score run: MinAtar's learning_starts, evaluations every EVAL_EVERY steps."""
    config = minatar_run_config(game=game, seed=seed, learner_threads=threads, decay_steps=20_000, device=device)
    data = config_to_dict(config)
    data["eval"].update(every_frames=EVAL_EVERY, episodes=EVAL_EPISODES, at_visit_end=False)
    return config_from_dict(data)


def ours_time_to_score(config: RunConfig, threshold: float, cap_s: float, quiet: bool) -> dict[str, Any]:
    """Seconds from the trainer's start (actors included) to the first evaluation at `threshold`."""
    import shutil

    from training.loop import Trainer

    stop = StopAtScore(config.games[0], threshold)
    run_dir = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        Trainer(config, run_dir, quiet=quiet, hooks=[stop, TimeLimit(cap_s)]).run()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"seconds": stop.reached_s, "evaluations": stop.evaluations}


def loop_time_to_score(config: RunConfig, threshold: float, cap_s: float) -> dict[str, Any]:
    """Seconds from building the loop (its set-up included, as ours counts its actors') to the first
    evaluation at `threshold`."""
    from perf.loop import SingleProcessLoop

    def measure() -> dict[str, Any]:
        started = time.perf_counter()
        loop = SingleProcessLoop(config, seed=config.seed)
        result = loop.run(seconds=cap_s, eval_every=EVAL_EVERY, eval_episodes=EVAL_EPISODES, threshold=threshold)
        setup = time.perf_counter() - started - result.seconds
        seconds = None if result.reached_s is None else result.reached_s + setup
        return {"seconds": seconds, "evaluations": result.evaluations}

    return with_threads(config.actors.learner_threads or torch.get_num_threads(), measure)


def median_seconds(runs: list[dict[str, Any]]) -> float | None:
    """The median over seeds; a run that never reached the score counts as never (None if the median did not)."""
    values = [r["seconds"] if r["seconds"] is not None else math.inf for r in runs]
    middle = statistics.median(values)
    return None if math.isinf(middle) else middle


def time_to_score_summary(runs: dict[str, list[dict[str, Any]]], *, game: str, threshold: float, seeds: int,
                          cap_s: float) -> dict[str, Any]:
    """The bench's `time_to_score` section from each system's runs (`ours`, `loop`, `rllib`; one per seed)."""
    medians = {name: median_seconds(r) if r else None for name, r in runs.items()}
    ratio = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
    return {
        "game": game, "threshold": threshold, "seeds": seeds, "cap_s": cap_s,
        "eval_every_steps": EVAL_EVERY, "eval_episodes": EVAL_EPISODES,
        "ours_s": medians["ours"], "loop_s": medians["loop"], "rllib_s": medians["rllib"],
        "ours_over_loop": ratio(medians["ours"], medians["loop"]),
        "ours_over_rllib": ratio(medians["ours"], medians["rllib"]),
        # RLlib's median past the cap: the ratio is below ours / cap
        "ours_over_rllib_at_most": ratio(medians["ours"], medians["rllib"] or (cap_s if runs["rllib"] else None)),
        "runs": {name: [r["seconds"] for r in values] for name, values in runs.items()},
        "evaluations": {name: [r["evaluations"] for r in values] for name, values in runs.items()},
    }
