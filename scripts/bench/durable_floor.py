"""The "durable floor" of `scripts/bench.sh sync`: the plain client (post_bundles.py) plus the least bookkeeping
the connector's duties call for, in SQLite as the connector keeps it (WAL, `synchronous = FULL`,
`secure_delete = ON`), so that the first load's target can be judged against what any connector with those
duties would cost on the same machine.

    python3 scripts/bench/durable_floor.py --base-url http://127.0.0.1:8080 --ndjson planned.ndjson \
        --state /tmp/floor.db --batch-size 50 --concurrency 2

As in post_bundles.py, the bundles are serialised before the clock starts (and each resource's hash computed),
so that what is timed beyond the plain client's posting is the bookkeeping alone. Timed: every resource is
queued first (a durable outbox: the body and its key, in transactions of 500 rows), then --concurrency threads,
each with its own SQLite connection and keep-alive HTTP connection, take --batch-size rows at a time (the lowest
not leased: always the same blocks, so each block's bundle is the one serialised beforehand) and, per bundle:
  1. lease them (one UPDATE, committed: another worker or process must not send them too);
  2. record the send intents (committed before anything leaves: a crash after the send is found and audited);
  3. post the transaction bundle (the same bodies and shape as post_bundles.py);
  4. in one transaction: write the ledger (what the destination holds, by key), append the audit entries
     (hash-chained, as `audit verify` checks), remove the intents and the outbox rows.
Fewer indexes than the connector's schema (only the keys these statements need), no mapping, no planning
decisions, no consent, no Patient search, no checkpoint: a floor, not a model. Prints one JSON line like
post_bundles.py, with the seconds spent in SQLite calls.

Standard library only.
"""

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import sqlite3
import sys
import threading
import time
import urllib.parse

from post_bundles import bundles

SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, rtype TEXT NOT NULL, rid TEXT NOT NULL,
    body TEXT NOT NULL, lease_owner TEXT, lease_until INTEGER, UNIQUE (rtype, rid));
CREATE TABLE send_intent (rtype TEXT NOT NULL, rid TEXT NOT NULL, held_hash TEXT NOT NULL, since INTEGER NOT NULL,
    PRIMARY KEY (rtype, rid, held_hash));
CREATE TABLE ledger (rtype TEXT NOT NULL, rid TEXT NOT NULL, version_id TEXT, content_hash TEXT NOT NULL,
    updated_at INTEGER NOT NULL, PRIMARY KEY (rtype, rid));
CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL, action TEXT NOT NULL,
    rtype TEXT, rid TEXT, version_id TEXT, content_hash TEXT, prev_hash TEXT, hash TEXT);
"""


def connect(path):
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA synchronous = FULL")
    db.execute("PRAGMA secure_delete = ON")
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--ndjson", required=True)
    ap.add_argument("--state", required=True, help="a new SQLite file")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0)
    args = ap.parse_args()

    base = args.base_url.rstrip("/")
    parsed = urllib.parse.urlsplit(base)
    path = parsed.path or "/"
    lines = [line.strip() for line in open(args.ndjson, encoding="utf-8") if line.strip()]
    # Before the clock: each row's key and hash, and each block's bundle (post_bundles.py's own, in file order).
    keyed = []
    for line in lines:
        r = json.loads(line)
        keyed.append((r["resourceType"], r["id"], line, hashlib.sha256(line.encode()).hexdigest()))
    blocks = [body for body, _, _ in bundles(args.ndjson, base, args.batch_size, False)]
    db = connect(args.state)
    db.executescript(SCHEMA)
    local = threading.local()
    sql_seconds = [0.0]
    sql_lock = threading.Lock()
    lease_lock = threading.Lock()
    chain = {"prev": ""}
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}

    def timed_sql(fn):
        t = time.perf_counter()
        out = fn()
        with sql_lock:
            sql_seconds[0] += time.perf_counter() - t
        return out

    def conn_db():
        c = getattr(local, "db", None)
        if c is None:
            c = local.db = connect(args.state)
        return c

    def send(body):
        conn = getattr(local, "http", None)
        if conn is None:
            conn = local.http = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=args.timeout)
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()

    def worker(owner):
        c = conn_db()
        errors = []
        while True:
            now = int(time.time() * 1000)

            def lease():
                with lease_lock:  # the connector's BEGIN IMMEDIATE does the same
                    c.execute("BEGIN IMMEDIATE")
                    rows = c.execute(
                        "SELECT seq, rtype, rid, body FROM outbox WHERE lease_owner IS NULL ORDER BY seq LIMIT ?",
                        (args.batch_size,)).fetchall()
                    c.executemany("UPDATE outbox SET lease_owner = ?, lease_until = ? WHERE seq = ?",
                                  [(owner, now + 300000, r[0]) for r in rows])
                    c.execute("COMMIT")
                    return rows

            rows = timed_sql(lease)
            if not rows:
                return errors
            first = rows[0][0] - 1  # seq counts from 1, in file order
            if first % args.batch_size or any(r[0] != first + 1 + i for i, r in enumerate(rows)):
                errors.append(f"leased rows {rows[0][0]}..{rows[-1][0]} are not one block")
                return errors
            hashes = [keyed[r[0] - 1][3] for r in rows]

            def intents():
                c.execute("BEGIN IMMEDIATE")
                c.executemany("INSERT INTO send_intent VALUES (?, ?, ?, ?)",
                              [(r[1], r[2], h, now) for r, h in zip(rows, hashes)])
                c.execute("COMMIT")

            timed_sql(intents)
            status, text = send(blocks[first // args.batch_size])
            if status != 200:
                errors.append(f"{status}: {text[:300]!r}")
                return errors
            answer = json.loads(text)
            versions = [(e.get("response") or {}).get("etag") for e in answer.get("entry", [])]
            if answer.get("type") != "transaction-response" or len(versions) != len(rows):
                errors.append(f"unexpected answer: {text[:300]!r}")
                return errors

            def complete():
                c.execute("BEGIN IMMEDIATE")
                c.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                              "version_id = excluded.version_id, content_hash = excluded.content_hash, "
                              "updated_at = excluded.updated_at",
                              [(r[1], r[2], v, h, now) for r, v, h in zip(rows, versions, hashes)])
                audit = []
                for r, v, h in zip(rows, versions, hashes):
                    prev = chain["prev"]
                    link = hashlib.sha256(f"{prev}|disclosed|{r[1]}|{r[2]}|{v}|{h}|{now}".encode()).hexdigest()
                    chain["prev"] = link
                    audit.append((now, "disclosed", r[1], r[2], v, h, prev, link))
                c.executemany("INSERT INTO audit (at, action, rtype, rid, version_id, content_hash, prev_hash, hash) "
                              "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", audit)
                c.executemany("DELETE FROM send_intent WHERE rtype = ? AND rid = ? AND held_hash = ?",
                              [(r[1], r[2], h) for r, h in zip(rows, hashes)])
                c.executemany("DELETE FROM outbox WHERE seq = ?", [(r[0],) for r in rows])
                c.execute("COMMIT")

            timed_sql(complete)

    started = time.perf_counter()

    def enqueue():
        for at in range(0, len(lines), 500):
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO outbox (rtype, rid, body) VALUES (?, ?, ?)",
                           [(t, i, line) for t, i, line, _ in keyed[at:at + 500]])
            db.execute("COMMIT")

    timed_sql(enqueue)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        errors = [e for errs in pool.map(worker, [f"w{i}" for i in range(args.concurrency)]) for e in errs]
    seconds = time.perf_counter() - started
    held = db.execute("SELECT count(*) FROM ledger").fetchone()[0]
    print(json.dumps({"resources": len(lines), "written": held, "seconds": round(seconds, 3),
                      "resources_per_second": round(len(lines) / seconds, 1) if seconds else None,
                      "sqlite_seconds": round(sql_seconds[0], 3), "failed_bundles": len(errors)}))
    for e in errors[:5]:
        print(f"durable_floor: {e}", file=sys.stderr)
    sys.exit(1 if errors or held != len(lines) else 0)


if __name__ == "__main__":
    main()
