"""Reference scores: what a score is normalised by, per game family.

Normalised score = (score - random) / (reference - random): 0 plays like a random policy, 1 like
the reference.

- Atari: the reference is the professional human tester ("human-normalised"). Source: Mnih et al.
  2015, "Human-level control through deep reinforcement learning", Nature 518, Extended Data
  Table 2 (random play and human, 30-no-op / 5-minute protocol): the numbers the EWC paper uses.
- MinAtar: the reference is DQN as published with MinAtar (Young & Tian 2019, the 30-seed
  learning curves of its DQN with replay and a target network), read off the curves at the
  points in `MINATAR_DQN_CURVES` and normalised by the last; random play measured here with
  MinAtar's defaults (sticky actions 0.1, difficulty ramping), 1,000 episodes per game.
"""
from __future__ import annotations

# Atari game -> (random score, human score)
ATARI_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 6875.0),
    "Amidar": (5.8, 1676.0),
    "Assault": (222.4, 1496.0),
    "Asterix": (210.0, 8503.0),
    "Asteroids": (719.1, 13157.0),
    "Atlantis": (12850.0, 29028.0),
    "BankHeist": (14.2, 734.4),
    "BattleZone": (2360.0, 37800.0),
    "BeamRider": (363.9, 5775.0),
    "Bowling": (23.1, 154.8),
    "Boxing": (0.1, 4.3),
    "Breakout": (1.7, 31.8),
    "Centipede": (2091.0, 11963.0),
    "ChopperCommand": (811.0, 9882.0),
    "CrazyClimber": (10781.0, 35411.0),
    "DemonAttack": (152.1, 3401.0),
    "DoubleDunk": (-18.6, -15.5),
    "Enduro": (0.0, 309.6),
    "FishingDerby": (-91.7, 5.5),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4335.0),
    "Gopher": (257.6, 2321.0),
    "Gravitar": (173.0, 2672.0),
    "Hero": (1027.0, 25763.0),
    "IceHockey": (-11.2, 0.9),
    "Jamesbond": (29.0, 406.7),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2395.0),
    "KungFuMaster": (258.5, 22736.0),
    "MontezumaRevenge": (0.0, 4367.0),
    "MsPacman": (307.3, 15693.0),
    "NameThisGame": (2292.0, 4076.0),
    "Pong": (-20.7, 9.3),
    "PrivateEye": (24.9, 69571.0),
    "Qbert": (163.9, 13455.0),
    "Riverraid": (1339.0, 13513.0),
    "RoadRunner": (11.5, 7845.0),
    "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 20182.0),
    "SpaceInvaders": (148.0, 1652.0),
    "StarGunner": (664.0, 10250.0),
    "Tennis": (-23.8, -8.9),
    "TimePilot": (3568.0, 5925.0),
    "Tutankham": (11.4, 167.7),
    "UpNDown": (533.4, 9082.0),
    "Venture": (0.0, 1188.0),
    "VideoPinball": (16257.0, 17298.0),
    "WizardOfWor": (563.5, 4757.0),
    "Zaxxon": (32.5, 9173.0),
}


# MinAtar game -> random score (1,000 uniformly random episodes each)
MINATAR_RANDOM: dict[str, float] = {
    "MinAtar/Asterix": 0.48,
    "MinAtar/Breakout": 0.51,
    "MinAtar/Freeway": 0.13,
    "MinAtar/Seaquest": 0.11,
    "MinAtar/SpaceInvaders": 2.80,
}

# MinAtar game -> (agent steps, DQN's score there), read off the published curves (approximate).
MINATAR_DQN_CURVES: dict[str, tuple[tuple[int, float], ...]] = {
    "MinAtar/Asterix": ((1_200_000, 12.0),),
    "MinAtar/Breakout": ((500_000, 8.0), (1_000_000, 10.0)),
    "MinAtar/Freeway": ((800_000, 45.0), (1_700_000, 50.0)),
    "MinAtar/Seaquest": ((1_500_000, 1.0),),
    "MinAtar/SpaceInvaders": ((300_000, 20.0), (2_000_000, 40.0)),
}


def reference(game: str) -> tuple[float, float, str] | None:
    """(random score, reference score, what the reference is) of `game`, or None without references."""
    if game in ATARI_SCORES:
        return (*ATARI_SCORES[game], "human")
    if game in MINATAR_RANDOM and game != "MinAtar/Seaquest":  # DQN barely leaves random play on it
        return MINATAR_RANDOM[game], MINATAR_DQN_CURVES[game][-1][1], "DQN"
    return None


def normalized(game: str, score: float) -> float | None:
    """(score - random) / (reference - random), or None for a game without reference scores."""
    ref = reference(game)
    if ref is None:
        return None
    random_score, top, _ = ref
    return (score - random_score) / (top - random_score)


def published_dqn_score(game: str, steps: int) -> float | None:
    """MinAtar's published DQN score after `steps` agent steps: linear from random play at step 0
    through the points read off its curves, flat after the last (None for other games)."""
    if game not in MINATAR_DQN_CURVES:
        return None
    points = ((0, MINATAR_RANDOM[game]), *MINATAR_DQN_CURVES[game])
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if steps <= x1:
            return y0 + (y1 - y0) * max(steps - x0, 0) / (x1 - x0)
    return points[-1][1]


def capped_sum(normalized_scores: dict[str, float | None]) -> float:
    """The paper's summary metric: sum over games of normalised scores capped at 1."""
    return float(sum(min(value, 1.0) for value in normalized_scores.values() if value is not None))
