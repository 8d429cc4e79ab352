"""Models: each file reads top to bottom as its math (encode, sample, decode, objective) and keeps
the contract in base.py. MODELS is the one mapping from names to models."""

from __future__ import annotations

import dataclasses

from ..config import ModelConfig, from_dict
from ..errors import VaekitError
from ..limits import check_model_size
from .base import EvalContext, Model
from .categorical import CategoricalVAE
from .hvae import HVAE
from .m2 import M2
from .vae import CVAE, VAE

MODELS: dict[str, type] = {"vae": VAE, "cvae": CVAE, "m2": M2, "categorical": CategoricalVAE, "hvae": HVAE}


def conditional_models() -> list[str]:
    """The models that draw a class per image (trained on labels: all or some)."""
    return [name for name, cls in MODELS.items() if cls.labels != "none"]


def classifying_models() -> list[str]:
    """The models with their own classifier q(y|x) (`classifies`)."""
    return [name for name, cls in MODELS.items() if cls.classifies]


def model_class(name: object) -> type:
    if not isinstance(name, str) or name not in MODELS:
        raise VaekitError(f"model = {name!r} is not a valid value (expected one of {', '.join(MODELS)})")
    return MODELS[name]  # type: ignore[index]


def build(cfg: ModelConfig) -> Model:
    """The model that cfg describes (cfg.model names it), freshly initialised."""
    cls = model_class(cfg.model)
    if not isinstance(cfg, cls.Config):
        raise VaekitError(f"a {type(cfg).__name__} does not configure --model {cfg.model}")
    check_model_size(cls, cfg)
    return cls(cfg)


def config_from_dict(d: dict) -> ModelConfig:
    """The model config of a config.json; runs of vaekit 0.1 also stored `class_prior` for a plain VAE."""
    cls = model_class(d.get("model", "vae") if isinstance(d, dict) else None).Config
    legacy = frozenset({"class_prior"}) - {f.name for f in dataclasses.fields(cls)}
    return from_dict(cls, d, ignore=legacy)


__all__ = ["MODELS", "conditional_models", "classifying_models", "VAE", "CVAE", "M2", "CategoricalVAE", "HVAE", "EvalContext", "Model", "build", "config_from_dict", "model_class"]
