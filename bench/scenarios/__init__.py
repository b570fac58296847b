"""The scenarios of `python -m bench`, one module each, in the order they run."""

from __future__ import annotations

from collections.abc import Callable

from bench.context import Context, Outcome
from bench.scenarios import many, reads, replication, serverless, storm, writes

RUNNERS: dict[str, Callable[[Context], Outcome]] = {
    "reads": reads.run,
    "serverless": serverless.run,
    "storm": storm.run,
    "writes": writes.run,
    "many": many.run,
    "replication": replication.run,
}
