"""A route in iproute2's words, as `fwd route add|replace` and `route load` lines take it:

    [TYPE] PREFIX [via GW] [dev PORT] [metric N]
    [TYPE] PREFIX [metric N] nexthop via GW [dev PORT] nexthop via GW [dev PORT] ...

TYPE is unicast (the default), blackhole, unreachable or prohibit, as `ip route`;
PREFIX may be `default` (0.0.0.0/0). Older spellings stay: `port P` for `dev P` and
`type T` anywhere after the prefix. The words become a [[route]]-like table (prefix,
type, via, port, metric, nexthops) that the config's own rules then check
(engine/config.py `RouteChecker`): this module only reads words, it knows no ports.

Each `nexthop` starts one ECMP member; `via` and `dev` after it belong to it. One
`nexthop` alone is an ordinary gateway route. Nothing is silently dropped: a word
given twice, a word we do not know, or `via` beside `nexthop` is an error.
"""

from __future__ import annotations

from typing import Any

ROUTE_TYPE_WORDS = ("unicast", "blackhole", "unreachable", "prohibit")
# the words after the prefix, and what each one sets
ROUTE_WORDS = ("via", "dev", "port", "type", "metric", "nexthop")
NEXTHOP_WORDS = ("via", "dev", "port")


class RouteWordsError(ValueError):
    """Words that do not make a route; the message (one line) names the word."""


def parse_route_words(words: list[str]) -> dict[str, Any]:
    """The [[route]]-like table `words` describe (see the module's grammar)."""
    if not words:
        raise RouteWordsError("a prefix is needed (e.g. 10.9.0.0/16 via 10.0.2.254)")
    table: dict[str, Any] = {}
    i = 0
    if words[0] in ROUTE_TYPE_WORDS:
        table["type"] = words[0]
        i = 1
    if i >= len(words):
        raise RouteWordsError(f"a prefix is needed after {words[0]!r}")
    table["prefix"] = "0.0.0.0/0" if words[i] == "default" else words[i]
    i += 1
    hops: list[dict[str, str]] = []
    while i < len(words):
        word = words[i]
        if word == "nexthop":
            if "via" in table or "port" in table:
                raise RouteWordsError("give either via/dev or nexthop members, not both")
            hops.append({})
            i += 1
            continue
        if word not in ROUTE_WORDS:
            raise RouteWordsError(f"unknown word {word!r} (expected "
                                  f"{', '.join(ROUTE_WORDS)} after the prefix)")
        if i + 1 >= len(words):
            raise RouteWordsError(f"{word!r} needs a value")
        value = words[i + 1]
        key = "port" if word == "dev" else word
        target = hops[-1] if hops and word in NEXTHOP_WORDS else table
        if key in target:
            raise RouteWordsError(f"{word!r} is given twice"
                                  + (" in one nexthop" if target is not table else ""))
        if key == "metric":
            target[key] = _metric(value)
        else:
            target[key] = value
        i += 2
    for n, hop in enumerate(hops, 1):
        if "via" not in hop:
            raise RouteWordsError(f"nexthop {n} has no via (nexthop via GW [dev PORT])")
    if len(hops) == 1:  # one member: an ordinary gateway route
        table.update(hops[0])
    elif hops:
        table["nexthops"] = hops
    return table


def _metric(value: str) -> int:
    if not value.isdigit():
        raise RouteWordsError(f"metric {value!r} is not a number")
    return int(value)


def route_words(row: dict[str, Any]) -> str:
    """The words of a route row (`route.show`'s), so that `parse_route_words` of them
    gives the same route back: a `route load` line."""
    words = [] if row.get("type", "unicast") == "unicast" else [row["type"]]
    words.append(row["prefix"])
    words += nexthop_words(row)
    if row.get("metric"):
        words += ["metric", str(row["metric"])]
    return " ".join(words)


def nexthop_words(row: dict[str, Any]) -> list[str]:
    """`via GW dev P`, or `nexthop via GW dev P` for each ECMP member."""
    if row.get("nexthops"):
        out: list[str] = []
        for h in row["nexthops"]:
            out += ["nexthop", "via", h["via"]] + (["dev", h["port"]] if h.get("port") else [])
        return out
    out = ["via", row["via"]] if row.get("via") else []
    return out + (["dev", row["port"]] if row.get("port") else [])
