"""Forget-me-not (FMN) task inference from Atari frames (Kirkpatrick et al. 2017, appendix).

The continual-learning agent is never told which game it is playing. This module infers it
from the frames alone: each task is a generative model of frames, a hidden Markov model over
"which task is active" decides when the game changed, and a held-out fresh model spawns a new
task when no known task explains the frames. The caller uses the returned task id to pick the
replay buffer and the task-specific parameters.

The model
---------
* A frame (uint8: 84x84 luminance from `envs.atari`, or a (C, 10, 10) grid of 0/255 cells from
  `envs.minatar`, `frame_shape`) is averaged over
  `downscale` x `downscale` blocks (42x42 by default) and quantised to `levels` intensities.
* Each task is a factorised Dirichlet-multinomial: pixel p has its own categorical over the
  levels with a symmetric Dirichlet(`prior`) prior, so the predictive probability of level v
  is (count[p, v] + prior) / (total + levels * prior). For sparse frames (MinAtar) two options
  reshape the prior: `background_prior` adds to level 0's prior count (an empty cell is
  expected) and `channel_backoff` adds a share proportional to how often the pixel's channel
  takes level v in the task (a sprite may move anywhere its channel lights); both are 0 by
  default, and the prior mass in the denominator grows by the same amounts. A third,
  `channel_presence`, adds one channel of pixels that say which channels light anywhere.
* Only every `observe_every`-th frame is an *observation* (the paper updates the models every
  4 agent steps). The frames in between are labelled with the current task, not modelled.
* Decisions are made once per *window* of `window` observations. At a window's end the
  candidates are: stay with the current task for the whole window, or switch to task k
  (another known task, or a new one) before observation j of the window, observations
  [0, j) belonging to the current task. Switching costs log(alpha) with alpha = 1/t
  (t = observations so far), staying log(1 - alpha). The best candidate's tasks keep the
  window's counts; the other models do not ("revert"). Considering switches *inside* the
  window matters: a window that straddles a game change is explained by neither game
  alone, so without them the new-task candidate wins and a junk task appears.
* The new-task candidate (the held-out model) is a fresh model with the prior alone: it
  predicts its first observation uniformly (-pixels * log(levels)) and learns from the
  window's earlier observations to predict the later ones, i.e. it is scored by the
  Dirichlet-multinomial marginal likelihood. The learning matters: a fresh model frozen at
  uniform loses to any known game that shares a large black background with the new one.
* Known tasks score the window's observations with the counts they had at the window's
  start (a window adds at most `window` counts, few next to what a task has after its first
  windows, so this differs little from updating as they go). That makes scoring one gather from a table of
  log(count + prior) stacked across tasks, with cached normalisers.
* An observation that a task explains worse than the uniform model (a one-frame screen
  flash when a ship explodes) is scored as an outlier of that task with probability
  `outlier_prob`: its log-likelihood under any model is at least
  log(outlier_prob) - pixels * log(levels). Without that one flash frame outweighs the rest
  of the window and spawns a task that lives for one window.

Known behaviour (random-policy frames, default options):
* A game whose screen changes completely (Krull's village, map and battle screens, Enduro's
  day / night / snow / fog phases, a flash longer than one observation in BeamRider or
  Atlantis) looks like a different game to a pixel model and becomes a task of its own; the
  agent then has several task ids for one game, and a return to the game gives back the id
  of the scene it shows.
* Games that are nearly all black with a few small sprites can be explained by a known game
  with a black screen: after SpaceInvaders, BeamRider and DemonAttack get SpaceInvaders' id
  (and DemonAttack gets BeamRider's). `observe_every=1` or `window=8` keeps them apart, at
  the price of more scene tasks (window=8) or 2-3x the compute (observe_every=1).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from common.errors import UsageError

FRAME_SHAPE = (84, 84)
_STATE_VERSION = 1
_QUANTISE_CHUNK = 64  # observations quantised at once by observe_batch


@dataclass(frozen=True)
class FMNConfig:
    """ForgetMeNot's options, each with its default (the paper's value where it gives one).

    window: observations per decision window (4, the paper's). Task switches are decided at
        a window's end, so a switch is reported within about two windows, i.e.
        2 * window * observe_every frames, usually within one.
    observe_every: every this-many frames is an observation, scored and used to update the
        models (4: the paper updates the models every 4 steps). The first frame ever seen is
        an observation. 1 models every frame.
    downscale: frames are averaged over downscale x downscale blocks before modelling
        (2, the paper's: 84x84 -> 42x42). Must divide the frame's height and width; MinAtar's
        10x10 grids use 1 (every cell of every channel a pixel) with 2 levels (off / on).
    levels: intensity levels after quantisation (32). Games are told apart by which pixels
        take which shades; 16 and 64 work as well on the games tried.
    prior: symmetric Dirichlet concentration per level (1/32, one pseudo-count per pixel in
        all). A large prior (0.5) lets a known game explain a new one with the same dark
        background (SpaceInvaders, Gopher, Krull and Asterix merge), a small one keeps them apart.
    background_prior: extra prior count on level 0 (black, an empty cell), 0 by default. On sparse
        frames (MinAtar grids light 7-50 of 1,000 cells) a new task otherwise pays log(levels) per
        pixel for its first observation, more than a known game pays for a different game's few
        sprites, so a new game is merged into the first one (MinAtar: 1.0).
    channel_backoff: a task's prior count for (pixel, level) also gets channel_backoff x the share
        of the pixel's channel's cells at that level in the task's observations, 0 by default. A
        sprite in a new place then costs little if its channel lights elsewhere in this game, and
        much if the game never lights that channel: which channels light is a game's signature
        (MinAtar: 300.0; an (H, W) frame is one channel). Large values also keep a game whose lanes
        change channel between episodes (MinAtar Freeway re-draws its cars' speeds) one task.
    channel_presence: False by default. True adds one channel to every (C, H, W) frame whose cell c is
        the highest level channel c reaches anywhere: which channels light together, a sparse game's
        signature wherever its sprites are (MinAtar: true; needs C <= the blocks of a channel).
    count_cap: when a task's per-pixel total count (its number of observations, up to
        halvings) reaches this, its counts are halved (1000). Without a cap the cost of a
        never-seen level grows as log(total) without bound, so a long-lived task becomes ever
        less tolerant of small novelties (a sprite somewhere new) and in the end spawns junk
        tasks (not seen within 16,000-frame single-game runs; training runs are far longer).
        The cap bounds that cost at log((count_cap + levels * prior) / prior) nats per pixel
        (10.4 with the defaults) and lets a task follow slow drift. None (0 in a run config)
        disables it.
    outlier_prob: probability that an observation is an outlier of its task, explained by
        the uniform model instead (0.1; not in the paper, see the module docstring). It only
        breaks near-ties, as likelihood margins are thousands of nats: one odd observation
        at a window's end is as likely under a brand-new task as under the uniform outlier
        model, and it stays an outlier as long as outlier_prob exceeds the switch
        probability 1/t, i.e. after the first 10 observations with 0.1.
    confirm_windows: a switch to a known task is made only once that task has won this many more
        windows in a row (0 by default: at once); the windows in between update no model. A game
        with a phase that another game's model explains better (SpaceInvaders' nearly empty screen
        between waves, played well, against MinAtar Freeway's) otherwise alternates between the two
        ids every window, and its own model never learns that phase (MinAtar: 1). A new task is
        spawned at once; a returning game is reported confirm_windows windows later.
    """

    window: int = 4
    observe_every: int = 4
    downscale: int = 2
    levels: int = 32
    prior: float = 1 / 32
    background_prior: float = 0.0
    channel_backoff: float = 0.0
    count_cap: float = 1000.0
    outlier_prob: float = 0.1
    channel_presence: bool = False
    confirm_windows: int = 0


class ForgetMeNot:
    """Online task inference: `observe(frame)` returns the current task id (0, 1, 2, ... in order of discovery).

    Options: `FMNConfig` (the constructor takes the same names).

    State: `state_dict()` holds only numpy arrays and python scalars, so it can be pickled
    and saved with torch.save (torch.load then needs weights_only=False, as for any numpy
    array); a loaded state continues with identical decisions.
    """

    def __init__(
        self,
        *,
        window: int = FMNConfig.window,
        observe_every: int = FMNConfig.observe_every,
        downscale: int = FMNConfig.downscale,
        levels: int = FMNConfig.levels,
        prior: float = FMNConfig.prior,
        background_prior: float = FMNConfig.background_prior,
        channel_backoff: float = FMNConfig.channel_backoff,
        count_cap: float | None = FMNConfig.count_cap,
        outlier_prob: float = FMNConfig.outlier_prob,
        channel_presence: bool = FMNConfig.channel_presence,
        confirm_windows: int = FMNConfig.confirm_windows,
        frame_shape: tuple[int, ...] = FRAME_SHAPE,
    ):
        if not (_is_integer(window) and window >= 1):
            raise UsageError(f"window must be an integer >= 1, got {window!r}")
        if not (_is_integer(observe_every) and observe_every >= 1):
            raise UsageError(f"observe_every must be an integer >= 1, got {observe_every!r}")
        frame_shape = tuple(int(n) for n in frame_shape)
        if len(frame_shape) not in (2, 3) or min(frame_shape) < 1:
            raise UsageError(f"frame_shape must be (H, W) or (C, H, W), got {frame_shape}")
        height, width = frame_shape[-2:]
        if not (_is_integer(downscale) and downscale >= 1 and height % downscale == 0 and width % downscale == 0):
            raise UsageError(f"downscale must be an integer dividing the frame's {height} x {width}, got {downscale!r}")
        if not (_is_integer(levels) and 2 <= levels <= 256):
            raise UsageError(f"levels must be an integer in [2, 256], got {levels!r}")
        if not (_is_number(prior) and math.isfinite(prior) and prior > 0):
            raise UsageError(f"prior must be a positive number, got {prior!r}")
        if not (_is_number(background_prior) and math.isfinite(background_prior) and background_prior >= 0):
            raise UsageError(f"background_prior must be a number >= 0, got {background_prior!r}")
        if not (_is_number(channel_backoff) and math.isfinite(channel_backoff) and channel_backoff >= 0):
            raise UsageError(f"channel_backoff must be a number >= 0, got {channel_backoff!r}")
        if count_cap is not None and not (_is_number(count_cap) and count_cap >= 2 * window):
            raise UsageError(f"count_cap must be None or a number >= 2 * window ({2 * window}), got {count_cap!r}")
        if not (_is_number(outlier_prob) and 0 < outlier_prob < 1):
            raise UsageError(f"outlier_prob must be in (0, 1), got {outlier_prob!r}")
        if not (_is_integer(confirm_windows) and confirm_windows >= 0):
            raise UsageError(f"confirm_windows must be an integer >= 0, got {confirm_windows!r}")
        if not isinstance(channel_presence, bool):
            raise UsageError(f"channel_presence must be true or false, got {channel_presence!r}")
        blocks = (height // downscale) * (width // downscale)
        if channel_presence and (len(frame_shape) != 3 or frame_shape[0] > blocks):
            raise UsageError(f"channel_presence needs (C, H, W) frames with C <= H * W / downscale^2, "
                             f"got {frame_shape}")

        self.window = int(window)
        self.observe_every = int(observe_every)
        self.downscale = int(downscale)
        self.levels = int(levels)
        self.prior = float(prior)
        self.background_prior = float(background_prior)
        self.channel_backoff = float(channel_backoff)
        self.count_cap = None if count_cap is None else float(count_cap)
        self.outlier_prob = float(outlier_prob)
        self.channel_presence = channel_presence
        self.confirm_windows = int(confirm_windows)
        self.frame_shape = frame_shape

        self._block_shape = (*frame_shape[:-2], height // self.downscale, width // self.downscale)
        if channel_presence:  # one more channel: its cell c says whether channel c lights anywhere
            self._block_shape = (frame_shape[0] + 1, *self._block_shape[1:])
        self.num_pixels = int(np.prod(self._block_shape))
        self.uniform_log_likelihood = -self.num_pixels * math.log(self.levels)
        # Flat index of (pixel, level) is pixel * levels + level: one gather scores a frame.
        self._pixel_offsets = np.arange(self.num_pixels, dtype=np.intp) * self.levels
        level_priors = np.full(self.levels, self.prior)
        level_priors[0] += self.background_prior
        channels = self._block_shape[0] if len(frame_shape) == 3 else 1
        self._tasks = TaskCounts(self.num_pixels, level_priors, self.count_cap, channels, self.channel_backoff)
        self._pending: list[np.ndarray] = []  # flat indices of the current window's observations
        self._frames_seen = 0
        self._observations_seen = 0
        self._return_streak = (-1, 0)  # (known task, windows in a row it has won) while a return waits to be confirmed
        self._current_task = -1  # no task before the first window ends

    # ------------------------------------------------------------------ public API

    @property
    def num_tasks(self) -> int:
        return self._tasks.num_tasks

    @property
    def current_task(self) -> int:
        """The id `observe` returns now; 0 before the first window ends (the first task will be 0)."""
        return max(self._current_task, 0)

    def observe(self, frame: np.ndarray) -> int:
        """Feed the next preprocessed uint8 frame (`frame_shape`); returns the current task id."""
        _check_frames(frame, self.frame_shape, batched=False)
        if self._frames_seen % self.observe_every == 0:
            self._add_observation(self._flat_indices(frame[None])[0])
        self._frames_seen += 1
        return self.current_task

    def observe_batch(self, frames: np.ndarray) -> list[int]:
        """Feed consecutive frames, uint8 (N, *frame_shape); returns the id after each, as N `observe` calls would."""
        _check_frames(frames, self.frame_shape, batched=True)
        count = frames.shape[0]
        first = (-self._frames_seen) % self.observe_every  # the batch's first observation
        positions = np.arange(first, count, self.observe_every)
        observed_frames = frames[first :: self.observe_every]

        labels = np.empty(count, dtype=np.int64)
        start = 0
        for chunk in range(0, len(positions), _QUANTISE_CHUNK):  # chunks keep the work in cache
            chunk_observations = self._flat_indices(observed_frames[chunk : chunk + _QUANTISE_CHUNK])
            for position, observation in zip(positions[chunk : chunk + _QUANTISE_CHUNK], chunk_observations):
                labels[start:position] = self.current_task  # the frames before this observation
                self._add_observation(observation)
                start = position
        labels[start:] = self.current_task
        self._frames_seen += count
        return labels.tolist()

    def log_likelihoods(self, frame: np.ndarray) -> np.ndarray:
        """Diagnostics: log-probability of a frame (as an observation) under each task, then the uniform model.

        Shape (num_tasks + 1,); raw model scores, without the outlier floor. Changes nothing.
        """
        _check_frames(frame, self.frame_shape, batched=False)
        scores = self._tasks.score(self._flat_indices(frame[None]))[0]
        return np.append(scores, self.uniform_log_likelihood)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue with identical decisions: numpy arrays and python scalars."""
        pending_levels = [indices - self._pixel_offsets for indices in self._pending]
        return {
            "version": _STATE_VERSION,
            "config": self._config(),
            "counts": self._tasks.counts.reshape(self.num_tasks, self.num_pixels, self.levels).copy(),
            "totals": self._tasks.totals.copy(),
            "pending_levels": np.array(pending_levels, dtype=np.uint8).reshape(-1, self.num_pixels),
            "frames_seen": self._frames_seen,
            "observations_seen": self._observations_seen,
            "current_task": self._current_task,
            "return_streak": np.array(self._return_streak, dtype=np.int64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()`; it must have been saved with this instance's configuration."""
        _check_state_version(state)
        if {**_OPTION_DEFAULTS, **state["config"]} != self._config():
            raise UsageError(
                f"state was saved with config {state['config']}, this instance has {self._config()}; "
                "use ForgetMeNot.from_state_dict(state)"
            )
        counts, pending = _checked_arrays(state, self.num_pixels, self.levels, self.window)
        num_tasks = counts.shape[0]
        flat = counts.reshape(num_tasks, self.num_pixels * self.levels)  # also with no task yet
        self._tasks.install(flat.copy(), np.array(state["totals"], dtype=np.float64))
        self._pending = [row + self._pixel_offsets for row in pending]
        self._frames_seen = int(state["frames_seen"])
        self._observations_seen = int(state["observations_seen"])
        self._current_task = int(state["current_task"])
        target, wins = state.get("return_streak", (-1, 0))  # absent in states saved before confirm_windows
        self._return_streak = (int(target), int(wins))

    @classmethod
    def from_config(cls, config: FMNConfig, frame_shape: tuple[int, ...] = FRAME_SHAPE) -> ForgetMeNot:
        options = asdict(config)
        options["count_cap"] = options["count_cap"] or None
        return cls(**options, frame_shape=frame_shape)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ForgetMeNot:
        """A new instance with the saved configuration and state."""
        _check_state_version(state)
        fmn = cls(**state["config"])
        fmn.load_state_dict(state)
        return fmn

    # ------------------------------------------------------------------ frames -> observations

    def _flat_indices(self, frames: np.ndarray) -> np.ndarray:
        """(N, *frame_shape) uint8 -> (N, pixels) flat (pixel, level) indices into the count table."""
        d, count = self.downscale, frames.shape[0]
        block_sums = np.zeros((count, *frames.shape[1:-2], *self._block_shape[-2:]), dtype=np.int32)
        for row in range(d):  # strided adds: ~5x faster than reshape + sum on frames this small
            for col in range(d):
                block_sums += frames[..., row::d, col::d]
        levels = block_sums * self.levels // (256 * d * d)
        if self.channel_presence:  # which channels light together, wherever they light
            levels = levels.reshape(count, levels.shape[1], -1)
            presence = np.zeros((count, 1, levels.shape[-1]), dtype=levels.dtype)
            presence[:, 0, : levels.shape[1]] = levels.max(axis=-1)
            levels = np.concatenate([levels, presence], axis=1)
        return levels.reshape(count, -1) + self._pixel_offsets

    # ------------------------------------------------------------------ scoring

    def _with_outliers(self, log_likelihoods: np.ndarray) -> np.ndarray:
        """Per-observation scores of a model mixed with the uniform model (weight `outlier_prob`)."""
        return np.logaddexp(
            log_likelihoods + math.log1p(-self.outlier_prob),
            self.uniform_log_likelihood + math.log(self.outlier_prob),
        )

    def _new_task_suffix_scores(self, observations: np.ndarray) -> np.ndarray:
        """scores[j]: log-likelihood of observations [j, window) under a fresh task that learns as it goes.

        A fresh task started at observation j predicts observation i >= j from its counts of
        observations [j, i): a level's probability is (matches + pseudo) / (i - j + prior mass), where
        pseudo is the level's prior (plus background_prior for level 0, plus channel_backoff x the
        level's share of the pixel's channel in observations [j, i)), as for a known task.
        """
        window = len(observations)
        tasks = self._tasks
        priors = tasks.priors[observations]  # (window, pixels): the prior count of each observed level
        prior_mass = tasks.prior_mass
        if tasks.backoff:  # per observation and (channel, level): how many of the channel's cells take the level
            group_keys = tasks.group_of_pixel * self.levels + (observations - self._pixel_offsets)  # (window, pixels)
            group_hists = np.stack([np.bincount(keys, minlength=tasks.groups * self.levels) for keys in group_keys])
        in_suffix = np.zeros((window, window), dtype=bool)
        log_likelihoods = np.zeros((window, window))  # [j, i]: observation i under the task started at j
        for i in range(window):
            matches = np.zeros(self.num_pixels, dtype=np.intp)  # per pixel: observations in [j, i) equal to i
            hist = np.zeros(tasks.groups * self.levels)
            for j in range(i, -1, -1):
                pseudo = priors[i]
                if j < i:
                    matches += observations[j] == observations[i]
                    if tasks.backoff:
                        hist += group_hists[j]
                if tasks.backoff:
                    base = (hist[group_keys[i]] / ((i - j) * tasks.group_size) if j < i
                            else tasks.initial_share[observations[i] - self._pixel_offsets])
                    pseudo = pseudo + tasks.backoff * base
                normaliser = self.num_pixels * math.log(i - j + prior_mass)
                log_likelihoods[j, i] = np.log(matches + pseudo).sum() - normaliser
                in_suffix[j, i] = True
        return np.where(in_suffix, self._with_outliers(log_likelihoods), 0.0).sum(axis=1)

    # ------------------------------------------------------------------ decisions

    def _add_observation(self, observation: np.ndarray) -> None:
        self._pending.append(observation)
        self._observations_seen += 1
        if len(self._pending) == self.window:
            self._decide_window(np.stack(self._pending))
            self._pending = []

    def _decide_window(self, observations: np.ndarray) -> None:
        """Pick the best of: stay with the current task, or switch to task k before observation j."""
        if self._current_task < 0:  # the very first window: a new task is the only candidate
            self._current_task = self._tasks.spawn()
            self._tasks.update(self._current_task, observations)
            return

        window = len(observations)
        scores = self._with_outliers(self._tasks.score(observations))  # (window, tasks)
        current = self._current_task
        prefix = np.concatenate(([0.0], np.cumsum(scores[:, current])))  # prefix[j]: current task on [0, j)
        suffix = np.cumsum(scores[::-1], axis=0)[::-1]  # suffix[j, k]: task k on [j, window)
        suffix = np.column_stack([suffix, self._new_task_suffix_scores(observations)])  # last column: new task

        # Observation j of the window is the t-th overall (t >= 2 here: a task exists), and
        # alpha_t = 1/t is the probability that the task switched just before it.
        t = self._observations_seen - window + 1 + np.arange(window)
        log_stay = np.log1p(-1.0 / t)
        log_switch = -np.log(t)
        stay_score = prefix[-1] + log_stay.sum()
        switch_scores = prefix[:-1, None] + suffix + (log_stay.sum() - log_stay + log_switch)[:, None]
        switch_scores[:, current] = -np.inf  # "switching" to the current task is staying

        position, target = np.unravel_index(np.argmax(switch_scores), switch_scores.shape)
        if switch_scores[position, target] <= stay_score:  # ties keep the current task
            self._return_streak = (-1, 0)
            self._tasks.update(current, observations)
            return
        if target < self.num_tasks and self.confirm_windows:  # a return: confirmed by later windows
            streak, wins = self._return_streak
            self._return_streak = (int(target), wins + 1 if streak == target else 1)
            if self._return_streak[1] <= self.confirm_windows:
                return
        self._return_streak = (-1, 0)
        if target == self.num_tasks:
            target = self._tasks.spawn()
        self._tasks.update(current, observations[:position])
        self._tasks.update(target, observations[position:])
        self._current_task = int(target)

    def _config(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _CONFIG_NAMES}


class TaskCounts:
    """The tasks' models: per task and pixel, a histogram of quantised levels with a Dirichlet prior (per level,
    optionally backed off to the pixel's channel).

    Counts are kept flat as (tasks, pixels * levels), with log(count + prior) cached with tasks on the
    last axis, so scoring an observation is one gather of its (pixel, level) rows and one sum.
    """

    def __init__(self, num_pixels: int, level_priors: np.ndarray, count_cap: float | None, groups: int = 1,
                 backoff: float = 0.0):
        self.num_pixels, self.levels, self.count_cap = num_pixels, len(level_priors), count_cap
        self.priors = np.tile(level_priors, num_pixels)  # the prior count of each (pixel, level)
        self.groups, self.group_size, self.backoff = groups, num_pixels // groups, backoff
        self.group_of_pixel = np.arange(num_pixels) // self.group_size
        self.prior_mass = float(level_priors.sum()) + backoff  # the same for every pixel
        # A channel's level shares before it is observed: the priors' (mostly empty cells where background_prior is
        # set), so a new task pays for a sparse frame's few lit cells, not log(levels) for each of its empty ones.
        self.initial_share = level_priors / level_priors.sum()
        self._pixel_weights = np.ones(num_pixels)  # sums gathered log-probs with one matmul
        self.install(np.zeros((0, num_pixels * self.levels)), np.zeros(0))

    @property
    def num_tasks(self) -> int:
        return self.counts.shape[0]

    def install(self, counts: np.ndarray, totals: np.ndarray) -> None:
        """Set counts (tasks, pixels * levels) and per-task totals, rebuilding the cached logs."""
        self.counts = counts
        self.totals = totals
        self._log_table = np.ascontiguousarray(np.log(counts + self._pseudo_counts(counts, totals)).T)
        self._refresh_normalisers()

    def _refresh_normalisers(self) -> None:
        # Every pixel of a task has the same total, so one normaliser per task covers all pixels.
        self._log_normalisers = self.num_pixels * np.log(self.totals + self.prior_mass)

    def spawn(self) -> int:
        empty_row = np.zeros((1, self.counts.shape[1]))
        self.install(np.vstack([self.counts, empty_row]), np.append(self.totals, 0.0))
        return self.num_tasks - 1

    def update(self, task: int, observations: np.ndarray) -> None:
        """Add the observations to `task`'s counts and refresh its cached logs."""
        if len(observations) == 0:
            return
        counts = self.counts[task]  # a view: updates land in self.counts
        for indices in observations:  # distinct within one observation, so += is safe
            counts[indices] += 1.0
        self.totals[task] += len(observations)
        capped = self.count_cap is not None and self.totals[task] >= self.count_cap
        if capped:
            counts *= 0.5
            self.totals[task] *= 0.5
        if capped or self.backoff:  # every entry changed (the backoff follows the channel's shares)
            self._log_table[:, task] = np.log(counts + self._pseudo_counts(counts, self.totals[task]))
        else:
            touched = observations.ravel()
            self._log_table[touched, task] = np.log(counts[touched] + self.priors[touched])
        self._refresh_normalisers()  # for all tasks: the same arithmetic as after a load

    def _pseudo_counts(self, counts: np.ndarray, totals: np.ndarray | float) -> np.ndarray:
        """Each (pixel, level)'s prior count: the level's prior, plus `backoff` x the share of the pixel's channel's
        cells at that level in the task's observations (the level priors' proportions before any)."""
        if not self.backoff:
            return self.priors
        totals = np.asarray(totals, dtype=np.float64)
        by_group = counts.reshape(*counts.shape[:-1], self.groups, self.group_size, self.levels).sum(-2)
        seen = np.maximum(totals, 1.0)[..., None, None] * self.group_size
        base = np.where(totals[..., None, None] > 0, by_group / seen, self.initial_share)
        spread = np.broadcast_to(base[..., None, :], (*base.shape[:-1], self.group_size, self.levels))
        return self.priors + self.backoff * spread.reshape(counts.shape)

    def score(self, observations: np.ndarray) -> np.ndarray:
        """(W, pixels) flat indices -> (W, tasks) log-likelihood of each observation under each known task."""
        window, pixels = observations.shape
        gathered = np.take(self._log_table, observations.ravel(), axis=0).reshape(window, pixels, self.num_tasks)
        return self._pixel_weights @ gathered - self._log_normalisers


# Options added after states were first saved, with the values those states were made with.
_OPTION_DEFAULTS = {"background_prior": 0.0, "channel_backoff": 0.0, "channel_presence": False, "confirm_windows": 0}
_CONFIG_NAMES = ("window", "observe_every", "downscale", "levels", "prior", "background_prior", "channel_backoff",
                 "count_cap", "outlier_prob", "channel_presence", "confirm_windows", "frame_shape")


def _checked_arrays(state: dict[str, Any], num_pixels: int, levels: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """A saved state's counts (tasks, pixels, levels) and pending observations, checked against the model's sizes."""
    counts = np.asarray(state["counts"], dtype=np.float64)
    num_tasks = counts.shape[0] if counts.ndim == 3 else -1
    if counts.shape != (num_tasks, num_pixels, levels) or np.shape(state["totals"]) != (num_tasks,):
        raise UsageError(
            f"state counts have shape {counts.shape} and totals {np.shape(state['totals'])}, "
            f"expected (tasks, {num_pixels}, {levels}) and (tasks,)"
        )
    pending = np.asarray(state["pending_levels"], dtype=np.intp)
    if pending.ndim != 2 or pending.shape[1] != num_pixels or len(pending) >= window:
        raise UsageError(f"state pending_levels has shape {pending.shape}, expected (< {window}, {num_pixels})")
    if not -1 <= int(state["current_task"]) < num_tasks:
        raise UsageError(f"state current_task {state['current_task']} is not one of its {num_tasks} tasks")
    return counts, pending


def _is_integer(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_state_version(state: Any) -> None:
    if not isinstance(state, dict) or state.get("version") != _STATE_VERSION or "config" not in state:
        raise UsageError(f"not a ForgetMeNot state_dict (version {_STATE_VERSION} expected)")


def _check_frames(frames: Any, frame_shape: tuple[int, ...], *, batched: bool) -> None:
    expected = "(" + ", ".join(["N", *map(str, frame_shape)] if batched else list(map(str, frame_shape))) + ")"
    if not isinstance(frames, np.ndarray):
        raise UsageError(f"frames must be a numpy uint8 array of shape {expected}, got {type(frames).__name__}")
    if frames.shape[int(batched):] != frame_shape or frames.ndim != len(frame_shape) + int(batched):
        hint = " (use observe_batch for several frames)" if not batched and frames.shape[1:] == frame_shape else ""
        raise UsageError(f"frame shape must be {expected} (preprocessed frames), got {frames.shape}{hint}")
    if frames.dtype != np.uint8:
        raise UsageError(f"frames must be uint8 (0-255) as envs/ produces them, got dtype {frames.dtype}")
