"""The orders service, FastAPI on uvicorn: ``POST /orders`` with ``{"items": [...]}`` asks the
stock service about each item and the prices service for a quote, all at once
(``httpx.AsyncClient`` and a ``grpc.aio`` channel under ``asyncio.gather``). No tracing code.

Run by ``run.py``: ``uvicorn orders:app``, with ``SHOP_STOCK_URL`` and ``SHOP_PRICES_ADDRESS``
in the environment.
"""

from __future__ import annotations

import asyncio
import json
import os

import grpc
import httpx
from fastapi import FastAPI, HTTPException

STOCK = os.environ["SHOP_STOCK_URL"]
PRICES = os.environ["SHOP_PRICES_ADDRESS"]

app = FastAPI()
_clients: dict[str, object] = {}  # made in the server's event loop, on the first order


def clients() -> tuple[httpx.AsyncClient, grpc.aio.Channel]:
    if not _clients:
        _clients["http"] = httpx.AsyncClient(timeout=10)
        _clients["grpc"] = grpc.aio.insecure_channel(PRICES)
    return _clients["http"], _clients["grpc"]


async def level(http: httpx.AsyncClient, item: str) -> int:
    response = await http.get(f"{STOCK}/stock/{item}")
    if response.status_code != 200:
        raise HTTPException(502, f"stock answered {response.status_code} for {item}")
    return response.json()["level"]


async def quote(channel: grpc.aio.Channel, items: list[str]) -> float:
    call = channel.unary_unary(
        "/shop.Prices/Quote",
        request_serializer=lambda request: json.dumps(request).encode(),
        response_deserializer=json.loads,
    )
    return (await call({"items": items}, timeout=10))["total"]


@app.post("/orders")
async def place(order: dict) -> dict:
    items = [str(item) for item in order.get("items", [])]
    http, channel = clients()
    *levels, total = await asyncio.gather(*(level(http, item) for item in items), quote(channel, items))
    missing = [item for item, left in zip(items, levels) if left < 1]
    if missing:
        raise HTTPException(409, f"out of stock: {', '.join(missing)}")
    return {"items": items, "total": total}
