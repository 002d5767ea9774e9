"""The SQL core shared by every SQL storage, and the seam a database plugs into.

=================  ==================================================================
module             holds
=================  ==================================================================
``schema``         the tables (one text for every dialect), ``SCHEMA_VERSION``
``migrations``     creating, checking and upgrading the schema
``filters``        ``RunsFilter`` as SQL
``core``           :class:`SqlStorage`: every query and transition, written once
``dialect``        :class:`Dialect`: the few statements that differ per database
=================  ==================================================================

A database is a dialect and its connection handling: ``runcore.storage.sqlite`` holds
SQLite's (:class:`~runcore.storage.sqlite.SqliteDialect`,
:class:`~runcore.storage.sqlite.SqliteStorage`).
"""

from __future__ import annotations

from runcore.storage.sql.core import SqlStorage
from runcore.storage.sql.dialect import Dialect, SqlConnection, format_placeholders
from runcore.storage.sql.schema import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "Dialect", "SqlConnection", "SqlStorage", "format_placeholders"]
