"""A generation request as the scheduler takes it, and the queue where it waits for a slot.

Owners (users) take turns for free slots, whatever their backlog: the next request is the
oldest of the owner served least recently, so one user's burst does not hold back another's
single request.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from app.inference.engine import SamplingParams

ADMITTED = object()
"""The first event of an admitted request (a slot was found); TextDelta and Finished events or
an exception follow."""

_MAX_OWNERS = 10_000  # owners remembered for their turns; beyond, long-gone ones are forgotten


@dataclass(eq=False)
class Request:
    """One generation, from the queue to its last event."""

    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[object]
    owner: object = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    grammar: Any = None
    """The compiled grammar sampler, until the slot's picker takes it over."""


class FairQueue:
    """Requests waiting for a slot, taken in owners' turns (not thread-safe: the scheduler
    holds its lock)."""

    def __init__(self) -> None:
        self._requests: collections.deque[Request] = collections.deque()
        self._served: dict[object, int] = {}  # owner -> turn of its latest admission
        self._turn = 0

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._requests)

    def append(self, request: Request) -> None:
        self._requests.append(request)

    def discard(self, request: Request) -> bool:
        """Takes ``request`` out if it is waiting; whether it was."""
        if request in self._requests:
            self._requests.remove(request)
            return True
        return False

    def pop(self) -> Request:
        """Takes the waiting request whose owner was served least recently (never: first);
        among one owner's requests, the oldest."""
        best, request = min(
            enumerate(self._requests), key=lambda e: (self._served.get(e[1].owner, 0), e[0])
        )
        del self._requests[best]
        self._turn += 1
        self._served[request.owner] = self._turn
        if len(self._served) > _MAX_OWNERS:  # owners long gone: forget them all
            self._served = {request.owner: self._turn}
        return request
