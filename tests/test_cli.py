"""The `megakernel` command on the CPU: conversion end to end, and clear refusals."""
import os
import subprocess
import sys

from megakernel.cli import main
from megakernel.fixtures import tiny_config, write_random_checkpoint
from megakernel.weight_loader import FlatFile


def test_convert_command_writes_a_valid_flat_file(tmp_path, capsys):
    ck = write_random_checkpoint(str(tmp_path / "ck"), tiny_config(), seed=4)
    out = str(tmp_path / "w.bin")
    assert main(["convert", ck, out, "--quiet"]) == 0
    with FlatFile(out) as f:
        assert f.config.hidden_size == tiny_config()["hidden_size"]


def test_convert_bad_path_is_one_line_and_nonzero(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "w.bin")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not os.path.exists(tmp_path / "w.bin")


def test_generate_without_model_is_refused(capsys):
    assert main(["generate", "--prompt-ids", "1", "2"]) == 1
    assert "--random-weights" in capsys.readouterr().err


def test_console_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "megakernel.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "convert" in r.stdout


import pytest  # noqa: E402

from conftest import gpu_available  # noqa: E402


@pytest.mark.parametrize("flags,fragment", [
    (["--temperature", "-0.5"], "--temperature"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--top-k", "-1"], "--top-k"),
])
def test_bad_sampling_flags_refused_in_one_line(capsys, flags, fragment):
    assert main(["generate", "--random-weights", "--prompt", "hi", *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and fragment in err and "\n" not in err


@pytest.mark.skipif(gpu_available(), reason="checks the refusal on a machine without a GPU")
def test_no_gpu_is_refused_in_one_line(capsys):
    assert main(["generate", "--random-weights", "--prompt", "hi", "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "GPU" in err[-1]


def test_unknown_model_is_refused(capsys, tmp_path):
    code = main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "hi"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and err.startswith("error:")
