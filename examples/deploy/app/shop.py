"""A small Flask service for the deployment examples: no tracing code.

Served by gunicorn in the example image (`gunicorn shop:app`); under the agent each
request is a SERVER span, and the call to the pricing endpoint a CLIENT span in the same
trace.
"""

import os
import urllib.request

from flask import Flask, jsonify

app = Flask(__name__)
PRICES = {"book": 12.5, "lamp": 30.0}
SELF = os.environ.get("SHOP_SELF_URL", "http://127.0.0.1:8000")


@app.get("/healthz")
def healthz():
    return "ok"


@app.get("/price/<item>")
def price(item):
    if item not in PRICES:
        return jsonify(error=f"no price for {item}"), 404
    return jsonify(item=item, price=PRICES[item])


@app.get("/quote/<item>")
def quote(item):
    with urllib.request.urlopen(f"{SELF}/price/{item}", timeout=5) as response:
        return jsonify(quote=response.read().decode())
