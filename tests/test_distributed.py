"""DDP with torchrun: 2 CPU processes with Gloo on 127.0.0.1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = """
import os, sys
from safetensors.torch import save_file
import vaekit
captured = []
class Recorded(vaekit.VAE):
    def __init__(self, cfg):
        super().__init__(cfg)
        captured.append(self)
vaekit.MODELS["vae"] = Recorded
vaekit.train({out!r}, dataset="digits", epochs={epochs}, width=8, hidden=64, latent_dim=4, progress=False)
trained = [m for m in captured if not next(m.parameters()).is_meta][0]  # not the memory estimate's meta model
save_file(trained.state_dict(), os.path.join({tmp!r}, f"rank{{os.environ['RANK']}}.safetensors"))
"""

OPTIONS = dict(dataset="digits", epochs=1, width=8, hidden=64, latent_dim=4, progress=False)


def torchrun(tmp: Path, out: Path, epochs: int = 1, nproc: int = 2) -> subprocess.CompletedProcess:
    script = tmp / "job.py"
    script.write_text(SCRIPT.format(out=str(out), tmp=str(tmp), epochs=epochs))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", str(script)],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_two_gloo_processes_train_one_model(tmp_path):
    import vaekit

    ddp_out = tmp_path / "ddp"
    done = torchrun(tmp_path, ddp_out)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # identical parameters on both ranks

    single = vaekit.train(tmp_path / "single", **OPTIONS)
    ddp_metrics = [json.loads(x) for x in (ddp_out / "metrics.jsonl").read_text().splitlines()]
    one_metrics = [json.loads(x) for x in (Path(single) / "metrics.jsonl").read_text().splitlines()]
    assert ddp_metrics[0]["step"] == one_metrics[0]["step"]  # global batch = single-process batch
    # Same seed and same global batches, different noise draws: the validation ELBO agrees within noise.
    assert ddp_metrics[0]["val_neg_elbo"] == pytest.approx(one_metrics[0]["val_neg_elbo"], abs=1.0)
    assert ddp_metrics[0]["train_neg_elbo"] == pytest.approx(one_metrics[0]["train_neg_elbo"], abs=1.0)
    # Only rank 0 wrote the run folder; nothing else appeared beside the test's own files.
    assert sorted(p.name for p in ddp_out.iterdir()) == sorted(p.name for p in Path(single).iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "job.py", "rank0.safetensors", "rank1.safetensors", "single"]
    assert json.loads((ddp_out / "config.json").read_text())["train"]["batch_size"] == 64


def test_batch_must_split_evenly_across_processes():
    from vaekit import VaekitError
    from vaekit.distributed import Group, check_batch_size, padded_order

    with pytest.raises(VaekitError, match="divisible by the 3 processes"):
        check_batch_size(64, Group(rank=0, world=3))
    order = torch.arange(7)
    padded = padded_order(order, 3)
    assert len(padded) == 9 and padded.tolist()[-2:] == [0, 1]
    shards = [padded[r::3].tolist() for r in range(3)]
    assert sorted(sum(shards, [])) == sorted(padded.tolist())  # disjoint shards covering the epoch


@pytest.mark.slow
def test_a_dead_rank_stops_the_job_and_the_checkpoint_resumes(tmp_path):
    import time

    out = tmp_path / "run"
    script = tmp_path / "job.py"
    script.write_text(
        "import os, vaekit\n"
        f"open(os.path.join({str(tmp_path)!r}, 'pid' + os.environ['RANK']), 'w').write(str(os.getpid()))\n"
        f"vaekit.train({str(out)!r}, dataset='digits', epochs=6, batch_size=8, width=8, hidden=64, latent_dim=4, progress=False)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    job = subprocess.Popen([*cmd, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and job.poll() is None
        time.sleep(0.1)
    os.kill(int((tmp_path / "pid1").read_text()), 9)
    job.communicate(timeout=120)  # the job ends instead of hanging
    assert job.returncode != 0
    resume = tmp_path / "resume.py"
    resume.write_text(f"import vaekit\nvaekit.train({str(out)!r}, resume=True, progress=False)\n")
    done = subprocess.run([*cmd, str(resume)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-6000:]
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 6]


GLOO_PEER_DIED = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                  "[127.0.0.1]:5530. This is typically caused by a remote worker crashing.")


def test_only_failed_collectives_are_reported_as_a_dead_peer(monkeypatch, tmp_path):
    """Under torchrun, an error of the model (out of memory, a shape bug) keeps its own message."""
    import vaekit
    import vaekit.distributed as distributed
    from vaekit import VaekitError

    loop = sys.modules["vaekit.train"]
    monkeypatch.setattr(distributed, "setup", lambda device, timeout: distributed.Group(rank=0, world=2, device=device))
    monkeypatch.setattr(distributed, "teardown", lambda: None)
    for error, reworded in [
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (64x10 and 12x3)"), False),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),
        (RuntimeError(GLOO_PEER_DIED), True),
        (torch.distributed.DistBackendError("NCCL communicator was aborted on rank 1"), True),
    ]:
        def broken(*args, error=error, **kwargs):
            raise error

        monkeypatch.setattr(loop, "train", broken)
        with pytest.raises((RuntimeError, VaekitError)) as caught:
            vaekit.train(tmp_path / "r", dataset="digits", epochs=1, progress=False)
        if reworded:
            assert isinstance(caught.value, VaekitError) and "another training process stopped" in str(caught.value)
        else:
            assert caught.value is error
