"""The ``minitx`` command: help, argument errors, missing files, the training and generating sub-commands end
to end (tiny sizes), and the arguments of ``compare-kernels`` and ``embed`` reaching their own parsers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from minitx.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=None, timeout=300):
    """``python -m minitx ARGS`` in a subprocess (what a user types), with the repository importable."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "minitx", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def test_help_lists_every_subcommand():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("demo", "pretrain", "finetune", "train-gpt", "generate", "compare-kernels", "embed"):
        assert command in proc.stdout


@pytest.mark.parametrize("command", ["demo", "pretrain", "finetune", "train-gpt", "generate"])
def test_subcommand_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--device" in out and "--seed" in out


# compare-kernels and embed are programs with their own parser: every argument after the name goes to them.
@pytest.mark.parametrize("command, usage, options", [
    ("compare-kernels", "usage: minitx compare-kernels", ["--quick", "--repeats", "--out"]),
    ("embed", "usage: minitx embed", ["--file", "--model", "--batch-size", "--max-length", "--out"]),
])
def test_forwarded_subcommand_help_and_bad_option(command, usage, options, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(usage)
    for option in options:
        assert option in out
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--no-such-option"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and "unrecognized arguments: --no-such-option" in err


def test_compare_kernels_help_from_the_shell():
    proc = run_cli("compare-kernels", "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--quick" in proc.stdout and "--repeats" in proc.stdout


def test_compare_kernels_receives_its_options(monkeypatch, capsys):
    """`minitx compare-kernels --quick` (the README's command) reaches kernels.compare; the kernels are not run."""
    import kernels.compare

    calls = []
    monkeypatch.setattr(kernels.compare, "run", lambda quick, repeats: calls.append((quick, repeats)) or [])
    monkeypatch.setattr(kernels.compare, "format_table", lambda rows: "table")
    assert main(["compare-kernels", "--quick", "--repeats", "2"]) == 0
    assert calls == [(True, 2)] and capsys.readouterr().out == "table\n"
    with pytest.raises(SystemExit) as exit_info:
        main(["compare-kernels", "--repeats", "0"])
    assert exit_info.value.code == 2 and "--repeats: must be a positive integer, got 0" in capsys.readouterr().err
    assert calls == [(True, 2)]  # refused before any kernel ran


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "--steps", "0"], "--steps: must be a positive integer, got 0"),
    (["train-gpt", "--lr", "-1"], "--lr: must be a positive number, got -1"),
    (["demo", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["generate", "--top-k", "x"], "--top-k"),
    (["pretrain", "--dropout", "1.5"], "--dropout: must be in [0, 1), got 1.5"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_exit_2_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_top_p_and_missing_files(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path), "--top-p", "1.5"]) == 2
    assert "--top-p must be in (0, 1], got 1.5" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nowhere")]) == 2
    assert "missing config.json" in capsys.readouterr().err
    assert main(["finetune", "--encoder", str(tmp_path)]) == 2
    assert "minitx pretrain" in capsys.readouterr().err
    assert main(["train-gpt", "--text", str(tmp_path / "none.txt"), "--out", str(tmp_path / "g")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_pretrain_finetune_train_gpt_generate(tmp_path):
    """Each sub-command on tiny sizes: the folders they write are what the next one reads."""
    small = ["--no-progress", "--d-model", "16", "--layers", "1", "--heads", "2"]
    bert, gpt = tmp_path / "bert", tmp_path / "gpt"
    proc = run_cli("pretrain", "--out", str(bert), "--documents", "60", "--steps", "4", "--batch-size", "8",
                   "--vocab-size", "200", *small)
    assert proc.returncode == 0, proc.stderr
    assert "held-out MLM loss" in proc.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in bert.iterdir()}

    proc = run_cli("finetune", "--encoder", str(bert), "--sentences", "200", "--steps", "4", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout

    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log. " * 40, encoding="utf-8")
    proc = run_cli("train-gpt", "--text", str(text), "--out", str(gpt), "--steps", "4", "--context", "16",
                   "--batch-size", "4", "--vocab-size", "280", *small)
    assert proc.returncode == 0, proc.stderr

    proc = run_cli("generate", "--model", str(gpt), "--prompt", "the cat", "--max-new-tokens", "5", "--greedy")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("the cat")


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    proc = run_cli("demo", "--quick", "--no-progress", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for row in ("held-out MLM loss", "sentence-order accuracy", "TaskAdapter", "GPT classifier", "GPT sample"):
        assert row in proc.stdout
    names = {p.name for p in out.iterdir()}
    for stage in ("bert", "adapter", "gpt", "classifier"):
        assert f"{stage}_loss.png" in names and f"{stage}_history.csv" in names
