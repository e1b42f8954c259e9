"""FrameReplay / TaskReplay: sampled stacks equal the frames a real ALE game produced.

The reference stacks are built independently from the recorded episodes (a plain list
per episode, zeros before the first frame). Every sampled transition must equal one of
the reference transitions that the buffer still fully holds: a stack that crossed an
episode boundary, the overwrite point, or another actor's frames would match none.
"""
from __future__ import annotations

import sys

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


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_single_stream_from_real_pong_wraps_and_samples_exact_stacks(pong_episodes, compression):
    buffer = FrameReplay(capacity=400, frame_shape=FRAME, stack=STACK, seed=1, compression=compression)
    write_order = []
    for e, ep in enumerate(pong_episodes):
        buffer.start_episode(ep["frames"][0])
        write_order.append((e, 0))
        for t, action in enumerate(ep["actions"]):
            buffer.add(action, ep["rewards"][t], ep["terminals"][t], ep["frames"][t + 1], ep["ends"][t])
            write_order.append((e, t + 1))
    assert buffer.num_writes == len(write_order) > 2 * buffer.capacity  # wrapped around twice
    check_samples(buffer, pong_episodes, write_order, draws=3000)


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_interleaved_chunks_from_two_actors_follow_each_actors_frames(pong_episodes, compression):
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

    buffer = FrameReplay(capacity=600, frame_shape=FRAME, stack=STACK, seed=2, compression=compression)
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
    assert buffer.slots(0, 6)["frames"].dtype == np.uint8


def test_compressed_frames_sample_what_raw_frames_do_in_a_fraction_of_the_memory(pong_episodes):
    raw, packed = (FrameReplay(capacity=300, seed=5, n_step=3, compression=c) for c in ("none", "lz4"))
    for buffer in (raw, packed):
        for ep in pong_episodes:  # ~1,000 writes: wraps three times, so slots are overwritten
            buffer.start_episode(ep["frames"][0])
            for t, action in enumerate(ep["actions"]):
                buffer.add(action, ep["rewards"][t], ep["terminals"][t], ep["frames"][t + 1], ep["ends"][t])
    a, b = draw(raw, 256), draw(packed, 256)
    for name in ("states", "actions", "rewards", "terminals", "discounts", "next_states"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    b.states[0] = 1  # a sample is the caller's to change
    assert packed.nbytes < raw.nbytes / 8  # Pong frames are mostly flat areas
    def recount(buffer: FrameReplay) -> int:  # the slot table and every written blob
        frames = buffer._frames
        return frames._blobs.nbytes + sum(sys.getsizeof(blob) for blob in frames._blobs if blob is not frames._empty)

    assert packed._frames.nbytes == recount(packed)  # the running count agrees after the overwrites
    assert FrameReplay(capacity=300, compression="lz4")._frames.nbytes == 300 * 8  # nothing written: the table
    # checkpoints save the frames as the buffer keeps them, and either kind loads into either kind of buffer
    first, stop = packed.live_writes()
    saved = packed.slots(first, stop)
    assert "frames" not in saved and len(saved["frame_blobs"]) < raw.slots(first, stop)["frames"].nbytes / 8
    restored = FrameReplay(capacity=300, seed=5, n_step=3, compression="lz4")
    restored.load_state_dict(raw.state_dict())
    assert restored.nbytes == packed.nbytes
    unpacked = FrameReplay(capacity=300, seed=5, n_step=3)
    unpacked.load_state_dict(packed.state_dict())
    assert np.array_equal(unpacked.slots(first, stop)["frames"], raw.slots(first, stop)["frames"])
    for buffer in (restored, unpacked):
        c = draw(buffer, 64)
        assert c.states.shape == (64, STACK, *FRAME)
    repacked = FrameReplay(capacity=300, seed=5, n_step=3, compression="lz4")
    repacked.load_state_dict(packed.state_dict())  # blobs taken as they are
    assert repacked.nbytes == packed.nbytes and np.array_equal(repacked.slots(first, stop)["frame_blobs"], saved["frame_blobs"])
    damaged = packed.state_dict()
    damaged["pieces"][0][1]["frame_ends"][-1] += 1
    with pytest.raises(UsageError, match="damaged compressed frames"):
        FrameReplay(capacity=300, compression="lz4").load_state_dict(damaged)
    with pytest.raises(UsageError, match="compression must be one of none, lz4"):
        FrameReplay(capacity=10, compression="zip")


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


# ---- n-step returns -------------------------------------------------------------------------


GAMMA = 0.5  # exact in binary: hand-computed returns compare exactly

# Three episodes as (rewards, terminals, episode_ends) per transition, written by two actors:
# 0 loses a life at t=2 (terminal, the game goes on) and ends with game over at t=6;
# 1 is cut by a time limit after t=2 (an end without a terminal); 2 is still being played.
NSTEP_EPISODES = [
    ([1, 0, 1, -1, 0, 1, 1], [0, 0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 1]),
    ([1, 1, 1], [0, 0, 0], [0, 0, 1]),
    ([1, 0], [0, 0], [0, 0]),
]
# n_step 3, gamma 1/2: (episode, t) -> (return, discount, terminal, frame index of next_state), by hand.
THREE_STEP_TARGETS = {
    (0, 0): (1 + 0 / 2 + 1 / 4, 1 / 8, 1.0, 3),  # the lost life at t=2 ends the return: no bootstrap
    (0, 1): (0 + 1 / 2, 1 / 4, 1.0, 3),
    (0, 2): (1, 1 / 2, 1.0, 3),
    (0, 3): (-1 + 0 / 2 + 1 / 4, 1 / 8, 0.0, 6),  # three full steps, then bootstrap from frame 6
    (0, 4): (0 + 1 / 2 + 1 / 4, 1 / 8, 1.0, 7),  # game over inside the n steps
    (0, 5): (1 + 1 / 2, 1 / 4, 1.0, 7),
    (0, 6): (1, 1 / 2, 1.0, 7),
    (1, 0): (1 + 1 / 2 + 1 / 4, 1 / 8, 0.0, 3),
    (1, 1): (1 + 1 / 2, 1 / 4, 0.0, 3),  # cut by the time limit: truncated to n' = 2, still bootstrapped
    (1, 2): (1, 1 / 2, 0.0, 3),
    (2, 0): (1 + 0 / 2, 1 / 4, 0.0, 2),  # the newest data: truncated to what is stored
    (2, 1): (0, 1 / 2, 0.0, 2),
}


def write_nstep_episodes(buffer: FrameReplay, slots_per_chunk: int = 3) -> None:
    """Episodes 0 and 2 from actor "a", 1 from actor "b", in small interleaved chunks (links cross chunks)."""
    streams = {}
    for source, episode_ids in (("a", [0, 2]), ("b", [1])):
        builder, chunks = ChunkBuilder(FRAME), []
        for e in episode_ids:
            builder.start_episode(tagged(e, 0))
            for t, (reward, terminal, end) in enumerate(zip(*NSTEP_EPISODES[e])):
                builder.add(t % 3, float(reward), bool(terminal), tagged(e, t + 1), episode_end=bool(end))
                if len(builder) == slots_per_chunk:
                    chunks.append(builder.take())
        if len(builder):
            chunks.append(builder.take())
        streams[source] = chunks
    while any(streams.values()):
        for source, chunks in streams.items():
            if chunks:
                buffer.add_chunk(chunks.pop(0), source=source)


def tag_of(frame: np.ndarray) -> tuple[int, int]:
    """(episode, frame index) of a `tagged` frame."""
    return int(frame[0, 0]) - 1, int(frame[0, 1]) - 1


def sampled_targets(buffer: FrameReplay, draws: int = 600) -> dict[tuple[int, int], tuple[float, float, float, int]]:
    """(episode, t) -> (return, discount, terminal, next frame index) of every transition drawn, checking
    that each draw's stacks are the episode's own frames."""
    batch = draw(buffer, draws)
    found = {}
    for i in range(len(batch)):
        episode, t = tag_of(batch.states[i, -1])
        next_episode, next_index = tag_of(batch.next_states[i, -1])
        assert next_episode == episode
        for stack, last in ((batch.states[i], t), (batch.next_states[i], next_index)):
            expected = [tagged(episode, j) if j >= 0 else np.zeros(FRAME, np.uint8) for j in range(last - 3, last + 1)]
            assert np.array_equal(stack, np.stack(expected))
        value = (float(batch.rewards[i]), float(batch.discounts[i]), float(batch.terminals[i]), next_index)
        assert found.setdefault((episode, t), value) == value, "a transition's target is the same at every draw"
    return found


def test_n_step_returns_discounts_and_terminals_match_hand_computed_targets():
    buffer = FrameReplay(capacity=100, seed=0, n_step=3, gamma=GAMMA)
    write_nstep_episodes(buffer)
    assert sampled_targets(buffer) == THREE_STEP_TARGETS


def test_one_step_samples_are_the_one_step_transitions():
    buffer = FrameReplay(capacity=100, seed=0, gamma=GAMMA)
    assert buffer.n_step == 1
    write_nstep_episodes(buffer)
    expected = {
        (e, t): (float(reward), GAMMA, float(terminal), t + 1)
        for e, (rewards, terminals, _) in enumerate(NSTEP_EPISODES)
        for t, (reward, terminal) in enumerate(zip(rewards, terminals))
    }
    assert sampled_targets(buffer) == expected
    assert buffer.bytes_per_transition == 84 * 84 + 8 + 1 + 4 + 1  # no forward links kept for one step


def test_the_newest_transitions_return_grows_as_their_episode_goes_on():
    buffer = FrameReplay(capacity=100, seed=0, n_step=3, gamma=GAMMA)
    write_nstep_episodes(buffer)
    buffer.add(0, 1.0, False, tagged(2, 3), episode_end=False, source="a")  # actor "a" plays on in episode 2
    targets = sampled_targets(buffer)
    assert targets[(2, 0)] == (1 + 0 / 2 + 1 / 4, 1 / 8, 0.0, 3)
    assert targets[(2, 1)] == (0 + 1 / 2, 1 / 4, 0.0, 3)
    assert targets[(2, 2)] == (1, 1 / 2, 0.0, 3)


def n_step_reference(rewards: list[float], terminals: list[bool], t: int, stored: int, n: int, gamma: float):
    """(return, discount, terminal, next frame index) of transition t when transitions < `stored` are held."""
    total, k = 0.0, 0
    while k < n and t + k < stored:
        total += gamma**k * rewards[t + k]
        k += 1
        if terminals[t + k - 1]:
            return total, gamma**k, 1.0, t + k
    return total, gamma**k, 0.0, t + k


def test_n_step_walks_survive_the_overwrite_point_and_a_checkpoint():
    capacity, length, n = 12, 30, 4
    rewards = [float(t % 5) - 2 for t in range(length)]
    terminals = [t % 7 == 6 for t in range(length)]  # lives lost now and then; the game is still on
    buffer = FrameReplay(capacity=capacity, seed=0, n_step=n, gamma=GAMMA)
    buffer.start_episode(tagged(0, 0))
    for t in range(length):
        # the newest frames took the slots of frames whose successors are still held: no link may survive that
        buffer.add(0, rewards[t], terminals[t], tagged(0, t + 1), episode_end=False)
    targets = sampled_targets(buffer, 500)
    # Writes 19..30 are held: transitions whose four stacked frames are all held start at t = 22.
    assert {t for _, t in targets} == set(range(22, length))
    for (_, t), value in targets.items():
        assert value == pytest.approx(n_step_reference(rewards, terminals, t, length, n, GAMMA))

    restored = FrameReplay(capacity=capacity, seed=0, n_step=n, gamma=GAMMA)  # its forward links are rebuilt
    restored.load_state_dict(buffer.state_dict())
    assert sampled_targets(restored, 500) == targets
    assert restored.bytes_per_transition == 84 * 84 + 8 + 1 + 4 + 1 + 8  # and one forward link per slot


def test_task_replay_samples_n_step_returns_and_bad_n_step_is_refused():
    replay = TaskReplay(capacity_per_task=100, max_tasks=2, seed=0, n_step=3, gamma=GAMMA)
    write_nstep_episodes(replay.buffer(1))
    assert sampled_targets(replay.buffer(1)) == THREE_STEP_TARGETS
    for bad in (0, 2.5, True):
        with pytest.raises(UsageError, match="n_step must be a positive integer"):
            FrameReplay(capacity=20, n_step=bad)
