"""The stock service, Flask on gunicorn (two workers): ``GET /stock/<item>`` answers an
item's level, read from SQLite by a process pool (the work a request hands to other
processes: the agent carries the trace into them). No tracing code.

Run by ``run.py``: ``gunicorn -c gunicorn.conf.py -w 2 stock:app``.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import ProcessPoolExecutor

from flask import Flask, jsonify

app = Flask(__name__)
_pool: list[ProcessPoolExecutor] = []  # one per worker, made on its first request

LEVELS = "SELECT column2 FROM (VALUES ('book', 12), ('lamp', 3), ('pen', 40), ('mug', 0)) WHERE column1 = ?"


def read_level(item: str) -> int | None:
    """In a pool process: the item's level, or None if there is no such item."""
    with sqlite3.connect(":memory:") as db:
        row = db.execute(LEVELS, (item,)).fetchone()
    return None if row is None else int(row[0])


@app.route("/stock/<item>")
def stock(item: str):
    if not _pool:
        _pool.append(ProcessPoolExecutor(max_workers=2))
    level = _pool[0].submit(read_level, item).result(timeout=10)
    if level is None:
        return jsonify(error=f"no such item {item!r}"), 404
    return jsonify(item=item, level=level)
