"""The inventory service: stock levels, and reservations. ``python inventory.py PORT``"""

from web import serve

STOCK = {"book": 12, "lamp": 3}


def stock(item: str, query: str, body: dict):
    if item not in STOCK:
        return 500, {"error": f"no stock record for {item!r}"}
    return 200, {"item": item, "stock": STOCK[item]}


def reserve(item: str, query: str, body: dict):
    quantity = int(body.get("quantity", 1))
    STOCK[item] -= quantity
    return 200, {"item": item, "reserved": quantity, "left": STOCK[item]}


serve("inventory", {"GET /stock": stock, "POST /reserve": reserve})
