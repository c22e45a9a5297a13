"""The ``minitx`` command: help, argument errors, missing files, the training and generating sub-commands end
to end (tiny sizes), and the arguments of ``compare-kernels`` and ``embed`` reaching their own parsers."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    (["train-gpt", "--lr", "-1"], "--lr: must be a finite positive number, got -1"),
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


# ------------------------------------------------------------------------ a user's mistakes, one by one
SMALL = ["--no-progress", "--d-model", "16", "--layers", "1", "--heads", "2", "--vocab-size", "280", "--steps", "4",
         "--context", "16", "--batch-size", "4"]


def call(argv):
    """(exit status, stderr lines) of ``minitx ARGV`` run in this process."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Text files, a saved GPT, damaged copies of it, and an ordinary file where a folder is expected."""
    import json
    import shutil

    root = tmp_path_factory.mktemp("mistakes")
    (root / "text.txt").write_text("the cat sat on the mat. the dog sat on the log. " * 40, encoding="utf-8")
    (root / "short.txt").write_text("the cat sat on the mat.", encoding="utf-8")
    (root / "empty.txt").write_text(" \n", encoding="utf-8")
    (root / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (root / "binary.dat").write_bytes(bytes(range(256)) * 4)
    assert main(["train-gpt", "--text", str(root / "text.txt"), "--out", str(root / "gpt"), *SMALL]) == 0
    for name, damage in [("bad_config", lambda f: (f / "config.json").write_text("{not json")),
                         ("list_config", lambda f: (f / "config.json").write_text("[1, 2]")),
                         ("bad_weights", lambda f: (f / "model.safetensors").write_bytes(b"garbage")),
                         ("bad_tokenizer", lambda f: (f / "tokenizer.json").write_text('{"type": "Nope"}')),
                         ("mismatch", lambda f: (f / "config.json").write_text(json.dumps(
                             {**json.loads((f / "config.json").read_text()), "d_model": 32}))),
                         ("not_gpt", lambda f: (f / "config.json").write_text(json.dumps(
                             {**json.loads((f / "config.json").read_text()), "model": "BertForPretraining"})))]:
        shutil.copytree(root / "gpt", root / name)
        damage(root / name)
    return root


MISTAKES = [  # (argv with {root} for the files above, exit status, what the one line must name)
    ("train-gpt --text {root}/binary.dat", 2, "--text"),
    ("train-gpt --text {root}/latin1.txt", 2, "not UTF-8"),
    ("train-gpt --text {root}/empty.txt", 2, "--text"),
    ("train-gpt --text {root}/short.txt", 2, "--text"),
    ("train-gpt --text {root}/nowhere.txt", 2, "--text"),
    ("train-gpt --text {root}/text.txt --batch-size 4000", 2, "--batch-size"),
    ("train-gpt --text {root}/text.txt --context 5000", 2, "--context"),
    ("train-gpt --text {root}/text.txt --lr inf", 2, "--lr"),
    ("train-gpt --text {root}/text.txt --lr nan", 2, "--lr"),
    ("train-gpt --text {root}/text.txt --heads 3 --d-model 16", 2, "--heads"),
    ("train-gpt --text {root}/text.txt --vocab-size 10", 2, "--vocab-size"),
    ("train-gpt --text {root}/text.txt --device cuda", 2, "--device"),
    ("train-gpt --text {root}/text.txt --steps 99999999999", 2, "--steps"),
    ("train-gpt --text {root}/text.txt --out {root}/text.txt", 2, "--out"),
    ("train-gpt --text {root}/text.txt --out {root}/text.txt/sub", 2, "--out"),
    ("train-gpt --text {root}/text.txt --resume", 2, "--resume"),
    ("train-gpt --text {root}/text.txt --lr 1e6", 1, "diverged"),
    ("pretrain --documents 1000000000", 2, "--documents"),
    ("pretrain --documents 2 --sentences 0", 2, "--documents"),
    ("pretrain --out {root}/text.txt", 2, "--out"),
    ("demo --out {root}/text.txt", 2, "--out"),
    ("generate --model {root}/gpt --prompt=", 2, "--prompt"),
    ("generate --model {root}/gpt --max-new-tokens 1000000000", 2, "--max-new-tokens"),
    ("generate --model {root}/gpt --seed -1", 2, "--seed"),
    ("generate --model {root}/bad_config", 1, "config.json"),
    ("generate --model {root}/list_config", 1, "config.json"),
    ("generate --model {root}/bad_weights", 1, "model.safetensors"),
    ("generate --model {root}/bad_tokenizer", 1, "tokenizer.json"),
    ("generate --model {root}/mismatch", 1, "do not fit"),
    ("generate --model {root}/not_gpt", 1, "not a GPT"),
    ("finetune --encoder {root}/gpt", 1, "not a BertForPretraining"),
    ("embed --batch-size 0 hello", 2, "--batch-size"),
    ("embed --out {root} hello", 2, "--out"),
    ("compare-kernels --out {root}/text.txt", 2, "--out"),
]


@pytest.mark.parametrize("argv, status, names", MISTAKES, ids=[m[0].split(" {")[0] + f"-{i}" for i, m in
                                                               enumerate(MISTAKES)])
def test_each_mistake_gets_one_line_and_exit_1_or_2(argv, status, names, files, capsys, monkeypatch):
    import kernels.compare

    monkeypatch.setattr(kernels.compare, "run", lambda **kw: pytest.fail("compare-kernels ran before --out"))
    argv = argv.format(root=files).split()
    if argv[0] in ("train-gpt", "pretrain") and "--out" not in argv:
        argv += ["--out", str(files / "out")]
    if argv[0] == "train-gpt":
        argv = argv[:1] + SMALL + argv[1:]  # the later of two equal options wins
    assert call(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    if argv[0] not in ("embed", "compare-kernels"):  # those two print their own parser's usage first
        assert len(lines) == 1, err
    assert lines[-1].startswith(("minitx ", "usage")) and names in lines[-1], err


def test_a_diverged_run_says_so_in_one_line_without_numpy_warnings(files, capsys):
    """On the way to a NaN loss, NumPy warns of overflows in the forward pass and in the gradient norm; the
    trainer's finiteness checks already say what happened, so outside --debug those warnings are not shown
    (pytest records warnings instead of printing them, hence the explicit record here)."""
    import warnings

    argv = ["train-gpt", *SMALL, "--text", str(files / "text.txt"), "--lr", "1e6", "--out", str(files / "nan")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert call(argv) == 1
    assert [str(w.message) for w in caught] == []
    assert capsys.readouterr().err.startswith("minitx train-gpt: error: training diverged")


def test_debug_flag_and_environment_show_the_traceback(files, monkeypatch):
    from minitx.cli import CLIError

    argv = ["generate", "--model", str(files / "gpt"), "--prompt="]
    with pytest.raises(CLIError, match="--prompt"):
        main(["--debug", *argv])
    monkeypatch.setenv("MINITX_DEBUG", "1")
    with pytest.raises(CLIError, match="--prompt"):
        main(argv)


def test_interrupted_training_resumes_bit_identical(files, capsys, monkeypatch):
    """Ctrl-C after step 4 (checkpoints every 3) names the step-3 checkpoint; --resume then ends with the very
    weights of an uninterrupted run (dropout on, so the random state must be restored too)."""
    from minitx import io
    from minitx.train import Trainer

    argv = ["train-gpt", "--text", str(files / "text.txt"), *SMALL, "--steps", "6", "--dropout", "0.2"]
    assert main([*argv, "--out", str(files / "straight")]) == 0
    real_step = Trainer.train_step

    def interrupted(self):
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    out = str(files / "resumed")
    assert main([*argv, "--out", out, "--checkpoint-every", "3"]) == 130
    assert "holds the checkpoint of step 3" in capsys.readouterr().out
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert main([*argv, "--out", out, "--checkpoint-every", "3", "--resume"]) == 0
    straight = io.load_state_dict_file(str(files / "straight" / "model.safetensors"))
    resumed = io.load_state_dict_file(os.path.join(out, "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        np.testing.assert_array_equal(straight[name], resumed[name], err_msg=name)


def test_an_interrupt_before_any_checkpoint_says_so(files, capsys, monkeypatch):
    from minitx.train import Trainer

    monkeypatch.setattr(Trainer, "train_step", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    argv = ["train-gpt", "--text", str(files / "text.txt"), *SMALL, "--out", str(files / "never"),
            "--checkpoint-every", "0"]
    assert main(argv) == 130
    assert "no checkpoint was written" in capsys.readouterr().out
