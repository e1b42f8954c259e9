"""Benchmark: our trainer side by side with RLlib's DQN and the hardware limit, in one run on this machine.

Examples:
  python run.py bench --json bench.json                       # everything (under 20 minutes on 2 cores)
  python run.py bench --json bench.json --seconds 120         # longer training windows, steadier figures
  python run.py bench --sections replay,fisher,ewc --json quick.json
  python run.py bench --skip-rllib --json bench.json          # machines without ray[rllib]
  python run.py bench --gpu-quick --json gpu.json             # the short GPU set on a CUDA machine (--device auto)

Sections (--sections, comma-separated; default all but gpu):
  train    env steps/s of our trainer and of RLlib's DQN on one game at the paper's replay ratio
           (batch 32, one update per 4 agent steps), measured over the same wall time after
           learning started; plus the limit 4 x bare updates/s
  learner  updates/s of our learner inside the running system vs the bare update: the learner's own
           loss, gradient and RMSProp step with the EWC gradient on a ready batch, without its metrics
           and checks, in a plain loop with the same torch threads
  ewc      update time with the EWC penalty merged from 1 and 10 tasks vs no penalty (key "ewc_overhead")
  replay   bytes per stored transition of --game's frames (agent.replay_compression as configs/paper.yaml has
           it; vs 4x84x84x2 naive stacked storage) and sampling rate of stacked batches
  fisher   per-sample Fisher samples/s: the Atari Q-network and the 784-400-400-10 MLP
  eval     seconds of one evaluation round by an untrained network: 8 episodes one at a time (the earlier
           default) vs 32 at once (today's), on MinAtar Freeway (configs/minatar.yaml, 2,500-step episodes)
           and on --game with the paper's network (episodes cut at 18,000 frames)
  actors   env-only steps/s of 1, 2 and 4 Ray env actors (acting with the network, no learner)
  minatar  on MinAtar SpaceInvaders with MinAtar's network at one update per agent step: env steps/s
           of our trainer, of a single-process loop over the same pieces and of RLlib's DQN, and the
           limits (bare learner updates/s, one env actor's act + step rate x actors); bytes per transition
  time_to_score  wall-clock seconds until each system's greedy evaluation first reaches
           --score-threshold on MinAtar SpaceInvaders, from scratch, median over --score-seeds seeds

  gpu      (with --gpu-quick, or named; not in the default set) update ms of the paper's network at batch
           32 / 64 / 128 with the eager and the compiled optimizer step on --device, and the train and
           learner sections' headline figures

With --profile DIR (needs py-spy), the minatar section also runs our trainer a second time, samples
all its processes in that run's measurement window and reports where its CPU time goes, per phase
(minatar.phases).

Figures that are compared are measured in the same invocation (absolute numbers on a shared
machine drift; ratios much less). The JSON has one stable key per figure; progress goes to
stderr. docs/performance.md explains each figure and what limits it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common.errors import UsageError
from training.cluster import init_ray, set_ray_environment
from training.config import RunConfig

SECTIONS = ("train", "learner", "ewc", "replay", "fisher", "eval", "actors", "minatar", "time_to_score", "gpu")
DEFAULT_SECTIONS = SECTIONS[:-1]  # gpu: with --gpu-quick, or named
GPU_QUICK_SECTIONS = ("train", "learner", "gpu")
GPU_BATCH_SIZES = (32, 64, 128)
EVAL_MINATAR_GAME = "MinAtar/Freeway"  # the longest MinAtar episodes (2,500 steps): the costliest round
EVAL_ATARI_MAX_FRAMES = 18_000  # an untrained network's Atari episode cut at 4,500 agent steps
TARGETS = {  # the project's targets on a 2-core CPU machine (docs/performance.md)
    "train_ratio_min": 1.8,  # our env steps/s over RLlib's, the paper's network, matched threads
    "learner_ratio_min": 0.9,  # our learner's updates/s over the bare update loop's (perf.measure.BareUpdate)
    "ewc_overhead_max": 0.05,
    "bytes_per_transition_max": 1500.0,  # an Atari transition in replay, compressed
    "replay_sample_transitions_per_s_min": 30_000.0,  # one core; a GPU learner at ~440 updates/s needs ~14,000
    "minatar_over_loop_min": 1.5,
    "minatar_over_rllib_min": 3.0,
    "minatar_fraction_of_limit_min": 0.7,
    "time_to_score_over_loop_max": 0.7,
    "time_to_score_over_rllib_max": 0.33,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", dest="json_path", default=None, metavar="OUT.json",
                        help="write the results here (default: print them on stdout)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="measurement window of each training system after learning started (default 30); "
                             "the micro-benchmarks scale with it")
    parser.add_argument("--sections", default=None,
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all but gpu)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None,
                        help="where every learner section runs: our learner, the bare update, RLlib's learner "
                             "(default cpu; with --gpu-quick, auto: the GPU where there is one)")
    parser.add_argument("--gpu-quick", action="store_true",
                        help=f"the short GPU set (sections {','.join(GPU_QUICK_SECTIONS)}): the paper's network at the "
                             "paper's replay ratio with one env actor per spare CPU core, ours and RLlib's, and the "
                             f"update time at batch {'/'.join(map(str, GPU_BATCH_SIZES))} with and without a compiled "
                             "optimizer step; a few minutes on a one-GPU node")
    parser.add_argument("--skip-rllib", action="store_true", help="train section without RLlib (machines without it)")
    parser.add_argument("--game", default="Pong", help="Atari game of the training runs (default Pong)")
    parser.add_argument("--learning-starts", type=int, default=1000,
                        help="transitions stored before learning starts (default 1000; measured only after that)")
    parser.add_argument("--learner-threads", type=int, default=1,
                        help="torch threads of our learner actor and of the bare loop (default 1; see docs/performance.md)")
    parser.add_argument("--eager-step", action="store_true",
                        help="our learner and the bare loop take RMSProp's eager step instead of the compiled one "
                             "(configs/paper.yaml's actors.learner_compile)")
    parser.add_argument("--rllib-threads", default=None, metavar="N[,N...]",
                        help="torch threads of RLlib's learner (it runs in this process); default: --learner-threads; "
                             "0: torch's default (all cores), RLlib out of the box. Several values: one RLlib run each, "
                             "the first gives train.ratio, the others go under train.rllib_variants")
    parser.add_argument("--rllib-fragment", type=int, default=None,
                        help="RLlib env steps per runner per sampling round (default 50: 25 updates per round)")
    parser.add_argument("--minatar-game", default="MinAtar/SpaceInvaders",
                        help="MinAtar game of the minatar and time_to_score sections (default MinAtar/SpaceInvaders)")
    parser.add_argument("--score-threshold", type=float, default=10.0,
                        help="the greedy evaluation score time_to_score waits for (default 10; random play: 2.8)")
    parser.add_argument("--score-seeds", type=int, default=3, help="seeds per system in time_to_score (default 3)")
    parser.add_argument("--score-cap-s", type=float, default=120.0,
                        help="a time_to_score run that has not reached the score by then is stopped (default 120)")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="minatar section: run our trainer a second time and sample all its processes with "
                             "py-spy (needs py-spy), keep the raw samples in DIR and report per-phase shares "
                             "under minatar.phases")
    parser.add_argument("--tiny", action="store_true",
                        help="a small network (configs/smoke.yaml's) instead of the paper's: for tests, not for figures")
    parser.add_argument("--keep-run", default=None, metavar="DIR",
                        help="keep our trainer's run directory (metrics.jsonl, actors.json) here instead of a temp dir")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def parse_sections(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise UsageError(f"--sections: unknown {unknown or 'empty list'}; choose from {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in chosen]


def parse_thread_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise UsageError(f"--rllib-threads expects integers >= 0 separated by commas, got {text!r}")
    return values


def check_args(args: argparse.Namespace) -> list[str]:
    if not args.seconds > 0:
        raise UsageError(f"--seconds must be positive, got {args.seconds}")
    if args.learning_starts < 32:
        raise UsageError(f"--learning-starts must be at least the batch size 32, got {args.learning_starts}")
    if args.learner_threads < 1:
        raise UsageError(f"--learner-threads must be at least 1, got {args.learner_threads}")
    if args.rllib_threads is not None:
        args.rllib_threads = parse_thread_list(args.rllib_threads)
    if args.rllib_fragment is not None and args.rllib_fragment < 1:
        raise UsageError(f"--rllib-fragment must be positive, got {args.rllib_fragment}")
    if args.score_seeds < 1 or not args.score_cap_s > 0:
        raise UsageError("--score-seeds must be at least 1 and --score-cap-s positive")
    if args.gpu_quick and args.sections is not None:
        raise UsageError(f"--gpu-quick runs the sections {','.join(GPU_QUICK_SECTIONS)}: leave out --sections")
    sections = list(GPU_QUICK_SECTIONS) if args.gpu_quick else parse_sections(args.sections or ",".join(DEFAULT_SECTIONS))
    args.device = bench_device(args.device or ("auto" if args.gpu_quick else "cpu"))
    if args.profile:
        if "minatar" not in sections:
            raise UsageError("--profile samples the minatar section's run of our trainer: include minatar in --sections")
        from perf.phases import require_py_spy

        require_py_spy()  # before the other sections' minutes, not after them
    return sections


def bench_device(requested: str) -> str:
    """--device as a torch device: "auto" is the GPU where there is one; "cuda" without one is a usage error."""
    import torch

    from training.config import learner_device

    has_gpu = torch.cuda.is_available()
    if requested == "cuda" and not has_gpu:
        raise UsageError("--device cuda: torch sees no CUDA device on this machine (use --device cpu or auto)")
    return learner_device(requested, has_gpu)


def spare_cpu_actors() -> int:
    """Env actors for --gpu-quick: one per CPU core beyond the driver's and the learner's, at least 2."""
    return max(2, (os.cpu_count() or 4) - 2)


def device_info(device: str = "cpu") -> dict[str, Any]:
    import numpy
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "device": device,  # the learner's torch device in every learner section (env actors: always the CPU)
        "cuda_device": torch.cuda.get_device_name() if device == "cuda" else None,
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        info["ray"] = None
    return info


class Bench:
    """Runs the chosen sections in an order that keeps compared figures close in time."""

    def __init__(self, args: argparse.Namespace, sections: list[str]):
        from envs.games import resolve_game
        from perf.ours import bench_run_config
        from perf.rllib_dqn import DEFAULT_FRAGMENT

        self.args = args
        self.sections = sections
        self.quiet = args.quiet
        self.game = resolve_game(args.game)
        self.device = args.device
        actors = {"learner_compile": False} if args.eager_step else {}
        if args.gpu_quick:
            actors["num_env_actors"] = spare_cpu_actors()
        self.run_config = bench_run_config(
            game=self.game, learning_starts=args.learning_starts, learner_threads=args.learner_threads, tiny=args.tiny,
            overrides={"actors": actors} if actors else None, device=self.device,
        )
        self.compile_step = self.run_config.actors.learner_compile
        self.agent = self.run_config.agent
        self.threads = args.learner_threads
        self.seconds = args.seconds
        self.micro_s = max(1.0, min(20.0, args.seconds / 3))  # per micro-benchmark
        self.fragment = args.rllib_fragment or DEFAULT_FRAGMENT
        self.rllib_threads: list[int] = args.rllib_threads or [self.threads]
        self.report: dict[str, Any] = {}
        set_ray_environment()

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"[bench] {message}", file=sys.stderr, flush=True)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.report["device"] = device_info(self.device)
        self.report["config"] = self.config_summary()
        for name, key in (("replay", "replay"), ("fisher", "fisher"), ("ewc", "ewc_overhead"), ("eval", "eval_round")):
            if name in self.sections:
                self.say(f"section {name}")
                self.report[key] = getattr(self, f"section_{name}")()
        if "train" in self.sections or "learner" in self.sections:
            self.training_sections()
        if "actors" in self.sections:
            self.say("section actors")
            self.report["actors"] = self.section_actors()
        if "minatar" in self.sections:
            self.say("section minatar")
            self.report["minatar"] = self.section_minatar()
        if "time_to_score" in self.sections:
            self.say("section time_to_score")
            self.report["time_to_score"] = self.section_time_to_score()
        if "gpu" in self.sections:
            self.say("section gpu")
            self.report["gpu"] = self.section_gpu()
        self.report["targets"] = targets(self.report)
        self.report["device"]["load_average_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self.report["wall_s"] = round(time.monotonic() - started, 1)
        return self.report

    def config_summary(self) -> dict[str, Any]:
        cfg, agent = self.run_config, self.agent
        return {
            "sections": self.sections,
            "seconds": self.seconds,
            "micro_benchmark_s": self.micro_s,
            "game": self.game,
            "network": {"channels": list(agent.network.channels), "hidden": agent.network.hidden,
                        "num_actions": agent.network.num_actions, "tiny": self.args.tiny},
            "batch_size": agent.batch_size,
            "update_period": agent.update_period,
            "learning_starts": agent.learning_starts,
            "replay_capacity": agent.replay_capacity,
            "num_env_actors": cfg.actors.num_env_actors,
            "envs_per_actor": cfg.actors.envs_per_actor,
            "chunk_steps": cfg.actors.chunk_steps,
            "weight_sync_updates": cfg.actors.weight_sync_updates,
            "learner_threads": self.threads,
            "learner_compiled_optimizer_step": self.compile_step,
            "rllib_fragment": self.fragment,
            "rllib_torch_threads": self.rllib_threads,
            "ray_worker_niceness": os.environ.get("RAY_worker_niceness"),
            "skip_rllib": self.args.skip_rllib,
        }

    # ---- in-process micro-benchmarks -----------------------------------------------------------

    def section_replay(self) -> dict[str, Any]:
        from perf.measure import replay_figures

        capacity = 5_000 if self.args.tiny else self.agent.replay_capacity
        return replay_figures(capacity=capacity, batch_size=self.agent.batch_size, seconds=min(self.micro_s, 5.0),
                              game=self.game, compression=self.agent.replay_compression)

    def section_fisher(self) -> dict[str, Any]:
        from perf.measure import fisher_throughput

        atari = 64 if self.args.tiny else 256
        mnist = 500 if self.args.tiny else 4000
        out = with_torch_threads(self.threads, lambda: fisher_throughput(
            self.agent.network, atari_samples=atari, mnist_samples=mnist, repeats=1 if self.args.tiny else 2))
        out["torch_threads"] = self.threads
        return out

    def section_ewc(self) -> dict[str, Any]:
        from perf.measure import ewc_overhead

        out = ewc_overhead(self.agent, threads=self.threads, seconds=2 * self.micro_s, compile_step=self.compile_step,
                           device=self.device)
        out["torch_threads"] = self.threads
        return out

    def section_eval(self) -> dict[str, Any]:
        return eval_round_figures(self.run_config, tiny=self.args.tiny, say=self.say)

    def section_gpu(self) -> dict[str, Any]:
        """Update times by batch size and optimizer step, plus the training sections' headline figures."""
        from perf.measure import update_ms_by_batch

        out: dict[str, Any] = {"device": self.device, "cuda_device": self.report["device"]["cuda_device"],
                               "num_env_actors": self.run_config.actors.num_env_actors}
        out.update(update_ms_by_batch(self.agent, batch_sizes=GPU_BATCH_SIZES, threads=self.threads,
                                      seconds=min(self.micro_s, 5.0), device=self.device))
        train, learner = self.report.get("train", {}), self.report.get("learner", {})
        out.update(ours_env_steps_per_s=train.get("ours_env_steps_per_s"), ours_updates_per_s=train.get("ours_updates_per_s"),
                   rllib_env_steps_per_s=train.get("rllib_env_steps_per_s"),
                   rllib_updates_per_s=train.get("rllib_updates_per_s"),
                   learner_busy_fraction=learner.get("learner_busy_fraction"))
        return out

    # ---- training systems ----------------------------------------------------------------------

    def training_sections(self) -> None:
        from perf.measure import bare_updates_per_s, learner_breakdown

        bare_s = self.micro_s / 2
        self.say(f"bare update loop ({self.threads} thread(s)), before the system run")
        bare_before = bare_updates_per_s(self.agent, threads=self.threads, seconds=bare_s, compile_step=self.compile_step,
                                         device=self.device)
        self.say(f"our trainer: {self.game}, measuring {self.seconds:g} s after learning starts")
        ours = self.run_ours()
        self.say(f"ours: {ours['env_steps_per_s']:.1f} env steps/s, {ours['updates_per_s']:.2f} updates/s "
                 f"(learner busy {ours['learner_busy_fraction']:.0%})")
        self.say("bare update loop, after the system run")
        bare_after = bare_updates_per_s(self.agent, threads=self.threads, seconds=bare_s, compile_step=self.compile_step,
                                        device=self.device)
        bare = (bare_before + bare_after) / 2  # brackets the system run: drifting background load averages out
        if "learner" in self.sections:
            self.say("learner overhead breakdown (bare / Learner.update / replay sample + update)")
            breakdown = learner_breakdown(self.agent, threads=self.threads, seconds=self.micro_s,
                                          replay_capacity=5_000 if self.args.tiny else 20_000,
                                          compile_step=self.compile_step, device=self.device)
            self.report["learner"] = learner_figures(ours, bare, (bare_before, bare_after), self.threads, breakdown)
        if "train" in self.sections:
            train: dict[str, Any] = {
                "ours_env_steps_per_s": ours["env_steps_per_s"],
                "ours_updates_per_s": ours["updates_per_s"],
                "ours_env_steps_per_update": ours["env_steps_per_update"],
                "ours_measured_s": ours["measured_s"],
                "ours_steady_after_s": ours["steady_after_s"],
                "limit_env_steps_per_s": self.agent.update_period * bare,  # a learner that never waits, at bare speed
                "ours_fraction_of_limit": ours["env_steps_per_s"] / (self.agent.update_period * bare),
            }
            if self.args.skip_rllib:
                train.update(rllib_env_steps_per_s=None, ratio=None, rllib_skipped=True)
            else:
                train.update(rllib_figures(ours, [self.run_rllib(threads) for threads in self.rllib_threads]))
            self.report["train"] = train

    def run_ours(self, config=None, hooks=()) -> dict[str, Any]:
        import ray

        from perf.ours import measure_ours

        keep = Path(self.args.keep_run) if self.args.keep_run else None
        run_dir = keep or Path(tempfile.mkdtemp(prefix="bench-ours-"))
        init_local_ray()
        try:
            result = measure_ours(config or self.run_config, run_dir, seconds=self.seconds,
                                  warmup_s=min(5.0, self.seconds / 6), quiet=self.quiet, hooks=list(hooks))
            placement = json.loads((run_dir / "actors.json").read_text())
            result["learner_torch_threads"] = placement["learner"].get("torch_threads")
        finally:
            ray.shutdown()
            if keep is None:
                shutil.rmtree(run_dir, ignore_errors=True)
        return result

    def run_rllib(self, threads: int, config=None) -> dict[str, Any]:
        import ray

        from perf.rllib_dqn import config_notes, measure_rllib

        shown = threads or "torch's default number of"
        self.say(f"RLlib DQN: {(config or self.run_config).games[0]}, {shown} learner threads, "
                 f"measuring {self.seconds:g} s after learning starts")
        if "notes" not in self.report:
            self.report["notes"] = config_notes(self.run_config, self.fragment)
        init_local_ray()
        try:
            result = measure_rllib(config or self.run_config, self.seconds, fragment=self.fragment, threads=threads,
                                   quiet=self.quiet)
        finally:
            ray.shutdown()
        self.say(f"rllib: {result['env_steps_per_s']:.1f} env steps/s, {result['updates_per_s']:.2f} updates/s")
        return result

    def section_actors(self) -> dict[str, Any]:
        import ray

        from perf.measure import act_ms, actor_scaling, raw_env_steps_per_s

        seconds = max(1.0, min(10.0, self.seconds / 6))
        out: dict[str, Any] = {
            "raw_env_steps_per_s_one_process": raw_env_steps_per_s(self.game, seconds),
            "act_forward_ms": act_ms(self.agent.network, min(seconds, 3.0)),
        }
        init_local_ray()
        try:
            cpus = float(ray.cluster_resources().get("CPU", 1))
            out.update(actor_scaling(self.game, self.agent.network, counts=(1, 2, 4), seconds=seconds,
                                     chunk_steps=self.run_config.actors.chunk_steps, total_cpus=cpus))
        finally:
            ray.shutdown()
        out["seconds_each"] = seconds
        return out

    # ---- MinAtar: a small network --------------------------------------------------------------

    def section_minatar(self) -> dict[str, Any]:
        from perf.minatar import minatar_run_config, throughput

        learning_starts = 500 if self.args.tiny else 5000
        config = minatar_run_config(game=self.args.minatar_game, learning_starts=learning_starts,
                                    learner_threads=self.threads, device=self.device)
        run_rllib = None if self.args.skip_rllib else (lambda c: self.run_rllib(self.threads, c))
        out = throughput(config, seconds=self.seconds, run_ours=self.run_ours, run_rllib=run_rllib, say=self.say)
        self.say(f"minatar: ours {out['ours_env_steps_per_s']:.0f}, loop {out['loop_env_steps_per_s']:.0f}, "
                 f"rllib {out['rllib_env_steps_per_s'] or 0:.0f}, limit {out['limit_env_steps_per_s']:.0f} env steps/s")
        if self.args.profile:
            from perf.phases import ProfileWindow, format_shares

            # A run of its own (sampling costs CPU, which would bias the throughput above), sampled
            # inside its measurement window, which opens once learning has started.
            self.say("minatar: a second run of our trainer, sampled with py-spy")
            profile = ProfileWindow(Path(self.args.profile), seconds=max(2.0, self.seconds / 2),
                                    delay_s=min(20.0, self.seconds / 3), say=self.say)
            self.run_ours(config, hooks=[profile])
            out["phases"] = profile.finish()
            if out["phases"]:
                self.say("minatar: where our trainer's CPU time goes (py-spy)\n" + format_shares(out["phases"]))
        return out

    def section_time_to_score(self) -> dict[str, Any]:
        import ray

        from perf.minatar import (
            EVAL_EPISODES,
            EVAL_EVERY,
            loop_time_to_score,
            ours_time_to_score,
            score_config,
            time_to_score_summary,
        )
        from perf.rllib_dqn import rllib_time_to_score

        game, threshold, cap = self.args.minatar_game, self.args.score_threshold, self.args.score_cap_s
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "loop": [], "rllib": []}
        for seed in range(self.args.score_seeds):
            config = score_config(game, seed, self.threads, self.device)
            self.say(f"time to score {threshold:g} on {game}, seed {seed}: ours")
            init_local_ray()
            try:
                runs["ours"].append(ours_time_to_score(config, threshold, cap, quiet=True))
            finally:
                ray.shutdown()
            self.say(f"seed {seed}: the single-process loop")
            runs["loop"].append(loop_time_to_score(config, threshold, cap))
            if not self.args.skip_rllib:
                self.say(f"seed {seed}: RLlib")
                init_local_ray()
                try:
                    runs["rllib"].append(rllib_time_to_score(config, threshold, cap, eval_every_steps=EVAL_EVERY,
                                                             episodes=EVAL_EPISODES, fragment=self.fragment,
                                                             threads=self.threads))
                finally:
                    ray.shutdown()
            self.say("seed {}: ours {}, loop {}, rllib {}".format(seed, *(
                "-" if not r or r[-1]["seconds"] is None else f"{r[-1]['seconds']:.0f} s" for r in runs.values())))
        return time_to_score_summary(runs, game=game, threshold=threshold, seeds=self.args.score_seeds, cap_s=cap)


def eval_round_figures(atari: RunConfig, tiny: bool, say) -> dict[str, Any]:
    """One evaluation round, one episode at a time and all at once, on EVAL_MINATAR_GAME and `atari`'s game."""
    from perf.measure import eval_round_seconds
    from perf.minatar import minatar_run_config

    minatar = minatar_run_config(game=EVAL_MINATAR_GAME)
    cap = {"minatar": 400, "atari": 400} if tiny else {"minatar": minatar.eval.max_episode_frames,
                                                       "atari": EVAL_ATARI_MAX_FRAMES}
    out: dict[str, Any] = {}
    for family, config in (("minatar", minatar), ("atari", atari)):
        game = config.games[0]
        say(f"eval: one round of {game}, one episode at a time and all at once")
        figures = eval_round_seconds(config.agent.network, config.env, game, max_episode_frames=cap[family])
        out.update({f"{family}_{key}": value for key, value in figures.items()})
        out[f"{family}_game"] = game
    return out


def learner_figures(ours: dict[str, Any], bare: float, bare_before_after: tuple[float, float], threads: int,
                    breakdown: dict[str, Any]) -> dict[str, Any]:
    """The learner section: our learner's update rate against the bare update loop's (`bare`: the mean of the
    rates measured before and after the system run)."""
    return {
        "ours_updates_per_s": ours["updates_per_s"], "bare_updates_per_s": bare,
        "ratio": ours["updates_per_s"] / bare,
        "bare_updates_per_s_before": bare_before_after[0], "bare_updates_per_s_after": bare_before_after[1],
        "learner_busy_fraction": ours["learner_busy_fraction"],
        "learner_cpu_per_busy_s": ours["learner_cpu_per_busy_s"],
        "learner_torch_threads": ours.get("learner_torch_threads"), "bare_torch_threads": threads,
        "ewc_tasks_anchored": 1, **breakdown,
    }


def rllib_figures(ours: dict[str, Any], rllib_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The train section's RLlib figures: the first run (the learner threads of ours) and any other thread counts."""
    rllib, *variants = rllib_runs
    figures: dict[str, Any] = {f"rllib_{key}": rllib[key] for key in (
        "env_steps_per_s", "updates_per_s", "env_steps_per_update", "measured_s", "iterations", "build_s",
        "torch_threads", "time_shares")}
    figures.update(rllib_learner_update_ms=rllib["learner_update_ms"],
                   ratio=ours["env_steps_per_s"] / rllib["env_steps_per_s"])
    if variants:
        figures["rllib_variants"] = [
            {"torch_threads": v["torch_threads"], "env_steps_per_s": v["env_steps_per_s"],
             "updates_per_s": v["updates_per_s"], "ratio": ours["env_steps_per_s"] / v["env_steps_per_s"],
             "measured_s": v["measured_s"], "time_shares": v["time_shares"],
             "learner_update_ms": v["learner_update_ms"]}
            for v in variants
        ]
    return figures


def targets(r: dict[str, Any]) -> dict[str, bool]:
    """Which of the TARGETS the report's figures meet (only those its sections measured)."""
    out = {}
    if r.get("train", {}).get("ratio") is not None:
        out["train_ratio_ge_1.8"] = r["train"]["ratio"] >= TARGETS["train_ratio_min"]
    if "learner" in r:
        out["learner_ratio_ge_0.9"] = r["learner"]["ratio"] >= TARGETS["learner_ratio_min"]
    if "ewc_overhead" in r:
        ewc = r["ewc_overhead"]
        out["ewc_overhead_le_5pct"] = max(ewc["tasks_1"], ewc["tasks_10"]) <= TARGETS["ewc_overhead_max"]
    if "replay" in r:
        out["bytes_per_transition_le_1500"] = r["replay"]["bytes_per_transition"] <= TARGETS["bytes_per_transition_max"]
        out["replay_sample_ge_30000_per_s"] = (r["replay"]["sample_transitions_per_s"]
                                               >= TARGETS["replay_sample_transitions_per_s_min"])
    if "minatar" in r:
        m = r["minatar"]
        out["minatar_ge_1.5x_loop"] = m["ours_over_loop"] >= TARGETS["minatar_over_loop_min"]
        if m["ours_over_rllib"] is not None:
            out["minatar_ge_3x_rllib"] = m["ours_over_rllib"] >= TARGETS["minatar_over_rllib_min"]
        out["minatar_ge_70pct_of_limit"] = m["ours_fraction_of_limit"] >= TARGETS["minatar_fraction_of_limit_min"]
    if "time_to_score" in r:
        t = r["time_to_score"]
        if t["ours_over_loop"] is not None:
            out["time_to_score_le_0.7x_loop"] = t["ours_over_loop"] <= TARGETS["time_to_score_over_loop_max"]
        if t["ours_over_rllib"] is not None:
            out["time_to_score_le_0.33x_rllib"] = t["ours_over_rllib"] <= TARGETS["time_to_score_over_rllib_max"]
        elif t["ours_over_rllib_at_most"] is not None and t["ours_over_rllib_at_most"] <= TARGETS["time_to_score_over_rllib_max"]:
            out["time_to_score_le_0.33x_rllib"] = True  # RLlib did not reach the score within the cap
    return out


def with_torch_threads(threads: int, fn):
    from perf.measure import with_threads

    return with_threads(threads, fn)


def init_local_ray() -> None:
    """A fresh local Ray instance per system, so that one's actors never share it with the other's;
    only Ray's errors and none of the workers' output on the terminal (the report is the output).

    Ray runs its worker processes at nice 15 by default, which on a shared machine hands their
    CPU to everything else. RLlib's learner lives in this (nice 0) process, ours in a worker:
    both systems' workers run at nice 0 here (`set_ray_environment`), so that priority does not
    decide the comparison.
    """
    init_ray(logging_level="error", log_to_driver=False)


def main(args: argparse.Namespace) -> int:
    sections = check_args(args)
    if "train" in sections and not args.skip_rllib:
        try:
            import ray.rllib  # noqa: F401  (only checks that it is there)
        except ImportError:
            raise UsageError('RLlib is not installed: pip install torch==2.13.0 "ray[rllib]", or pass --skip-rllib') from None
    if args.json_path:
        out_path = Path(args.json_path)
        if out_path.parent and not out_path.parent.exists():
            raise UsageError(f"--json: directory {str(out_path.parent)!r} does not exist")
    report = Bench(args, sections).run()
    text = json.dumps(report, indent=2, default=float)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
        if not args.quiet:
            print(f"[bench] wrote {args.json_path}", file=sys.stderr)
    else:
        print(text)
    return 0
