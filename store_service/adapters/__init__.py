"""Backends of the storage port (:class:`flowledger_core.ports.EventStore`).

``memory`` keeps everything in process (tests, the in-process engine); ``postgres`` is the
production backend. Import the one you need from its module: this package imports neither, so
using the memory backend never loads psycopg.
"""
