"""vaekit: train, evaluate and sample variational autoencoders on image data."""

__version__ = "0.2.0"

try:
    from .api import evaluate, load, make_configs, train  # noqa: E402
    from .config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
    from .errors import VaekitError  # noqa: E402
    from .models import CVAE, M2, MODELS, VAE  # noqa: E402
except KeyboardInterrupt:  # Ctrl-C while `vaekit` (the command) imports torch: one line, not a traceback
    import os as _os
    import sys as _sys

    if _sys.argv and (_sys.argv[0] == "-m" or _os.path.basename(_sys.argv[0]) == "vaekit"):
        print("vaekit: interrupted by SIGINT while starting; nothing was written", file=_sys.stderr)
        raise SystemExit(130) from None
    raise

__all__ = ["train", "evaluate", "load", "make_configs", "VAE", "CVAE", "M2", "MODELS", "DataConfig", "ModelConfig",
           "TrainConfig", "VaekitError"]
