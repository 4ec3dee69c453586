"""The "plain paged read" of `scripts/bench.sh reconcile`: reads every resource carrying the connector's
partner tag from a FHIR server, a page at a time, and times only the reading.

    python3 scripts/bench/paged_read.py http://127.0.0.1:8080 Encounter Organization Patient

For each type it asks for `{Type}?_tag=<source-partner system>|&_count=1000` (the query `connector reconcile`
sends) and follows `link[relation=next]` until there is none, over one keep-alive connection, parsing each
page as JSON and counting its match entries. It compares nothing and keeps nothing: the floor reconcile's read
is compared with. Prints one JSON line: resources, pages, seconds, per-type counts, the slowest page (s).
Any answer other than 200 is a failure (reported, exit 1).

Standard library only.
"""

import http.client
import json
import sys
import time
import urllib.parse

TAG_SYSTEM = "https://id.york-connector.example/CodeSystem/source-partner"
PAGE = 1000


def main():
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    base = sys.argv[1].rstrip("/")
    types = sys.argv[2:]
    u = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=300)
    tag = urllib.parse.quote(f"{TAG_SYSTEM}|", safe="")
    counts, pages, slowest = {}, 0, 0.0
    started = time.monotonic()
    for t in types:
        counts[t] = 0
        url = f"{base}/{t}?_tag={tag}&_count={PAGE}"
        while url:
            parts = urllib.parse.urlsplit(url)
            path = parts.path + (f"?{parts.query}" if parts.query else "")
            t0 = time.monotonic()
            conn.request("GET", path, headers={"Accept": "application/fhir+json"})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                print(f"paged_read: GET {path} answered {resp.status}: {body[:300]!r}", file=sys.stderr)
                sys.exit(1)
            page = json.loads(body)
            slowest = max(slowest, time.monotonic() - t0)
            pages += 1
            counts[t] += sum(
                1 for e in page.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"
            )
            url = next((l["url"] for l in page.get("link", []) if l.get("relation") == "next"), None)
    seconds = time.monotonic() - started
    print(json.dumps({"resources": sum(counts.values()), "pages": pages, "seconds": round(seconds, 2),
                      "types": counts, "slowest_page_seconds": round(slowest, 2)}))


if __name__ == "__main__":
    main()
