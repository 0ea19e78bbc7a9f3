"""DeepMind Control from pixels: SAC + MLR (the official ``DMControl/`` code) on a uniform frame replay."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from mlr_lightning.agents.pretrained import check_encoder_source, load_encoder
from mlr_lightning.agents.sac_mlr import SACMLRAgent, make_pixel_encoder
from mlr_lightning.config import ExperimentConfig, validate_dmc
from mlr_lightning.data.replay import UniformReplay
from mlr_lightning.envs.dmc import UnknownTaskError, make_dmc_env, split_task


class DMCDomain:
    name = "dmc"
    schema = ExperimentConfig
    agent_name = "sac"
    agent_class = SACMLRAgent

    def validate(self, cfg: DictConfig) -> None:
        validate_dmc(cfg)
        if cfg.encoder.init_from:  # the source's domain and shapes, before anything is built
            check_encoder_source(cfg, make_pixel_encoder(cfg))

    def check_task(self, cfg: DictConfig) -> None:
        domain, task = split_task(cfg.env.task)
        from dm_control import suite  # imported by split_task, after the GL backend was chosen

        cameras = suite.load(domain, task).physics.model.ncam  # ~0.15 s: the model, no renderer
        if not -1 <= cfg.env.camera_id < cameras:
            use = f"0..{cameras - 1}, or -1 for the free camera" if cameras else "-1, the free camera"
            raise UnknownTaskError(f"env.camera_id={cfg.env.camera_id} is not a camera of {cfg.env.task}, which has "
                                   f"{cameras}: use {use}")

    def make_env(self, cfg: DictConfig, seed: int, train: bool = True):
        e = cfg.env  # training and evaluation environments are the same on DMC
        return make_dmc_env(e.task, e.action_repeat, e.image_size, e.camera_id, e.frame_stack, e.fast_render, seed)

    def make_agent(self, cfg: DictConfig, env) -> SACMLRAgent:
        agent = SACMLRAgent(OmegaConf.to_container(cfg, resolve=True), action_dim=env.action_spec.shape[-1])
        if cfg.encoder.init_from:  # a resume then restores its own snapshot over it
            load_encoder(agent, cfg.encoder.init_from)
        return agent

    def make_replay(self, cfg: DictConfig) -> UniformReplay:
        return UniformReplay(cfg.replay.capacity, cfg.env.frame_stack, cfg.mlr.seq_len, cfg.train.batch_size,
                             window_batch_size=cfg.mlr.batch_size if cfg.mlr.enabled else None,
                             official_windows=cfg.mlr.official_windows)

    def env_steps_per_agent_step(self, cfg: DictConfig) -> int:
        return cfg.env.action_repeat

    def eval_metrics(self, cfg: DictConfig):
        return None

    def callbacks(self, cfg: DictConfig, replay) -> list:
        return []


DMC = DMCDomain()
