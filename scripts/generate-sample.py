#!/usr/bin/env python3
"""Writes samples/cobrowse-sessions.jsonl: realistic Genesys Co-browse session
events (topic all-cobrowse-historical) for the README's main job, the tests
and the benchmarks.

Deterministic (fixed seed): the committed file is exactly what this prints.
It mixes the shapes real producers send: epoch-millisecond and ISO-8601
timestamps with various offsets, indexes given or left out, modes POINTER,
WRITE, missing or unexpected, sessions without segments, segments without
pages, numeric tokens, partial creators, URLs with ports, user info, query
strings and fragments, long titles, and a few malformed events (which go to
CTL_DISCARD).

With --handlings it writes instead the agent-handling events (topic
all-agent-handling) of the same sessions' interactions: most interactions
one agent, some two, some none (those sessions count under the "no agent"
member), some handlings arriving before and some after their session.

Usage: scripts/generate-sample.py [SESSIONS] > samples/cobrowse-sessions.jsonl
       scripts/generate-sample.py [SESSIONS] --handlings > samples/agent-handlings.jsonl
"""
import json
import random
import sys
import uuid
from datetime import datetime, timedelta, timezone

ARGS = [a for a in sys.argv[1:] if not a.startswith('--')]
SESSIONS = int(ARGS[0]) if ARGS else 1200
HANDLINGS = '--handlings' in sys.argv[1:]
rng = random.Random(20260301)

SITES = [
    ("shop.example.com", ["/", "/cart", "/checkout", "/products/tv", "/products/phone", "/account/orders"]),
    ("www.bank.example", ["/", "/login", "/accounts", "/transfer", "/loans/apply", "/help/contact"]),
    ("support.telco.example", ["/", "/plans", "/plans/unlimited", "/billing", "/devices/router"]),
]
TITLES = {"/": "Home", "/cart": "Your cart", "/checkout": "Checkout", "/login": "Sign in",
          "/accounts": "Accounts overview", "/transfer": "Transfer money", "/billing": "Billing"}
AGENTS = [
    {"userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
     "agentClass": "Browser", "agentName": "Chrome", "agentVersion": "130.0", "deviceClass": "Desktop",
     "deviceName": "Desktop", "deviceBrand": "Unknown", "osClass": "Desktop", "osName": "Windows NT", "osVersion": "10.0"},
    {"userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
     "agentClass": "Browser", "agentName": "Safari", "agentVersion": "18.1", "deviceClass": "Phone",
     "deviceName": "Apple iPhone", "deviceBrand": "Apple", "osClass": "Mobile", "osName": "iOS", "osVersion": "18.1"},
    {"userAgent": "Mozilla/5.0 (Linux; Android 15; SM-S921B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Mobile Safari/537.36",
     "agentClass": "Browser", "agentName": "Chrome", "agentVersion": "130.0", "deviceClass": "Phone",
     "deviceName": "Samsung SM-S921B", "deviceBrand": "Samsung", "osClass": "Mobile", "osName": "Android", "osVersion": "15"},
    {"userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) Gecko/20100101 Firefox/132.0",
     "agentClass": "Browser", "agentName": "Firefox", "agentVersion": "132.0", "deviceClass": "Desktop",
     "osClass": "Desktop", "osName": "Mac OS X", "osVersion": "14.6"},
]
OFFSETS = [timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5)),
           timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=5, minutes=45))]
START = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)


def stamp(instant):
    """Epoch milliseconds most of the time, ISO-8601 with an offset otherwise."""
    if rng.random() < 0.7:
        return int(instant.timestamp() * 1000)
    local = instant.astimezone(rng.choice(OFFSETS))
    text = local.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z") if rng.random() < 0.5 else text


def url(domain, path):
    port = ":8443" if rng.random() < 0.05 else ""
    user = "guest@" if rng.random() < 0.02 else ""
    query = rng.choice(["", "", "", f"?ref=campaign{rng.randint(1, 9)}", "?q=router+setup&page=2", "?"])
    fragment = rng.choice(["", "", "", "#top", "#section-2"])
    host = domain.upper() if rng.random() < 0.03 else domain
    return f"https://{user}{host}{port}{path}{query}{fragment}"


def session(number):
    start = START + timedelta(seconds=rng.randint(0, 3 * 24 * 3600), milliseconds=rng.randint(0, 999))
    event = {"id": str(uuid.UUID(int=rng.getrandbits(128))), "startTime": stamp(start)}
    if rng.random() < 0.95:
        event["token"] = rng.randint(100000000, 999999999) if rng.random() < 0.3 else f"{rng.randint(100000000, 999999999)}"
    if rng.random() < 0.9:
        event["ixnId"] = f"00{rng.getrandbits(52):013X}"
    if rng.random() < 0.8:
        event["firstSession"] = rng.choice([True, False, 1, 0])
    event["endReason"] = rng.choice(["NONE", "NONE", "NONE", "AGENT_LEFT", "CUSTOMER_LEFT", "TIMEOUT"])
    if rng.random() < 0.9:
        agent = dict(rng.choice(AGENTS))
        if rng.random() < 0.1:
            agent = {k: v for k, v in agent.items() if rng.random() < 0.5}
        event["creator"] = agent
    segments = []
    clock = start
    page_index = 0
    domain, paths = rng.choice(SITES)
    give_indexes = rng.random() < 0.6
    for s in range(rng.choice([0, 1, 1, 2, 2, 3, 4]) if rng.random() > 0.03 else 0):
        segment = {"id": f"{event['id'][:8]}-s{s}", "startTime": stamp(clock)}
        mode = rng.choices(["POINTER", "WRITE", None, "DRAW"], [70, 25, 4, 1])[0]
        if mode:
            segment["mode"] = mode
        if give_indexes:
            segment["index"] = s
        pages = []
        for _ in range(rng.choice([0, 1, 2, 3, 4, 6]) if rng.random() > 0.05 else 0):
            path = rng.choice(paths)
            page = {"id": f"{event['id'][:8]}-p{page_index}", "url": url(domain, path), "startTime": stamp(clock)}
            if path in TITLES or rng.random() < 0.8:
                page["title"] = TITLES.get(path, path.strip("/").replace("/", " · ").title() or "Home")
            if rng.random() < 0.01:
                page["title"] = "Very long title " * 30
            if give_indexes:
                page["index"] = page_index
            clock += timedelta(seconds=rng.randint(5, 240))
            page["endTime"] = stamp(clock)
            pages.append(page)
            page_index += 1
        if pages or rng.random() < 0.5:
            segment["pages"] = pages
        clock += timedelta(seconds=rng.randint(1, 60))
        segment["endTime"] = stamp(clock)
        segments.append(segment)
    if segments or rng.random() < 0.5:
        event["segments"] = segments
    if rng.random() < 0.5:
        event["rwFlag"] = any(seg.get("mode") == "WRITE" for seg in segments)
    event["endTime"] = stamp(clock + timedelta(seconds=rng.randint(1, 30)))
    return event


MALFORMED = [
    '{"id": "bad-1", "startTime": "2026-03-01T10:15:30", "segments": []}',
    '{"id": "bad-2", "segments": [{"mode": "WRITE"}]}',
    '{"id": "bad-3", "startTime": 1772352930123, "segments": "none"}',
    '{"id": "bad-4", "startTime": 1772352930123, "firstSession": "yes"}',
    '{"id": "bad-5", "startTime": 17723529',
]

lines = [json.dumps(session(n), ensure_ascii=False, separators=(",", ":")) for n in range(SESSIONS)]
for at, bad in enumerate(MALFORMED):
    lines.insert((at + 1) * len(lines) // (len(MALFORMED) + 1), bad)
# A later version of the first session: it replaces that session's rows.
first = json.loads(lines[0])
first["endReason"] = "REPLACED"
first["segments"] = first.get("segments", [])[:1]
lines.append(json.dumps(first, ensure_ascii=False, separators=(",", ":")))

EMPLOYEES = [(f"E{1001 + n}", name) for n, name in enumerate([
    "Ana Silva", "Ben Okafor", "Chloé Martin", "Dev Patel", "Emma Jones", "Farid Haddad",
    "Grace Kim", "Hiro Tanaka", "Ines Costa", "Jonas Berg", "Kavya Rao", "Liam Walsh"])]


def handlings(sessions):
    """One event per agent per interaction of the sessions, from a seed of its own."""
    pick = random.Random(20261130)
    out = []
    seen = set()
    for event in sessions:
        ixn = event.get("ixnId")
        if not ixn or ixn in seen:
            continue
        seen.add(ixn)
        roll = pick.random()
        count = 0 if roll < 0.1 else 2 if roll < 0.25 else 1
        start = event["startTime"]
        start_ms = start if isinstance(start, int) else int(datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp() * 1000)
        for employee_id, name in pick.sample(EMPLOYEES, count):
            begin = start_ms - pick.randint(30, 600) * 1000
            handling = {"ixnId": ixn, "agent": {"employeeId": employee_id, "name": name},
                        "startTime": begin, "endTime": begin + pick.randint(120, 1800) * 1000}
            out.append(handling)
    # Some handlings arrive long before their session, some after: shuffle.
    pick.shuffle(out)
    return out


if HANDLINGS:
    sessions = []
    for line in lines:
        try:
            sessions.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    out = [json.dumps(h, ensure_ascii=False, separators=(",", ":")) for h in handlings(sessions)]
    sys.stdout.write("\n".join(out) + "\n")
else:
    sys.stdout.write("\n".join(lines) + "\n")
