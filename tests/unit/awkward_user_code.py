"""User code that is hard to report on, shared by the execution and runner tests."""

from __future__ import annotations

import asyncio
import os

UNDECODABLE_NAME = os.fsdecode(b"report-\xff.csv")  # "report-\udcff.csv": a lone surrogate


class Unprintable(Exception):
    """An exception whose __str__ and __repr__ raise (here: the exception itself)."""

    def __str__(self) -> str:
        raise self

    def __repr__(self) -> str:
        raise self


def sync_unprintable(n: int) -> None:
    raise Unprintable()


async def async_unprintable(n: int) -> None:
    await asyncio.sleep(0)
    raise Unprintable()
