import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A tiny conv VAE trained on digits for 3 epochs, shared by tests that only read it."""
    import vaekit

    out = tmp_path_factory.mktemp("runs") / "digits"
    return vaekit.train(out, dataset="digits", epochs=3, progress=False)


@pytest.fixture(scope="session")
def cvae_run(tmp_path_factory):
    import vaekit

    out = tmp_path_factory.mktemp("runs") / "cvae"
    return vaekit.train(out, dataset="digits", model="cvae", epochs=3, progress=False)
