"""The continual-learning methods a sweep compares (`run.py sweep --methods`), each a bundle of config keys.

Every method is a setting of documented config keys of the same system (docs/training.md,
"Strategies"), applied over the sweep's base config; none forks the trainer. The values not named
here (λ, the Fisher, the rehearsal share's buffers) are the base config's.
"""
from __future__ import annotations

from typing import Any

from common.errors import UsageError

REHEARSAL_SHARE = 0.5  # CLEAR's even mix of new and replayed experience (not tuned here)
REHEARSAL_BC = 0.1  # behaviour cloning's weight beside the Huber TD loss (not tuned here)

METHODS: dict[str, dict[str, Any]] = {
    # fine-tuning: no protection at all, what forgetting looks like
    "finetune": {"strategy": "auto", "agent.ewc_enabled": False, "agent.rehearsal_share": 0.0},
    "ewc": {"strategy": "auto", "agent.ewc_enabled": True, "agent.ewc_online": False, "agent.rehearsal_share": 0.0},
    "online_ewc": {"strategy": "auto", "agent.ewc_enabled": True, "agent.ewc_online": True,
                   "agent.rehearsal_share": 0.0},
    # fresh weights and optimizer state at every switch: no interference, no retention (the single-task reference)
    "reset": {"strategy": "reset", "agent.ewc_enabled": False, "agent.rehearsal_share": 0.0},
    "rehearsal": {"strategy": "auto", "agent.ewc_enabled": False, "agent.rehearsal_share": REHEARSAL_SHARE,
                  "agent.rehearsal_bc": 0.0},
    "rehearsal_bc": {"strategy": "auto", "agent.ewc_enabled": False, "agent.rehearsal_share": REHEARSAL_SHARE,
                     "agent.rehearsal_bc": REHEARSAL_BC},
    "ewc_rehearsal": {"strategy": "auto", "agent.ewc_enabled": True, "agent.ewc_online": False,
                      "agent.rehearsal_share": REHEARSAL_SHARE, "agent.rehearsal_bc": 0.0},
}


def parse_methods(text: str | None) -> list[str]:
    """'--methods finetune,ewc' (or 'all') -> the method names, in the order given."""
    if text is None:
        return []
    names = list(METHODS) if text.strip() == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise UsageError(f"--methods: unknown {unknown or 'empty list'}; choose from {', '.join(METHODS)} or all")
    if len(set(names)) < len(names):
        raise UsageError(f"--methods names a method twice: {text!r}")
    return names


def method_overrides(name: str) -> dict[str, Any]:
    """The config keys and values that make the base config run method `name`."""
    return dict(METHODS[name])
