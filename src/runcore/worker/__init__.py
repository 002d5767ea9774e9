"""The run worker: everything that executes one run, wherever it runs.

* :mod:`~runcore.worker.plan` orders a job's steps;
* :mod:`~runcore.worker.execution` moves a run to STARTED, executes its steps (with their
  retries and pool slots) through an executor, and ends it;
* :mod:`~runcore.worker.context` is what an op sees (``OpContext``);
* :mod:`~runcore.worker.outputs` stores step outputs between steps and across runs;
* :mod:`~runcore.worker.capture` stores what a run writes to stdout and stderr;
* :mod:`~runcore.worker.heartbeats` tells storage, every few seconds, that the worker lives;
* :mod:`~runcore.worker.result` is what ``execute_in_process`` returns;
* :mod:`~runcore.worker.process` is the worker process: ``runcore worker execute-run``.

Launchers (:mod:`runcore.launchers`) decide where a run worker runs; this package is what runs.
"""
