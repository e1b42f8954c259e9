"""The DQN agent's hyper-parameters, each named once (defaults: the EWC paper's Atari agent)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agents.dqn.networks import NetworkConfig
from common.errors import UsageError

FisherKind = Literal["softmax_exact", "softmax_sample", "td_empirical"]
FISHER_KINDS: tuple[str, ...] = ("softmax_exact", "softmax_sample", "td_empirical")
ReplayCompression = Literal["none", "lz4"]
REPLAY_COMPRESSIONS: tuple[str, ...] = ("none", "lz4")
# Longest n-step return: a sanity bound. Longer returns are nearly Monte-Carlo (their variance, and their
# bias off-policy, grow with n), and sampling walks each episode forward one step at a time.
MAX_N_STEP = 20


@dataclass(frozen=True)
class DQNConfig:
    """Hyper-parameters of the paper's Atari agent (Kirkpatrick et al. 2017, appendix)."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    batch_size: int = 32
    gamma: float = 0.99
    n_step: int = 1  # rewards summed per target (n-step returns, agents/replay.py); 1: one-step Double DQN
    learning_rate: float = 2.5e-4
    rmsprop_alpha: float = 0.95  # decay of the squared-gradient average
    rmsprop_eps: float = 1e-5  # inside the square root, as Dopamine's DQN (agents/optimizer.py)
    rmsprop_centered: bool = False  # see the module doc
    max_grad_norm: float = 10.0  # global-norm clipping of the full gradient (our choice, see module doc)
    huber_delta: float = 1.0
    target_update_period: int = 7_500  # learner updates between target-network syncs
    max_nonfinite_in_a_row: int = 100  # skipped NaN/inf updates in a row before the run is stopped
    # Used by the driver, named here so that every DQN hyper-parameter lives in one place:
    update_period: int = 4  # agent steps per learner update
    learning_starts: int = 50_000  # transitions in a task's buffer before it is trained on
    replay_capacity: int = 500_000  # transitions per task (the paper also mentions 50k)
    # How replay stores frames (agents/replay.py): "lz4" compresses each frame (an Atari frame: 7,056 B raw,
    # a few hundred B compressed); "none" keeps them raw (MinAtar's 1,000 B grids: cheaper to read raw)
    replay_compression: ReplayCompression = "lz4"
    # CLEAR-style rehearsal: this share of every minibatch comes from the earlier tasks' buffers (each sample
    # trained with its own task's gains and biases); the buffers exist anyway, so it costs no memory. 0: off
    rehearsal_share: float = 0.0
    # CLEAR's behaviour cloning on the rehearsed samples: this weight x the cross-entropy of softmax(Q(s, ·)) to
    # the action stored with them (agents/dqn/losses.py). 0: off
    rehearsal_bc: float = 0.0
    # EWC
    ewc_enabled: bool = True  # False: plain DQN baseline (the penalty never counts)
    ewc_lambda: float = 400.0
    ewc_online: bool = False  # online EWC (one anchor, decayed Fisher) instead of one term per task
    ewc_online_gamma: float = 1.0  # Fisher decay for online EWC
    ewc_min_frames: int = 20_000_000  # frames played on a game before its anchor counts (the consolidation actor applies it)
    fisher_kind: FisherKind = "softmax_exact"  # the true Fisher of softmax(Q); see q_network_fisher
    fisher_minibatches: int = 100  # minibatches of the finished task's buffer per Fisher
    # "mean": each task's Fisher divided by its mean over the shared weights before it is merged, so every
    # task is protected alike however large its Q-value differences (and so its softmax Fisher) are;
    # "none": as computed (the paper). lambda does not carry over between the two.
    fisher_normalization: Literal["none", "mean"] = "none"

    def __post_init__(self) -> None:
        # Fail at start-up, not at the first task switch hours into a run.
        if self.fisher_kind not in FISHER_KINDS:
            raise UsageError(f"unknown fisher_kind {self.fisher_kind!r}; choose one of {', '.join(FISHER_KINDS)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise UsageError(f"gamma must lie in [0, 1], got {self.gamma}")
        counts = ("batch_size", "target_update_period", "update_period", "replay_capacity", "fisher_minibatches")
        for name in counts:
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.rehearsal_share < 1.0:
            raise UsageError(f"rehearsal_share must lie in [0, 1), got {self.rehearsal_share}")
        if not self.rehearsal_bc >= 0.0:
            raise UsageError(f"rehearsal_bc must be >= 0, got {self.rehearsal_bc}")
        if self.replay_compression not in REPLAY_COMPRESSIONS:
            raise UsageError(f"replay_compression must be one of {', '.join(REPLAY_COMPRESSIONS)}, "
                             f"got {self.replay_compression!r}")
        if not 1 <= self.n_step <= MAX_N_STEP:
            raise UsageError(f"n_step must lie in [1, {MAX_N_STEP}], got {self.n_step}")
