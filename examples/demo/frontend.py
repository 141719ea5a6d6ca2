"""The frontend service: ``GET /buy?item=NAME`` places an order through checkout.
``python frontend.py PORT CHECKOUT_URL``"""

import sys
from urllib.parse import parse_qs

from web import call, serve

CHECKOUT = sys.argv[2]


def buy(rest: str, query: str, body: dict):
    item = parse_qs(query).get("item", ["book"])[0]
    order = call("POST", f"{CHECKOUT}/checkout", {"item": item, "quantity": 1})
    return 200, {"bought": order["order"], "left": order["left"]}


serve("frontend", {"GET /buy": buy})
