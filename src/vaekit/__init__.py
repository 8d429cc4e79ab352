"""vaekit: train, evaluate and sample variational autoencoders on image data."""

__version__ = "0.1.0"

from .api import evaluate, load, make_configs, train  # noqa: E402
from .config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from .errors import VaekitError  # noqa: E402
from .models import VAE  # noqa: E402

__all__ = ["train", "evaluate", "load", "make_configs", "VAE", "DataConfig", "ModelConfig", "TrainConfig", "VaekitError"]
