"""A progress bar for loading weights, shown only when stderr is a terminal (logs and CI
stay clean)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def loading(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    return iter(
        tqdm(
            items,
            desc=description,
            total=total,
            unit="tensor",
            leave=False,
            disable=not sys.stderr.isatty(),
        )
    )
