"""The gRPC code server and its client.

``runcore code-server --location pkg.mod:defs`` (:func:`runcore.codeserver.server.serve`) is a
long-running process that imports one code location once and executes the non-isolated runs
launchers send it, on a bounded pool of run worker threads (or, with ``--run-mode process``, as
its child processes). :class:`runcore.codeserver.client.CodeServerClient` talks to one server;
:class:`runcore.launchers.code_server.CodeServerRunLauncher` spreads runs over replicas.
The server is :mod:`~runcore.codeserver.server` (the process), :mod:`~runcore.codeserver.service`
(the gRPC service and the runs it holds), :mod:`~runcore.codeserver.auth` (its token check) and
:mod:`~runcore.codeserver.tokens` (where its token comes from).

The service is defined in ``runcore.proto``; ``runcore_pb2*.py`` are generated from it by
``nox -s protos`` and committed. Nothing is imported here, so that ``import runcore`` and
``import runcore.codeserver`` do not load gRPC.
"""
