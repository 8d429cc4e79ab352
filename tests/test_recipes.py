"""Recipes as TOML files (`vaekit train --config`): options merged file < stage < command line, chains whose
stages start from the stage before, a finished stage skipped, an unfinished one resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vaekit.api import make_configs
from vaekit.cli import main
from vaekit.errors import VaekitError
from vaekit.recipes import read_recipe

RECIPES = Path(__file__).parent.parent / "recipes"
TINY = 'dataset = "digits"\nwidth = 8\nhidden = 32\nlatent-dim = 4\nepochs = 1\n'


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_shipped_recipe_builds_valid_configs():
    files = sorted(RECIPES.glob("*.toml"))
    assert {f.name for f in files} >= {"digits.toml", "fashion-mnist.toml", "vamp-paper.toml", "fashion-best.toml"}
    for path in files:
        for stage in read_recipe(path):
            make_configs(**stage.options)  # every key is an option with a valid value
    chain = read_recipe(RECIPES / "fashion-best.toml")
    assert [s.name for s in chain][:2] == ["vamp", "iwae10"] and len(chain) == 7
    assert all(b.options["init_from"] == str(a.out) for a, b in zip(chain, chain[1:]))
    assert chain[0].options["patience"] == 50 and "patience" not in chain[1].options
    assert all(s.options["prior_components"] == 500 for s in chain)


def test_the_default_recipes_are_the_dataset_defaults():
    """recipes/fashion-mnist.toml spells out what `--dataset fashion-mnist` picks, and digits.toml the demo."""
    for name, dataset in (("fashion-mnist.toml", "fashion-mnist"), ("digits.toml", "digits")):
        (stage,) = read_recipe(RECIPES / name)
        assert make_configs(**stage.options) == make_configs(dataset=dataset)


def test_merging_and_errors(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(TINY + 'out = "runs/x"\n[[stage]]\nname = "a"\nlr = 0.01\n[[stage]]\nname = "b"\n'
                    'init_from = "elsewhere"\n')
    a, b = read_recipe(path, {"lr": 0.5}, out=tmp_path / "o")
    assert a.out == tmp_path / "o" / "a" and a.options["lr"] == 0.5 and a.options["latent_dim"] == 4
    assert b.options["init_from"] == "elsewhere"  # a stage's own init_from wins
    path.write_text("epochs = [1, \n")
    with pytest.raises(VaekitError, match="is not a valid TOML recipe"):
        read_recipe(path)
    path.write_text(TINY)
    with pytest.raises(VaekitError, match="names no run folder"):
        read_recipe(path)
    path.write_text(TINY + '[[stage]]\nlr = 0.1\n')
    with pytest.raises(VaekitError, match="stage 1 needs a name"):
        read_recipe(path, out="o")
    path.write_text(TINY + 'latent_dim = 3\n')
    with pytest.raises(VaekitError, match="latent_dim is given twice"):
        read_recipe(path, out="o")


def test_cli_errors_are_one_line(tmp_path, capsys):
    path = tmp_path / "r.toml"
    path.write_text(TINY + "no_such_option = 3\n")
    code, _, err = run_cli(capsys, "train", "--config", path, "--out", tmp_path / "run")
    assert code == 2 and "no_such_option" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "train", "--config", tmp_path / "missing.toml", "--out", tmp_path / "run")
    assert code == 2 and "cannot read the recipe" in err
    code, _, err = run_cli(capsys, "train", "--config", path, "--resume", tmp_path / "run")
    assert code == 2 and "drop --resume" in err


def test_a_chain_trains_skips_and_resumes(tmp_path, capsys):
    path = tmp_path / "chain.toml"
    path.write_text(TINY + f'out = "{tmp_path / "chain"}"\n[[stage]]\nname = "first"\n'
                    '[[stage]]\nname = "second"\nlr = 0.0005\n')
    code, _, err = run_cli(capsys, "train", "--config", path, "--batch-size", "64", "--no-pictures")
    assert code == 0 and "stage first: training" in err and "stage second: training" in err
    second = tmp_path / "chain" / "second"
    config = json.loads((second / "config.json").read_text())
    assert config["train"]["init_from"] == str(tmp_path / "chain" / "first")  # the stage before's best weights
    assert config["train"]["batch_size"] == 64 and config["model"]["latent_dim"] == 4  # the merged config
    weights = (second / "model.safetensors").stat().st_mtime_ns

    code, _, err = run_cli(capsys, "train", "--config", path, "--batch-size", "64", "--no-pictures")
    assert code == 0 and err.count("has finished training; skipped") == 2
    assert (second / "model.safetensors").stat().st_mtime_ns == weights

    code, _, err = run_cli(capsys, "train", "--config", path, "--batch-size", "64", "--epochs", "2", "--no-pictures")
    assert code == 0 and "stage first: resuming" in err and "stage second: resuming" in err
    assert [json.loads(line)["epoch"] for line in (second / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    code, _, err = run_cli(capsys, "train", "--config", path, "--batch-size", "32", "--no-pictures")
    assert code == 2 and "other settings (batch_size)" in err and "--overwrite" in err
