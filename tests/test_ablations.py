"""The paper's ablation axes as ``mlr`` switches: each variant learns, does what it says, runs a real
fit, and a bad value costs one line before anything exists."""

import mlr_lightning  # noqa: F401

from pathlib import Path

import pytest
import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from mlr_lightning.agents.rainbow_mlr import RainbowMLRAgent
from mlr_lightning.agents.sac_mlr import SACMLRAgent
from mlr_lightning.cli import main
from mlr_lightning.domains import domain_of, load_config
from mlr_lightning.data.augment import center_crop
from mlr_lightning.mlr.masking import feature_mask

ROOT = Path(__file__).resolve().parents[1]
# Small agents of both domains (the Atari one on the paper's 84-px frames, with narrow layers).
DMC = ["env.task=cartpole_swingup", "env.action_repeat=8", "env.image_size=24", "env.crop_size=20",
       "encoder.num_layers=2", "encoder.num_filters=8", "sac.hidden_dim=32", "mlr.patch_size=6", "mlr.seq_len=4",
       "mlr.block_size=2"]
ATARI = ["domain=atari", "env.task=pong", "mlr.seq_len=4", "mlr.block_size=2", "mlr.decoder_dim=16",
         "rainbow.hidden_dim=16", "rainbow.num_atoms=11", "rainbow.conv_channels=[8,16,16]"]
VARIANTS = ["mlr.mask_strategy=spatial", "mlr.mask_strategy=temporal", "mlr.mask_strategy=tube",
            "mlr.mask_space=feature", "mlr.target=pixel", "mlr.action_tokens=false", "mlr.target_encoder=online",
            "mlr.loss=mse"]


def make_agent(domain: str, *overrides: str):
    torch.manual_seed(0)
    if domain == "dmc":
        return SACMLRAgent(load_config(None, DMC + list(overrides)), 2)
    return RainbowMLRAgent(load_config(None, ATARI + list(overrides)), num_actions=6)


def window(agent, batch: int = 4):
    """A fixed window of random frames uint8 [B, K, C, H, W] and actions [B, K, A] for ``agent``."""
    gen = torch.Generator().manual_seed(1)
    cfg = agent.cfg
    channels = 3 * cfg.env.frame_stack if cfg.domain == "dmc" else cfg.env.frame_stack
    size = cfg.env.image_size
    frames = torch.randint(0, 256, (batch, cfg.mlr.seq_len, channels, size, size), dtype=torch.uint8, generator=gen)
    if cfg.domain == "dmc":
        return frames, torch.rand(batch, cfg.mlr.seq_len, 2, generator=gen) * 2 - 1
    return frames, torch.nn.functional.one_hot(torch.randint(0, 6, (batch, cfg.mlr.seq_len), generator=gen), 6)


def mlr_loss(agent, frames, actions):
    """One MLR loss, its draws (mask, augmentation) the same at every call: a fixed problem."""
    torch.manual_seed(5)
    if isinstance(agent, SACMLRAgent):
        return agent.compute_mlr_loss(frames, actions)
    with set_exploration_type(ExplorationType.RANDOM):
        return agent.compute_mlr_loss(frames, actions, torch.ones(frames.shape[0]))[0]


@pytest.mark.parametrize("domain", ["dmc", "atari"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_lowers_its_loss_on_a_fixed_batch_over_50_updates(domain, variant, one_thread):
    agent = make_agent(domain, variant)
    frames, actions = window(agent)
    params = agent.mlr_parameters() if domain == "dmc" else [p for p in agent.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    losses = []
    for _ in range(50):
        loss = mlr_loss(agent, frames, actions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.9 * losses[0], f"{variant} ({domain}): loss {losses[0]:.4f} -> {losses[-1]:.4f}"


def conv_maps(agent, run) -> tuple[list, list]:
    """Runs ``run()`` and returns what the MLR encoder's first conv received and the conv map its
    last conv passed on [N, C, m, m] (DMC: the input of the fc layer; Atari, without the min-max
    renormalisation: the encoder's output)."""
    encoder, inputs, maps = agent.objective.parts.encoder, [], []
    hooks = [encoder.convs[0].register_forward_pre_hook(lambda m, args: inputs.append(args[0]))]
    if isinstance(agent, SACMLRAgent):
        hooks.append(encoder.fc.register_forward_pre_hook(lambda m, args: maps.append(args[0])))
    else:
        hooks.append(encoder.register_forward_hook(lambda m, args, out: maps.append(out)))
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return inputs, maps


@pytest.mark.parametrize("domain", ["dmc", "atari"])
def test_feature_space_masking_leaves_the_pixels_and_zeroes_the_masked_cells(domain):
    agent = make_agent(domain, "mlr.mask_space=feature", "rainbow.renormalize=false" if domain == "atari" else "seed=1")
    frames, actions = window(agent)
    objective = agent.objective
    mask = objective.mask(frames)
    online, features_masked = objective.masked_input(frames, mask)
    assert torch.equal(online, frames), "feature-space masking changed the pixels"
    x = (center_crop(online, agent.cfg.env.crop_size) if domain == "dmc" else online).float()  # no random draws
    with torch.no_grad():
        inputs, masked_maps = conv_maps(agent, lambda: objective.predict(x, actions, features_masked))
        _, raw_maps = conv_maps(agent, lambda: objective.predict(x, actions, None))
    assert torch.equal(inputs[0], x.flatten(0, 1) / 255.0), "the encoder saw masked pixels"
    channels = agent.cfg.encoder.num_filters if domain == "dmc" else agent.cfg.rainbow.conv_channels[-1]
    side = int(round((raw_maps[0][0].numel() / channels) ** 0.5))
    raw, masked = (m.reshape(-1, channels, side, side) for m in (raw_maps[0], masked_maps[0]))
    cells = feature_mask(mask, frames.shape[0], side)  # [B*K, 1, m, m]
    assert cells.any() and (~cells).any() and (raw[~cells.expand_as(raw)] != 0).any()
    assert torch.equal(masked, raw.masked_fill(cells, 0)), "masked cells not zeroed, or other cells changed"


def test_feature_space_masking_changes_the_prediction_and_only_through_the_masked_cells():
    agent = make_agent("dmc", "mlr.mask_space=feature")
    frames, actions = window(agent)
    objective = agent.objective
    mask = objective.mask(frames)
    x = center_crop(frames, agent.cfg.env.crop_size).float()
    with torch.no_grad():
        masked = objective.predict(x, actions, mask)
        unmasked = objective.predict(x, actions, None)
        everything = objective.predict(x, actions, torch.ones_like(mask))
    assert not torch.allclose(masked, unmasked)
    # With every cell masked the conv map is all zeros: the prediction no longer depends on the pixels.
    with torch.no_grad():
        other = objective.predict(torch.rand_like(x) * 255, actions, torch.ones_like(mask))
    torch.testing.assert_close(everything, other)


@pytest.mark.parametrize("domain", ["dmc", "atari"])
def test_without_action_tokens_the_decoder_ignores_the_actions(domain):
    agent = make_agent(domain, "mlr.action_tokens=false")
    assert not hasattr(agent.decoder, "action_embedding")
    frames, actions = window(agent)
    x = (center_crop(frames, agent.cfg.env.crop_size) if domain == "dmc" else frames).float()
    with torch.no_grad():
        a = agent.objective.predict(x, actions)
        b = agent.objective.predict(x, torch.zeros_like(actions))
    assert torch.equal(a, b)


@pytest.mark.parametrize("domain", ["dmc", "atari"])
def test_an_online_target_is_the_online_projection_without_gradient(domain):
    agent = make_agent(domain, "mlr.target_encoder=online")
    frames, _ = window(agent)
    parts = agent.objective.parts
    with torch.no_grad():  # make the momentum copies differ from the online networks
        for p in parts.target_encoder.parameters():
            p.add_(1.0)
    x = (center_crop(frames, agent.cfg.env.crop_size) if domain == "dmc" else frames).float()
    target = agent.objective.target(x)
    expected = parts.project(parts.encoder(x.flatten(0, 1)).flatten(1)).view(target.shape)
    assert torch.equal(target, expected.detach()) and not target.requires_grad
    before = [p.clone() for p in parts.target_encoder.parameters()]
    agent.objective.update_targets(0.5)  # nothing to move
    assert all(torch.equal(a, b) for a, b in zip(before, parts.target_encoder.parameters()))


@pytest.mark.parametrize("domain", ["dmc", "atari"])
def test_pixel_target_scores_the_masked_pixels_only(domain):
    """White frames, no intensity noise, and a prediction that copies the online (masked) view: every
    masked pixel is off by exactly 1 in [0, 1] units and every visible one by 0, so each position
    scores exactly 1 only if the loss averages over the masked pixels alone, with the loss's mask
    cropped/shifted exactly as the online view (a misaligned mask would count visible pixels)."""
    intensity = "mlr.intensity_scale=0" if domain == "dmc" else "rainbow.intensity_scale=0"
    agent = make_agent(domain, "mlr.target=pixel", intensity)
    frames, actions = window(agent)
    frames = torch.full_like(frames, 255)
    objective = agent.objective
    objective.predict = lambda online_in, actions, features_masked=None: online_in.float() / 255.0
    loss = objective.loss(frames, actions)  # [B, K]
    assert loss.shape == frames.shape[:2]
    torch.testing.assert_close(loss, torch.ones_like(loss))


@pytest.mark.parametrize("override, message", [
    ("mlr.mask_strategy=diagonal", "mlr.mask_strategy must be one of cube, spatial, temporal, tube; got 'diagonal'"),
    ("mlr.mask_space=latent", "mlr.mask_space must be one of pixel, feature"),
    ("mlr.target=depth", "mlr.target must be one of latent, pixel"),
    ("mlr.target_encoder=ema", "mlr.target_encoder must be one of momentum, online"),
    ("mlr.loss=l1", "mlr.loss must be one of cosine, mse"),
    ("mlr.action_tokens=sometimes", "mlr.action_tokens"),
    ("mlr.target=pixel mlr.loss=mse", "mlr.loss (mse) applies to the latent target"),
    ("mlr.target=pixel mlr.target_encoder=online", "mlr.target_encoder (online) chooses the latent target's encoder"),
    ("mlr.mask_strategy=temporal mlr.mask_ratio=0.1", "mlr.mask_ratio (0.1) x mlr.seq_len (8) masks no frame"),
    ("mlr.mask_space=feature trainer.compile=default", "mlr.mask_space (feature) masks the conv map through a forward hook"),
])
def test_a_bad_switch_is_one_line_exit_2_and_creates_nothing(override, message, tmp_path, capsys):
    code = main(["fit", "--config", str(ROOT / "conf/quickstart.yaml"), f"output_dir={tmp_path / 'runs'}", *override.split()])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert not any(tmp_path.iterdir()), "a bad switch created files"


# Every switch's non-default value in a real fit of each domain, several per fit to keep them few.
FIT_VARIANTS = [
    ["mlr.mask_strategy=temporal", "mlr.mask_space=feature", "mlr.action_tokens=false", "mlr.loss=mse",
     "mlr.target_encoder=online"],
    ["mlr.mask_strategy=tube", "mlr.target=pixel"],
    ["mlr.mask_strategy=spatial"],
]


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["dmc", "atari"])
@pytest.mark.parametrize("variant", FIT_VARIANTS, ids=lambda v: ",".join(o.split("=")[1] for o in v))
def test_every_variant_runs_a_real_fit(domain, variant, tiny_base_overrides, tiny_atari_base_overrides, tmp_path,
                                       one_thread):
    if domain == "dmc":
        config, tiny = "conf/quickstart.yaml", tiny_base_overrides
    else:
        config, tiny = "conf/atari/quickstart.yaml", tiny_atari_base_overrides
    code = main(["fit", "--config", config, *tiny, *variant, f"output_dir={tmp_path}", "run_name=variant",
                 "tracking.mlflow=false", "tracking.video=false", "eval.every_env_steps=0"])
    assert code == 0
    metrics = (tmp_path / "variant" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    column = header.index("train/mlr_loss")
    losses = [float(row.split(",")[column]) for row in metrics[1:] if row.split(",")[column]]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


ABLATION_SWEEPS = {  # file -> (axis keys, variants)
    "mask_ratio": (["mlr.mask_ratio"], 3), "seq_len": (["mlr.seq_len"], 3),
    "cube_size": (["mlr.patch_size", "mlr.block_size"], 6), "mask_strategy": (["mlr.mask_strategy"], 4),
    "mask_space": (["mlr.mask_space"], 2), "target": (["mlr.target"], 2), "action_tokens": (["mlr.action_tokens"], 2),
    "decoder_depth": (["mlr.num_attn_layers"], 3),
}
DMC_TASKS = {"finger_spin", "cartpole_swingup", "reacher_easy", "cheetah_run", "walker_walk", "ball_in_cup_catch"}


@pytest.mark.parametrize("name", ABLATION_SWEEPS)
def test_each_ablation_sweep_covers_the_six_tasks_at_100k_and_states_its_gpu_hours(name, tmp_path, monkeypatch):
    from mlr_lightning.sweep.runner import format_plan
    from mlr_lightning.sweep.spec import expand, load_sweep

    monkeypatch.chdir(ROOT)
    path = f"conf/sweeps/ablations/{name}.yaml"
    keys, variants = ABLATION_SWEEPS[name]
    plan = expand(*load_sweep(path, [f"output_dir={tmp_path}"]))
    assert {Path(t.config).stem for t in plan.trials} == DMC_TASKS
    assert {t.final_env_steps for t in plan.trials} == {100_000}
    assert list(plan.sweep.axes) == keys and len(plan.trials) == 6 * len(plan.sweep.seeds) * variants
    out = format_plan(plan)  # what --dry-run prints
    hours = plan.sweep.gpu_hours_per_trial
    assert f"GPU-hours: {len(plan.trials)} trials x {hours:g} per trial" in out
    assert f"= {len(plan.trials) * hours:,.0f}" in out
    assert not any(tmp_path.iterdir()), "a dry run created files"


def test_the_quickstart_ablation_sweep_is_nine_tiny_cpu_runs(tmp_path, monkeypatch):
    from mlr_lightning.sweep.spec import expand, load_sweep

    monkeypatch.chdir(ROOT)
    plan = expand(*load_sweep("conf/sweeps/ablations/quickstart.yaml", [f"output_dir={tmp_path}"]))
    assert len(plan.trials) == 9 and plan.sweep.gpus == 0
    ratios = sorted({o for t in plan.trials for o in t.variant if o.startswith("mlr.mask_ratio=")})
    assert ratios == ["mlr.mask_ratio=0.25", "mlr.mask_ratio=0.5", "mlr.mask_ratio=0.75"]
    assert all("trainer.accelerator=cpu" in t.overrides and "train.num_env_steps=640" in t.overrides for t in plan.trials)


def test_a_run_saved_before_the_switches_existed_resumes_without_a_difference(tiny_overrides):
    from omegaconf import OmegaConf

    from mlr_lightning.config import config_differences

    current = load_config("conf/quickstart.yaml", tiny_overrides)
    saved = OmegaConf.create(OmegaConf.to_container(current))
    for key in ("mask_strategy", "mask_space", "target", "action_tokens", "target_encoder", "loss"):
        del saved.mlr[key]  # as config.yaml was written before these keys existed
    assert config_differences(saved, current, domain_of(current).schema) == []
    changed = load_config("conf/quickstart.yaml", [*tiny_overrides, "mlr.mask_strategy=tube"])
    assert config_differences(saved, changed, domain_of(changed).schema) == ["mlr.mask_strategy: 'cube' -> 'tube'"]
