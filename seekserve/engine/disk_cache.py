"""The disk tier of the prefix cache: KV blocks as files, written behind, read on a miss.

Every block that enters the in-memory prefix cache is also queued for a background writer
(write-through, so a restart or a kill keeps what was computed), which never blocks the step
loop: when its queue is full the block is simply not written. A request whose prefix misses
in memory looks its next block hashes up here and loads the blocks it finds, instead of
computing them.

One file per block, named by its chained hash (which already covers model, dtype, block size
and cache scope):

    <dir>/<hash hex>.kvb = b"SEEKKV01" | u32 header length | header JSON | payload
    header: {"namespace", "dtype", "shape", "payload_bytes", "sha256"}

A file is written to a temporary name and renamed into place (a crash leaves no half entry
under a real name). A file whose header, size or checksum does not match is deleted and
treated as a miss — never a crash or a wrong token. Total size is capped; the least
recently used files go first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import struct
import threading
from collections import OrderedDict
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

MAGIC = b"SEEKKV01"
SUFFIX = ".kvb"


class DiskKVCache:
    def __init__(
        self,
        directory: str | Path,
        max_bytes: int,
        namespace: str,
        block_shape: tuple[int, ...],
        dtype: torch.dtype,
        max_pending_writes: int = 256,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.namespace = namespace
        self.block_shape = tuple(block_shape)
        self.dtype = dtype
        self._lock = threading.Lock()
        self._index: OrderedDict[bytes, int] = OrderedDict()  # hash → file size, LRU first
        self._num_bytes = 0
        self.num_hits = 0
        self.num_writes = 0
        self.num_dropped_writes = 0
        self.num_rejected = 0
        self._scan()
        self._pending: queue.Queue[tuple[bytes, torch.Tensor] | None] = queue.Queue(
            maxsize=max_pending_writes
        )
        self._writer = threading.Thread(target=self._write_loop, name="seekserve-kv-disk")
        self._writer.daemon = True
        self._writer.start()

    # -- queries (engine thread) ---------------------------------------------------------

    @property
    def num_bytes(self) -> int:
        return self._num_bytes

    @property
    def num_blocks(self) -> int:
        return len(self._index)

    def contains(self, block_hash: bytes) -> bool:
        with self._lock:
            return block_hash in self._index

    def load(self, block_hash: bytes) -> torch.Tensor | None:
        """The block's K/V (`block_shape`, `dtype`), or None if absent or invalid."""
        if not self.contains(block_hash):
            return None
        path = self._path(block_hash)
        try:
            data = self._decode(path.read_bytes())
        except (OSError, ValueError) as exc:
            logger.warning("ignoring KV cache file %s: %s", path.name, exc)
            self.num_rejected += 1
            self._forget(block_hash, delete=True)
            return None
        with self._lock:
            if block_hash in self._index:
                self._index.move_to_end(block_hash)
        self.num_hits += 1
        return data

    # -- commands ------------------------------------------------------------------------

    def submit(self, block_hash: bytes, data: torch.Tensor) -> None:
        """Queue a block for writing (`data` must not change afterwards: pass a copy); the
        writer skips blocks already on disk."""
        try:
            self._pending.put_nowait((block_hash, data))
        except queue.Full:
            self.num_dropped_writes += 1

    def flush(self) -> None:
        """Wait until every queued write is on disk."""
        self._pending.join()

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the queued writes (bounded) and stop the writer."""
        try:
            self._pending.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._writer.join(timeout=timeout_s)

    # -- writer thread -------------------------------------------------------------------

    def _write_loop(self) -> None:
        while (item := self._pending.get()) is not None:
            block_hash, data = item
            try:
                self._write(block_hash, data)
            except OSError as exc:  # a full disk must not stop serving
                logger.warning("could not write a KV cache block: %s", exc)
            finally:
                self._pending.task_done()
        self._pending.task_done()

    def _write(self, block_hash: bytes, data: torch.Tensor) -> None:
        if self.contains(block_hash):
            return
        blob = self._encode(data)
        path = self._path(block_hash)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        with open(tmp, "wb") as file:
            file.write(blob)
        os.replace(tmp, path)
        with self._lock:
            self._index[block_hash] = len(blob)
            self._num_bytes += len(blob)
        self.num_writes += 1
        self._enforce_cap()

    def _enforce_cap(self) -> None:
        while True:
            with self._lock:
                if self._num_bytes <= self.max_bytes or not self._index:
                    return
                oldest = next(iter(self._index))
            self._forget(oldest, delete=True)

    # -- helpers -------------------------------------------------------------------------

    def _path(self, block_hash: bytes) -> Path:
        return self.directory / f"{block_hash.hex()}{SUFFIX}"

    def _forget(self, block_hash: bytes, delete: bool) -> None:
        with self._lock:
            size = self._index.pop(block_hash, None)
            if size is not None:
                self._num_bytes -= size
        if delete:
            self._path(block_hash).unlink(missing_ok=True)

    def _scan(self) -> None:
        """Index the files a previous run left (oldest first); drop unfinished writes."""
        for tmp in self.directory.glob("*.tmp"):
            tmp.unlink(missing_ok=True)
        files = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            try:
                block_hash = bytes.fromhex(path.stem)
                stat = path.stat()
            except (ValueError, OSError):
                continue
            files.append((stat.st_mtime, block_hash, stat.st_size))
        for _, block_hash, size in sorted(files):
            self._index[block_hash] = size
            self._num_bytes += size
        if files:
            logger.info(
                "disk KV cache: %d blocks (%.1f MiB) in %s",
                len(files),
                self._num_bytes / 2**20,
                self.directory,
            )

    def _header(self, payload: bytes) -> dict:
        return {
            "namespace": self.namespace,
            "dtype": str(self.dtype),
            "shape": list(self.block_shape),
            "payload_bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }

    def _encode(self, data: torch.Tensor) -> bytes:
        assert tuple(data.shape) == self.block_shape and data.dtype == self.dtype
        payload = data.contiguous().cpu().view(torch.uint8).numpy().tobytes()
        header = json.dumps(self._header(payload)).encode()
        return MAGIC + struct.pack("<I", len(header)) + header + payload

    def _decode(self, blob: bytes) -> torch.Tensor:
        if blob[: len(MAGIC)] != MAGIC or len(blob) < len(MAGIC) + 4:
            raise ValueError("not a SeekServe KV block")
        (header_len,) = struct.unpack_from("<I", blob, len(MAGIC))
        start = len(MAGIC) + 4
        try:
            header = json.loads(blob[start : start + header_len])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"bad header: {exc}") from None
        payload = blob[start + header_len :]
        expected = self._header(payload)
        for key in ("namespace", "dtype", "shape", "payload_bytes", "sha256"):
            if header.get(key) != expected[key]:
                raise ValueError(f"{key} does not match ({header.get(key)!r})")
        flat = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        return flat.view(self.dtype).view(self.block_shape)
