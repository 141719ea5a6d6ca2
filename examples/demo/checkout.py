"""The checkout service: checks the stock, then reserves it. ``python checkout.py PORT INVENTORY_URL``"""

import sys

from web import call, serve

INVENTORY = sys.argv[2]


def checkout(rest: str, query: str, body: dict):
    item, quantity = body["item"], int(body.get("quantity", 1))
    level = call("GET", f"{INVENTORY}/stock/{item}")
    if level["stock"] < quantity:
        return 409, {"error": f"only {level['stock']} {item} left"}
    reservation = call("POST", f"{INVENTORY}/reserve/{item}", {"quantity": quantity})
    return 200, {"order": f"{item} x{quantity}", "left": reservation["left"]}


serve("checkout", {"POST /checkout": checkout})
