"""Frame replay on real dm_control data: stacking at sample time, windows, truncation."""

import pytest
import torch

STACK = 3  # the frames per stack of ``fill_replay``


def test_every_frame_is_stored_once_plus_one_final_observation_per_episode(fill_replay, collected):
    replay = fill_replay(collected, capacity=10_000)
    episodes = int(collected["next", "done"].sum())
    assert episodes == 3
    assert len(replay) == len(collected) + episodes
    assert replay.store.frames[0]["pixels"].shape == (3, 24, 24) and replay.store.frames[0]["pixels"].dtype == torch.uint8


def test_stacked_frames_equal_what_the_agent_saw(fill_replay, collected):
    """Rebuilt stacks match CatFrames' stacks from the environment, including at episode starts."""
    replay = fill_replay(collected, capacity=10_000)
    rows = replay.store.storage[: len(replay)]
    action_rows = rows["has_action"].reshape(-1).nonzero().squeeze(-1)
    assert len(action_rows) == len(collected)
    stacked = replay.store.stacked_pixels(action_rows)
    assert torch.equal(stacked, collected["pixels"])
    assert torch.equal(replay.store.stacked_pixels(action_rows + 1), collected["next", "pixels"])


def test_transitions_bootstrap_through_time_limits(fill_replay, collected):
    replay = fill_replay(collected, capacity=10_000)
    last = collected["next", "done"].reshape(-1)
    assert collected["next", "truncated"].reshape(-1)[last].all(), "dm_control time limits are truncations"
    assert not collected["next", "terminated"].any()
    batch = replay.sample_transitions(512)
    assert not batch["terminated"].any(), "a time-limit end must not stop the bootstrap"
    # Sampled next observations are real successors: every sampled (pixels, next_pixels) pair occurs in the data.
    pairs = {(p[-3:].sum().item(), n[-3:].sum().item()) for p, n in zip(collected["pixels"], collected["next", "pixels"])}
    assert all((p[-3:].sum().item(), n[-3:].sum().item()) in pairs for p, n in zip(batch["pixels"], batch["next_pixels"]))


def test_transitions_skip_final_observations_and_the_newest_row(fill_replay, collected):
    replay = fill_replay(collected[:10], capacity=10_000)
    index = replay._valid_transition_rows(2000)
    assert index.max() == 8, "row 9 has no successor yet"
    replay = fill_replay(collected[:125], capacity=10_000)
    assert 125 not in replay._valid_transition_rows(5000).tolist(), "the final observation row is not a transition"


@pytest.mark.parametrize("capacity", [10_000, 300])  # 300 < 378 rows: the storage wraps around
def test_windows_never_cross_an_episode_end(fill_replay, collected, capacity):
    replay = fill_replay(collected, capacity=capacity, seq_len=16)
    windows = replay.sample_windows(256)
    rows = replay.store.storage[windows["index"].reshape(-1)]
    trajectory = rows["trajectory"].reshape(256, 16)
    step = rows["step_count"].reshape(256, 16)
    assert (trajectory == trajectory[:, :1]).all()
    assert (step[:, 1:] - step[:, :-1] == 1).all(), "a window skips or repeats a step"
    assert rows["has_action"].all(), "a window contains an episode's final observation"
    assert windows["pixels"].shape == (256, 16, 3 * STACK, 24, 24)


def test_wrapped_storage_never_stacks_frames_from_a_newer_episode(fill_replay, collected):
    replay = fill_replay(collected, capacity=300)
    oldest = replay.store.cursor
    stacked = replay.store.stacked_pixels(torch.tensor([oldest]))
    frame = replay.store.frames[oldest]["pixels"]
    assert torch.equal(stacked[0], frame.repeat(STACK, 1, 1)), "reached past the oldest stored row"


@pytest.mark.parametrize("capacity", [10_000, 300])
def test_official_windows_keep_the_first_candidates_without_an_episode_end(fill_replay, collected, capacity):
    replay = fill_replay(collected, capacity=capacity, seq_len=16)
    replay.official_windows = True
    torch.manual_seed(0)
    index = replay.sample_windows(64)["index"]  # [B', K], B' <= 64: candidates with an episode end are dropped
    assert 0 < index.shape[0] <= 64 and index.shape[1] == 16
    rows = replay.store.storage[index.reshape(-1)]
    trajectory, step = rows["trajectory"].reshape(index.shape), rows["step_count"].reshape(index.shape)
    assert (trajectory == trajectory[:, :1]).all() and (step[:, 1:] - step[:, :-1] == 1).all()
    following = replay.store.storage[(index.reshape(-1) + 1) % capacity]["has_action"].reshape(index.shape)
    assert following.all(), "a window holds an episode's final transition"
    assert (index[:, -1] >= index[:, 0]).all(), "a window wraps around the storage"
