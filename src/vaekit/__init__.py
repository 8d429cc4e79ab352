"""vaekit: train, evaluate and sample variational autoencoders on image data."""

import os as _os
import signal as _signal
import sys as _sys
import threading as _threading

from .version import __version__  # noqa: E402  (first: a leaf module)

# Run as the `vaekit` command (or `python -m vaekit`): until cli.run() takes over, a Ctrl-C only sets
# a flag. A KeyboardInterrupt raised inside torch's import (C++ and NumPy's initialisation) can abort
# the process, or be swallowed and leave NumPy half-imported, to fail later with a traceback.
_STARTING: list[int] = []
if (_sys.argv and (_sys.argv[0] == "-m" or _os.path.basename(_sys.argv[0]) == "vaekit")
        and _threading.current_thread() is _threading.main_thread()):
    _signal.signal(_signal.SIGINT, lambda signum, frame: _STARTING.append(signum))

from .api import decode, encode, evaluate, load, load_data, make_configs, reconstruct, sample, train  # noqa: E402
from .config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from .errors import VaekitError  # noqa: E402
from .models import CVAE, M2, MODELS, VAE  # noqa: E402

__all__ = ["__version__", "train", "evaluate", "load", "load_data", "sample", "encode", "decode", "reconstruct", "make_configs", "VAE", "CVAE", "M2", "MODELS", "DataConfig", "ModelConfig",
           "TrainConfig", "VaekitError"]
