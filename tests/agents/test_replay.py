"""FrameReplay / TaskReplay: sampled stacks equal the frames a real ALE game produced.

The reference stacks are built independently from the recorded episodes (a plain list
per episode, zeros before the first frame). Every sampled transition must equal one of
the reference transitions that the buffer still fully holds: a stack that crossed an
episode boundary, the overwrite point, or another actor's frames would match none.
"""
from __future__ import annotations

import numpy as np
import pytest

from agents.replay import (
    Batch,
    ChunkBuilder,
    FrameReplay,
    FrameStack,
    TaskReplay,
    TransitionChunk,
)
from common.errors import UsageError
from envs.atari import make_atari_env
from envs.settings import EnvSettings

STACK = 4
FRAME = (84, 84)


@pytest.fixture(scope="module")
def pong_episodes() -> list[dict]:
    """Five short episodes of random-policy Pong (time-limited to 800 frames, ~200 agent steps)."""
    env = make_atari_env("Pong", seed=0, settings=EnvSettings(max_episode_frames=800))
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(5):
        frame, _ = env.reset()
        episode = {"frames": [frame], "actions": [], "rewards": [], "terminals": [], "ends": []}
        while True:
            action = int(rng.integers(18))
            frame, reward, terminated, truncated, info = env.step(action)
            episode["frames"].append(frame)
            episode["actions"].append(action)
            episode["rewards"].append(reward)
            # Pong has no lives: a point changing hands stands in for a life loss (terminal, no reset).
            episode["terminals"].append(terminated or info["life_lost"] or reward != 0)
            episode["ends"].append(terminated or truncated)
            if terminated or truncated:
                break
        episodes.append(episode)
    env.close()
    return episodes


def draw(buffer: FrameReplay, total: int) -> Batch:
    """`total` uniform draws, in minibatches no larger than the buffer holds."""
    size = min(len(buffer), 32)
    return Batch.concatenate(buffer.sample(size) for _ in range(-(-total // size)))


def reference_stack(frames: list[np.ndarray], last: int) -> np.ndarray:
    """frames[last - 3 .. last], zeros in place of frames before the episode's first."""
    return np.stack([frames[i] if i >= 0 else np.zeros(FRAME, np.uint8) for i in range(last - STACK + 1, last + 1)])


def reference_transitions(episodes: list[dict]) -> dict[bytes, list[tuple]]:
    """next_state bytes -> [(episode, next-frame index, state, action, reward, terminal)]."""
    index: dict[bytes, list[tuple]] = {}
    for e, ep in enumerate(episodes):
        for t, action in enumerate(ep["actions"]):
            next_state = reference_stack(ep["frames"], t + 1)
            state, reward, terminal = reference_stack(ep["frames"], t), np.float32(ep["rewards"][t]), ep["terminals"][t]
            entry = (e, t + 1, state, action, reward, terminal)
            index.setdefault(next_state.tobytes(), []).append(entry)
    return index


def fully_held(write_order: list[tuple[int, int]], capacity: int) -> set[tuple[int, int]]:
    """Transitions (episode, next-frame index) whose frames j-4..j are all among the last `capacity` writes."""
    oldest = len(write_order) - capacity
    write_of = {key: w for w, key in enumerate(write_order)}
    held = set()
    for w, (e, j) in enumerate(write_order):
        needed = [(e, j - k) for k in range(min(j, STACK) + 1)]
        if j > 0 and w >= oldest and all(write_of[key] >= oldest for key in needed):
            held.add((e, j))
    return held


def matched_transitions(batch: Batch, index: dict[bytes, list[tuple]]) -> list[set[tuple[int, int]]]:
    """For each sampled transition, the reference transitions it equals exactly."""
    matches = []
    for i in range(len(batch)):
        candidates = index.get(batch.next_states[i].tobytes(), [])
        matches.append({
            (e, j)
            for e, j, state, action, reward, terminal in candidates
            if np.array_equal(batch.states[i], state)
            and batch.actions[i] == action
            and batch.rewards[i] == reward
            and batch.terminals[i] == float(terminal)
        })
    return matches


def check_samples(buffer: FrameReplay, episodes: list[dict], write_order: list[tuple[int, int]], draws: int) -> None:
    index = reference_transitions(episodes)
    held = fully_held(write_order, buffer.capacity)
    stored = sum(1 for w, (_, j) in enumerate(write_order) if j > 0 and w >= len(write_order) - buffer.capacity)
    assert len(buffer) == stored
    assert stored > len(held), "precondition: some stored transitions have stacks cut by the overwrite point"

    batch = draw(buffer, draws)
    draws = len(batch)
    assert batch.states.dtype == batch.next_states.dtype == np.uint8
    assert batch.states.shape == batch.next_states.shape == (draws, STACK, *FRAME)
    assert batch.actions.dtype == np.int64 and batch.rewards.dtype == batch.terminals.dtype == np.float32
    seen: set[tuple[int, int]] = set()
    for i, matches in enumerate(matched_transitions(batch, index)):
        assert matches & held, f"sample {i} equals no transition the buffer fully holds (matches {sorted(matches)[:3]})"
        seen |= matches & held
    assert len(seen) > 0.6 * len(held)  # uniform sampling reaches most of the buffer
    padded = (batch.states.reshape(draws, STACK, -1).max(axis=2) == 0).any(axis=1)
    assert padded.any(), "precondition: samples at episode starts (zero-padded stacks) were drawn"
    assert batch.terminals.any() and not batch.terminals.all()


def test_single_stream_from_real_pong_wraps_and_samples_exact_stacks(pong_episodes):
    buffer = FrameReplay(capacity=400, frame_shape=FRAME, stack=STACK, seed=1)
    write_order = []
    for e, ep in enumerate(pong_episodes):
        buffer.start_episode(ep["frames"][0])
        write_order.append((e, 0))
        for t, action in enumerate(ep["actions"]):
            buffer.add(action, ep["rewards"][t], ep["terminals"][t], ep["frames"][t + 1], ep["ends"][t])
            write_order.append((e, t + 1))
    assert buffer.num_writes == len(write_order) > 2 * buffer.capacity  # wrapped around twice
    check_samples(buffer, pong_episodes, write_order, draws=3000)


def test_interleaved_chunks_from_two_actors_follow_each_actors_frames(pong_episodes):
    """Two actors' chunks land interleaved; stacks must follow each actor's own frames."""
    actors = {"a": [0, 2, 4], "b": [1, 3]}
    chunks: dict[str, list[tuple[TransitionChunk, list[tuple[int, int]]]]] = {}
    for name, episode_ids in actors.items():
        builder, keys, chunks[name] = ChunkBuilder(FRAME), [], []
        for e in episode_ids:
            ep = pong_episodes[e]
            builder.start_episode(ep["frames"][0])
            keys.append((e, 0))
            for t, action in enumerate(ep["actions"]):
                builder.add(action, ep["rewards"][t], ep["terminals"][t], ep["frames"][t + 1], ep["ends"][t])
                keys.append((e, t + 1))
                if len(builder) == 37:
                    chunks[name].append((builder.take(), keys))
                    keys = []
        chunks[name].append((builder.take(), keys))

    buffer = FrameReplay(capacity=600, frame_shape=FRAME, stack=STACK, seed=2)
    write_order = []
    queues = {name: list(items) for name, items in chunks.items()}
    while any(queues.values()):
        for name, queue in queues.items():
            if queue:
                chunk, keys = queue.pop(0)
                buffer.add_chunk(chunk, source=name)
                write_order.extend(keys)
    check_samples(buffer, pong_episodes, write_order, draws=3000)


def test_frame_stack_used_for_acting_matches_the_replays_stacks(pong_episodes):
    ep = pong_episodes[0]
    stacker = FrameStack(STACK, FRAME)
    assert np.array_equal(stacker.reset(ep["frames"][0]), reference_stack(ep["frames"], 0))
    for t in range(1, 8):
        assert np.array_equal(stacker.push(ep["frames"][t]), reference_stack(ep["frames"], t))


# ---- synthetic frames: each frame carries (episode, step) in its first two pixels ---------


def tagged(episode: int, step: int) -> np.ndarray:
    frame = np.full(FRAME, 255, np.uint8)
    frame[0, 0], frame[0, 1] = episode + 1, step + 1  # 0 stays reserved for padding
    return frame


def fill(buffer: FrameReplay, lengths: list[int]) -> None:
    for e, length in enumerate(lengths):
        buffer.start_episode(tagged(e, 0))
        for t in range(length):
            buffer.add(t % 3, float(t), t == length - 1, tagged(e, t + 1), episode_end=t == length - 1)


def test_short_episode_stacks_are_zero_padded_and_terminal_aligned():
    buffer = FrameReplay(capacity=50, seed=0)
    fill(buffer, [2])
    assert len(buffer) == 2
    batch = draw(buffer, 200)
    for i in range(len(batch)):
        step = int(batch.next_states[i, -1, 0, 1]) - 1  # index of the next frame
        assert step in (1, 2)
        expected_next = [tagged(0, s) if s >= 0 else np.zeros(FRAME, np.uint8) for s in range(step - 3, step + 1)]
        assert np.array_equal(batch.next_states[i], np.stack(expected_next))
        assert np.array_equal(batch.states[i, 1:], batch.next_states[i, :-1])
        assert np.all(batch.states[i, : STACK - step] == 0)
        assert batch.rewards[i] == step - 1 and batch.actions[i] == (step - 1) % 3
        assert batch.terminals[i] == (1.0 if step == 2 else 0.0)


def test_stacks_never_reach_past_the_overwrite_point():
    capacity = 12
    buffer = FrameReplay(capacity=capacity, seed=0)
    fill(buffer, [30])  # one long episode: its first 19 frames are overwritten
    # Writes 19..30 are held; next frames 20..30 are stored transitions, but only those whose
    # four previous frames are held (next frame >= 23) may be sampled.
    assert len(buffer) == capacity
    steps = draw(buffer, 500).next_states[:, -1, 0, 1].astype(int) - 1
    assert set(steps) == set(range(23, 31))


def test_bytes_per_transition_and_uint8_storage():
    buffer = FrameReplay(capacity=1000)
    assert buffer.bytes_per_transition <= 7.2e3
    assert buffer.bytes_per_transition == 84 * 84 + 8 + 1 + 4 + 1  # frame, link, action, reward, terminal
    fill(buffer, [5])
    assert buffer.state_dict()["frames"].dtype == np.uint8


def test_state_dict_round_trip_continues_identically():
    original = FrameReplay(capacity=20, seed=3)
    fill(original, [7, 9, 4])
    original.start_episode(tagged(9, 0))
    original.add(1, 0.0, False, tagged(9, 1), episode_end=False)  # an episode left open
    restored = FrameReplay(capacity=20, seed=99)
    restored.load_state_dict(original.state_dict())
    assert len(restored) == len(original) and restored.num_writes == original.num_writes
    for buffer in (original, restored):
        buffer.add(2, 1.0, True, tagged(9, 2), episode_end=True)  # continues the open episode
    a, b = draw(original, 64), draw(restored, 64)
    for name in ("states", "actions", "rewards", "terminals", "next_states"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    with pytest.raises(UsageError, match="capacity"):
        FrameReplay(capacity=21).load_state_dict(original.state_dict())


def test_bad_input_raises_usage_errors():
    buffer = FrameReplay(capacity=20)
    with pytest.raises(UsageError, match="start_episode"):
        buffer.add(0, 0.0, False, tagged(0, 1), episode_end=False)
    with pytest.raises(UsageError, match="uint8"):
        buffer.start_episode(np.zeros(FRAME, np.float32))
    with pytest.raises(UsageError, match="uint8"):
        buffer.start_episode(np.zeros((84, 83), np.uint8))
    buffer.start_episode(tagged(0, 0))
    with pytest.raises(UsageError, match="actions"):
        buffer.add(-1, 0.0, False, tagged(0, 1), episode_end=False)
    buffer.add(0, 0.0, False, tagged(0, 1), episode_end=True)
    with pytest.raises(UsageError, match="start_episode"):  # the episode has ended
        buffer.add(0, 0.0, False, tagged(0, 2), episode_end=False)
    with pytest.raises(UsageError, match="exceeds"):
        buffer.sample(2)
    builder = ChunkBuilder()
    builder.start_episode(tagged(1, 0))
    builder.add(0, 0.0, False, tagged(1, 1), episode_end=False)
    builder.take()
    builder.add(0, 0.0, False, tagged(1, 2), episode_end=False)
    with pytest.raises(UsageError, match="not seen open"):  # continues an episode this buffer never saw start
        buffer.add_chunk(builder.take(), source="new actor")
    with pytest.raises(UsageError, match="capacity"):
        FrameReplay(capacity=STACK)


def test_task_replay_creates_buffers_lazily_and_checks_task_ids():
    replay = TaskReplay(capacity_per_task=30, max_tasks=3, seed=0)
    assert replay.tasks == [] and replay.nbytes == 0
    builder = ChunkBuilder()
    builder.start_episode(tagged(0, 0))
    for t in range(6):
        builder.add(0, 1.0, False, tagged(0, t + 1), episode_end=t == 5)
    replay.add_chunk(2, builder.take(), source="actor-0")
    assert replay.tasks == [2] and 2 in replay and 0 not in replay
    assert replay.num_transitions(2) == 6 and replay.num_transitions(0) == 0
    assert len(replay.sample(2, 4)) == 4
    with pytest.raises(UsageError, match="no transitions"):
        replay.sample(0, 4)
    with pytest.raises(UsageError, match="max_tasks"):
        replay.buffer(3)
    restored = TaskReplay(capacity_per_task=30, max_tasks=3, seed=0)
    restored.load_state_dict(replay.state_dict())
    assert restored.tasks == [2] and restored.num_transitions(2) == 6


def test_a_buffer_whose_capacity_equals_learning_starts_becomes_ready_when_full():
    """The paper configs' sizes: 50,000 slots per task and learning after 50,000 transitions.

    Episode-start frames take slots without being transitions, so such a buffer never holds
    50,000 transitions; fed from two actors it must still become ready (it does once full).
    """
    capacity = learning_starts = 50_000
    replay = TaskReplay(capacity, max_tasks=1, frame_shape=(2, 2), seed=0)
    rng = np.random.default_rng(0)
    builders, remaining = [ChunkBuilder((2, 2)) for _ in range(2)], [0, 0]
    frame = np.zeros((2, 2), dtype=np.uint8)
    largest, ready_at, steps = 0, None, 0
    while steps < 200_000:
        for source, builder in enumerate(builders):
            for _ in range(100):  # one chunk of 100 agent steps
                if remaining[source] == 0:
                    builder.start_episode(frame)
                    remaining[source] = int(rng.integers(100, 2_000))
                remaining[source] -= 1
                builder.add(0, 0.0, remaining[source] == 0, frame, episode_end=remaining[source] == 0)
            replay.add_chunk(0, builder.take(), source)
            steps += 100
            largest = max(largest, replay.num_transitions(0))
            if ready_at is None and replay.ready(0, learning_starts, batch_size=32):
                ready_at = steps
    assert largest < learning_starts  # what stopped the paper configs from ever learning
    assert ready_at is not None and ready_at <= capacity + 200  # ready as soon as every slot was written
    assert not TaskReplay(10, max_tasks=2).ready(1, 0, 1)  # a task with no buffer is never ready
