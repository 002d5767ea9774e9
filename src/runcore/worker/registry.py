"""Which job a run executes: :class:`JobRegistry`, shared by the instance and the run worker
process (which needs nothing else of the instance)."""

from __future__ import annotations

import threading

from runcore.definitions import Definitions, Job, load_code_location
from runcore.errors import UnknownJobError
from runcore.runs import Run

#: Set in the environment of run worker processes.
WORKER_ENV = "RUNCORE_WORKER"


class JobRegistry:
    """Finds the job of a run: jobs submitted from this process first, then code locations."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str | None, str], Job] = {}
        self._locations: dict[str, Definitions] = {}
        self._lock = threading.Lock()

    def register(self, job: Job, code_location: str | None) -> None:
        """Remember ``job`` so runs of it execute this very object."""
        with self._lock:
            self._jobs[(code_location, job.name)] = job

    def load(self, code_location: str) -> Definitions:
        """The definitions at ``code_location`` (imported once, then cached)."""
        with self._lock:
            defs = self._locations.get(code_location)
        if defs is None:
            defs = load_code_location(code_location)
            with self._lock:
                self._locations[code_location] = defs
        return defs

    def resolve(self, run: Run) -> Job:
        """The job ``run`` executes."""
        with self._lock:
            found = self._jobs.get((run.code_location, run.job_name))
        if found is not None:
            return found
        if run.code_location is None:
            raise UnknownJobError(
                f"run {run.run_id} is of job {run.job_name!r}, which this process does not "
                "know and which has no code location; submit the Job object, or give "
                "code_location='pkg.module:defs'"
            )
        return self.load(run.code_location).get_job(run.job_name)


__all__ = ["WORKER_ENV", "JobRegistry"]
