"""The run configuration: a typed schema for `configs/*.yaml`, validated before anything starts.

A config says everything about a run. Every key has a type and a range; an unknown key
gets a suggestion, a wrong type or range names the key and the allowed values, and all
such mistakes end the command with exit code 2 before any Ray actor starts.

A config may start from another: a top-level `extends: paper.yaml` (a path relative to the
directory of the file that says it) loads that file first, itself possibly extending another,
and lays this file's keys over it: mappings merge key by key, lists and scalars replace. So a
variant names only what differs. A cycle, a missing parent or an `extends` that is not a file
name is a usage error naming the files. `--set section.key=value` overrides any entry of the
resolved config, last (the value is parsed as YAML). A run directory's config.yaml is the
resolved config in full, without `extends`.

Units are in the key names: `*_frames` count emulator frames (the paper's unit: one agent
step is `env.frame_skip` frames), `*_steps` count agent steps, `*_updates` count learner updates.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from agents.dqn.config import MAX_N_STEP, DQNConfig
from agents.epsilon import EpsilonConfig
from common.errors import UsageError
from envs.games import check_settings, resolve_game, schedule_family
from envs.settings import EnvSettings
from fmn import FMNConfig


@dataclass(frozen=True)
class ScheduleConfig:
    """Which game is played when: visits of `frames_per_visit` frames each."""

    order: Literal["fixed", "random"] = "fixed"  # random: a seeded shuffle of the games per round
    repeats: int = 1  # rounds over all games
    frames_per_visit: int = 20_000_000
    seed: int = 0


@dataclass(frozen=True)
class ActorsConfig:
    num_env_actors: int = 2
    envs_per_actor: int = 1
    chunk_steps: int = 100  # agent steps per environment per chunk shipped to the learner
    weight_sync_updates: int = 100  # actors get the learner's weights this often
    cpus_per_actor: float = 0.5  # Ray resources; fractional lets several actors share a core
    learner_cpus: float = 1.0
    learner_threads: int = 0  # torch threads of the learner; 0 = torch's default (all cores of its node)
    learner_compile: bool = False  # torch.compile the learner's RMSProp step (faster; seconds to compile)
    placement: Literal["pack", "spread"] = "pack"  # spread: env actors on as many nodes as possible


@dataclass(frozen=True)
class EvalConfig:
    every_frames: int = 1_000_000  # evaluate every game of the schedule this often (0: never)
    episodes: int = 32  # episodes per game, played at once with epsilon.evaluation (one forward pass per step for all)
    at_visit_end: bool = True  # also evaluate every game with each visit's final weights (the evaluation matrix)
    max_episode_frames: int = 108_000


@dataclass(frozen=True)
class LoggingConfig:
    log_every_s: float = 10.0
    checkpoint_every_s: float = 600.0
    keep_checkpoints: int = 3
    checkpoint_replay: bool = True  # checkpoints keep the replay buffers (where the disk has room for them)
    replay_chunk: int = 10_000  # writes per replay file, each written once, when full (a lost run loses at most one)


@dataclass(frozen=True)
class RunConfig:
    run_name: str = "run"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    games: tuple[str, ...] = ("Pong", "Breakout")
    task_inference: Literal["schedule", "fmn"] = "schedule"  # fmn: task ids inferred from frames
    # what the run does about forgetting (training/strategies.py); auto: ewc or finetune, as agent.ewc_enabled says
    strategy: Literal["auto", "finetune", "ewc", "reset"] = "auto"
    fmn: FMNConfig = field(default_factory=FMNConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    env: EnvSettings = field(default_factory=EnvSettings)
    agent: DQNConfig = field(default_factory=DQNConfig)
    epsilon: EpsilonConfig = field(default_factory=EpsilonConfig)
    actors: ActorsConfig = field(default_factory=ActorsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @property
    def total_frames(self) -> int:
        return self.schedule.frames_per_visit * self.schedule.repeats * len(self.games)


def learner_device(requested: str, has_gpu: bool) -> str:
    """The learner's device for the config's `device` ("auto", "cpu" or "cuda") where a GPU is there or not."""
    return {"auto": "cuda" if has_gpu else "cpu", "cpu": "cpu", "cuda": "cuda"}[requested]


def replay_bytes_per_transition(agent: DQNConfig, *, frame_bytes: float | None = None) -> float:
    """Bytes one stored transition takes in the run's replay, in memory and in checkpoints' replay files
    (`agents.replay.planned_bytes_per_slot`): compressed frames at `frame_bytes` each, or at the planned share
    of a raw frame."""
    from agents.replay import planned_bytes_per_slot

    network = agent.network
    return planned_bytes_per_slot(network.frame_shape, network.frame_stack, agent.n_step, agent.replay_compression,
                                  frame_bytes)


def replay_memory_line(config: RunConfig) -> str:
    """What the run's replay buffers will hold in memory, planned (said at the start of a run)."""
    agent, tasks = config.agent, len(set(config.games))
    planned = replay_bytes_per_transition(agent) * agent.replay_capacity * tasks
    how = ("raw frames" if agent.replay_compression == "none" else
           f"{agent.replay_compression}-compressed frames planned at a fifth of raw; TensorBoard's replay/memory_mb "
           "shows the real size")
    return (f"replay up to {agent.replay_capacity:,} transitions per task x {tasks} task(s): "
            f"{planned / 2**30:.2f} GiB ({how})")


# ---- ranges checked after types -----------------------------------------------------------

_POSITIVE = {
    "schedule.repeats", "schedule.frames_per_visit", "env.frame_skip", "env.screen_size", "env.max_episode_frames",
    "agent.network.hidden", "agent.network.max_tasks", "agent.batch_size", "agent.learning_rate",
    "agent.rmsprop_eps", "agent.max_grad_norm", "agent.huber_delta", "agent.target_update_period",
    "agent.update_period", "agent.replay_capacity", "agent.fisher_minibatches", "fmn.window", "fmn.observe_every",
    "fmn.downscale", "fmn.levels", "fmn.prior", "actors.num_env_actors",
    "actors.envs_per_actor", "actors.chunk_steps", "actors.weight_sync_updates", "actors.cpus_per_actor",
    "actors.learner_cpus", "eval.episodes", "eval.max_episode_frames", "logging.log_every_s", "agent.network.frame_stack",
    "logging.checkpoint_every_s", "logging.keep_checkpoints", "logging.replay_chunk", "agent.max_nonfinite_in_a_row",
}
_NON_NEGATIVE = {
    "env.noop_max", "agent.learning_starts", "agent.ewc_lambda", "agent.ewc_min_frames",
    "epsilon.decay_steps", "actors.learner_threads", "eval.every_frames", "fmn.count_cap", "fmn.confirm_windows",
}
_BOUNDED = {"agent.n_step": (1, MAX_N_STEP)}  # key -> (lowest, highest) allowed
_UNIT_INTERVAL = {
    "env.repeat_action_probability", "agent.gamma", "agent.rmsprop_alpha", "epsilon.start", "epsilon.end",
    "epsilon.evaluation", "agent.ewc_online_gamma", "fmn.outlier_prob",
}


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known keys: {', '.join(known)})"


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        count = "" if args[-1] is Ellipsis else f"{len(args)} "
        plural = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}[args[0]]
        return f"a list of {count}{plural}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    bad = UsageError(f"config key {key!r} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is tuple:  # tuple[int, ...] or tuple[int, int, int]; YAML gives lists
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            raise bad
        item_types = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(_coerce(item, t, f"{key}[{i}]") for i, (item, t) in enumerate(zip(value, item_types)))
    if origin in (typing.Union, types.UnionType):
        raise AssertionError("union types are not used in the schema")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp in (int, float) and isinstance(value, str):
        # PyYAML follows YAML 1.1, which reads 1e-4 and 2e7 (no dot, no sign) as strings: accept them.
        try:
            value = float(value)
        except ValueError:
            raise bad from None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():  # 2e7 in YAML
                return int(value)
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise AssertionError(f"unsupported type {tp}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if not isinstance(data, dict):
        raise UsageError(f"{where} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        if key == EXTENDS_KEY and not prefix:  # load_yaml resolves it; here it came through --set or a dict
            raise UsageError(f"{EXTENDS_KEY!r} is read only from a config file (it names the file a config starts from)")
        if key not in hints:
            raise UsageError(f"unknown config key {prefix + str(key)!r}{_suggest(str(key), known)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            values[key] = _build(tp, value, f"{prefix}{key}.")
        else:
            values[key] = _coerce(value, tp, prefix + key)
            _check_range(prefix + key, values[key])
    try:
        return cls(**values)
    except UsageError as err:  # a dataclass's own cross-field checks
        raise UsageError(f"config section {where!r}: {err}") from None


def _check_range(path: str, value: Any) -> None:
    if path in _POSITIVE and not value > 0:
        raise UsageError(f"config key {path!r} must be positive, got {value!r}")
    if path in _NON_NEGATIVE and not value >= 0:
        raise UsageError(f"config key {path!r} must be >= 0, got {value!r}")
    if path in _UNIT_INTERVAL and not 0.0 <= value <= 1.0:
        raise UsageError(f"config key {path!r} must lie in [0, 1], got {value!r}")
    if path in _BOUNDED and not _BOUNDED[path][0] <= value <= _BOUNDED[path][1]:
        raise UsageError(f"config key {path!r} must lie in [{_BOUNDED[path][0]}, {_BOUNDED[path][1]}], got {value!r}")


def _check_ranges(config: RunConfig) -> None:
    """Checks that involve several keys (single values were checked while building)."""
    agent, network = config.agent, config.agent.network
    if not config.games:
        raise UsageError("config key 'games' must list at least one game")
    for key in ("channels", "kernels", "strides"):
        if min(getattr(network, key), default=1) <= 0:
            raise UsageError(f"config key 'agent.network.{key}' must be positive, got {list(getattr(network, key))}")
    try:
        network.feature_side()
    except UsageError as err:
        raise UsageError(f"config section 'agent.network': {err}") from None
    if agent.batch_size > agent.replay_capacity:
        raise UsageError(
            f"agent.batch_size ({agent.batch_size}) is larger than agent.replay_capacity ({agent.replay_capacity})"
        )
    if agent.learning_starts > agent.replay_capacity:
        raise UsageError(
            f"agent.learning_starts ({agent.learning_starts}) exceeds agent.replay_capacity ({agent.replay_capacity}): "
            "a task's buffer never holds that many transitions, so learning would never start; "
            "lower agent.learning_starts or raise agent.replay_capacity"
        )
    played = config.schedule.frames_per_visit * config.schedule.repeats
    if agent.ewc_enabled and agent.ewc_min_frames > played:
        raise UsageError(
            f"agent.ewc_min_frames ({agent.ewc_min_frames}) exceeds the frames each game is played "
            f"(schedule.frames_per_visit x schedule.repeats = {played}): EWC would never anchor a game"
        )
    if config.epsilon.end > config.epsilon.start:
        raise UsageError("epsilon.end must not exceed epsilon.start")
    if config.strategy != "auto" and (config.strategy == "ewc") != agent.ewc_enabled:
        raise UsageError(f"strategy {config.strategy!r} with agent.ewc_enabled: {str(agent.ewc_enabled).lower()}: "
                         f"set agent.ewc_enabled: {str(config.strategy == 'ewc').lower()} (or strategy: auto)")
    if agent.ewc_online_gamma != 1.0 and not agent.ewc_online:
        raise UsageError("agent.ewc_online_gamma only applies with agent.ewc_online: true")
    if config.task_inference == "fmn":
        from fmn import ForgetMeNot

        try:
            ForgetMeNot.from_config(config.fmn, network.frame_shape)
        except UsageError as err:
            raise UsageError(f"config section 'fmn': {err}") from None
    if not config.run_name or "/" in config.run_name:
        raise UsageError(f"run_name must be a non-empty name without '/', got {config.run_name!r}")


def _resolve_games(config: RunConfig) -> RunConfig:
    games = tuple(resolve_game(game) for game in config.games)  # UsageError with close matches
    if len(set(games)) != len(games):
        raise UsageError(f"config key 'games' lists a game twice: {list(games)}")
    family = schedule_family(games)
    check_settings(family, config.env)
    network = config.agent.network
    frame_shape = family.frame_shape(config.env)
    if tuple(network.frame_shape) != frame_shape:
        resized = f" with env.screen_size {config.env.screen_size}" if family.fixed_frame_shape is None else ""
        raise UsageError(f"config key 'agent.network.frame_shape' must be {list(frame_shape)} for "
                         f"{family.name} games{resized} (their frames), got {list(network.frame_shape)}")
    if network.num_actions != family.num_actions:
        raise UsageError(f"config key 'agent.network.num_actions' must be {family.num_actions} for {family.name} "
                         f"games (their full action set), got {network.num_actions}")
    max_tasks = config.agent.network.max_tasks
    if len(games) > max_tasks:
        raise UsageError(f"{len(games)} games need agent.network.max_tasks >= {len(games)}, got {max_tasks}")
    return dataclasses.replace(config, games=games)


def _check_memory(config: RunConfig) -> None:
    """Refuse replay buffers that cannot fit in this machine's memory (before hours are spent)."""
    import os

    per_transition = replay_bytes_per_transition(config.agent)
    needed = per_transition * config.agent.replay_capacity * len(config.games)
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if needed > 0.8 * available:
        planned = "" if config.agent.replay_compression == "none" else ", compressed frames planned at a fifth of raw"
        raise UsageError(
            f"replay buffers need {needed / 2**30:.1f} GiB ({len(config.games)} games x "
            f"{config.agent.replay_capacity} transitions x {per_transition:.0f} B{planned}) but this machine has "
            f"{available / 2**30:.1f} GiB: lower agent.replay_capacity"
        )


def parse_override(text: str) -> tuple[list[str], Any]:
    """'agent.lr=1e-4' -> (['agent', 'lr'], 0.0001); the value is parsed as YAML."""
    if "=" not in text:
        raise UsageError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise UsageError(f"--set {key}: cannot parse value {raw!r}: {err}") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UsageError(f"--set {text}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return data


EXTENDS_KEY = "extends"  # a config file's parent: its keys, with this file's laid over them


def merge_configs(parent: dict, child: dict) -> dict:
    """`child` laid over `parent`: mappings merge key by key, anything else (lists too) replaces."""
    merged = dict(parent)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_configs(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_mapping(path: Path) -> dict:
    """One config file as written (its `extends`, if any, still in it)."""
    if not path.is_file():
        raise UsageError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"{path}: YAML syntax error{where}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: YAML error: {err}") from None
    if not isinstance(data, dict) and data is not None:
        raise UsageError(f"{path}: a config must be a mapping of keys to values")
    if not data:  # a run on defaults alone is almost always a mistake, e.g. a redirect that wrote nothing
        raise UsageError(f"{path} is empty: a config says what to run; start from one in configs/")
    return data


def _resolve_extends(path: Path, children: tuple[Path, ...]) -> dict:
    """`path`'s keys over those of the file it extends, recursively; `children`: the files that led here."""
    data = _read_mapping(path)
    if EXTENDS_KEY not in data:
        return data
    named = data.pop(EXTENDS_KEY)
    if not isinstance(named, str) or not named.strip():
        raise UsageError(f"{path}: {EXTENDS_KEY!r} must name the config file it starts from, relative to "
                         f"this file's directory (e.g. extends: paper.yaml), got {named!r}")
    parent = path.parent / named
    chain = (*children, path)
    if parent.resolve() in {link.resolve() for link in chain}:
        cycle = " -> ".join(str(link) for link in (*chain, parent))
        raise UsageError(f"config files extend each other in a cycle: {cycle}")
    if not parent.is_file():
        raise UsageError(f"{path}: extends {named!r}, but {str(parent)!r} does not exist")
    return merge_configs(_resolve_extends(parent, chain), data)


def load_yaml(path: str | Path) -> dict:
    """A config file as a plain mapping, its `extends` chain resolved; UsageError on any file problem."""
    return _resolve_extends(Path(path), ())


def config_from_dict(data: dict, *, check_memory: bool = True) -> RunConfig:
    config = _build(RunConfig, data, "")
    _check_ranges(config)
    config = _resolve_games(config)
    if check_memory:
        _check_memory(config)
    return config


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read, override and validate a config file; raises UsageError on any mistake."""
    data = apply_overrides(load_yaml(path), list(overrides))
    return config_from_dict(data)


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)
