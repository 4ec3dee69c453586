"""The "plain client" of `scripts/bench.sh sync`: posts precomputed resources to a FHIR server as transaction
bundles and times only the posting.

    python3 scripts/bench/post_bundles.py --base-url http://127.0.0.1:8080 --ndjson out.ndjson \
        --batch-size 50 --concurrency 2

The resources (one per line, e.g. the output of `connector mappings preview`) are cut, in file order, into
transaction bundles of --batch-size entries, each entry a `PUT Type/id` with the same shape the connector sends
(fullUrl, request.method, request.url, resource). Every bundle is serialised before the clock starts. Then
--concurrency threads post them, each over its own keep-alive connection, and the script prints one JSON line:
bundles, resources, seconds, resources per second. Any answer other than 200 with a transaction-response is a
failure (reported, exit 1). No lookups, no state, no retries: the floor the connector is compared with.

With --lookups, each bundle holding Patients is preceded, on the same connection, by the searches the connector
makes before it creates Patients (a `batch` bundle of `GET Patient?identifier=system|value&_count=20`, the NHS
number where there is one, 100 per bundle; `src/deliver/fhir.rs::search_batch`): a second baseline, the plain
client that also checks for duplicates, so the ratio to it is the connector's own cost.

With --minimal, transactions carry `Prefer: return=minimal`, as the connector's do (`src/deliver/fhir.rs`,
`PREFER_MINIMAL`): the server answers each entry's status, location and ETag without writing the resources
out again. A third baseline: the plain client asking the server for the same work as the connector does.

Standard library only.
"""

import argparse
import concurrent.futures
import http.client
import json
import sys
import threading
import time
import urllib.parse


NHS = "https://fhir.nhs.uk/Id/nhs-number"


def match_identifier(patient):
    """The identifier the connector looks a new Patient up by (`deliver::patients::match_identifier`)."""
    ids = patient.get("identifier") or []
    pick = next((i for i in ids if i.get("system") == NHS), None) or next(
        (i for i in ids if isinstance(i.get("system"), str) and isinstance(i.get("value"), str)), None)
    return f"{pick['system']}|{pick['value']}" if pick else None


def searches(entries):
    """Serialised batch bundles of the Patient searches for `entries` (empty when none is a Patient)."""
    wanted = sorted({m for e in entries if e["resource"]["resourceType"] == "Patient"
                     for m in [match_identifier(e["resource"])] if m})
    out = []
    for at in range(0, len(wanted), 100):
        gets = [{"request": {"method": "GET",
                             "url": f"Patient?identifier={urllib.parse.quote(w, safe='')}&_count=20"}}
                for w in wanted[at:at + 100]]
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": gets}
        out.append(json.dumps(bundle, separators=(",", ":")).encode("utf-8"))
    return out


def bundles(path, base, size, lookups):
    """Yield (serialised transaction bundle, entry count, serialised searches to make first) of up to `size`
    resources, in file order."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            url = f"{r['resourceType']}/{r['id']}"
            entries.append({"fullUrl": f"{base}/{url}", "request": {"method": "PUT", "url": url}, "resource": r})
            if len(entries) == size:
                yield encode(entries), len(entries), searches(entries) if lookups else []
                entries = []
    if entries:
        yield encode(entries), len(entries), searches(entries) if lookups else []


def encode(entries):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="FHIR base URL, e.g. http://127.0.0.1:8080")
    ap.add_argument("--ndjson", required=True, help="resources, one JSON object per line")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    ap.add_argument("--lookups", action="store_true", help="search for each bundle's Patients first, as the connector does")
    ap.add_argument("--minimal", action="store_true", help="ask for minimal transaction answers, as the connector does")
    args = ap.parse_args()
    if args.batch_size < 1 or args.concurrency < 1:
        ap.error("--batch-size and --concurrency must be at least 1")

    base = args.base_url.rstrip("/")
    parsed = urllib.parse.urlsplit(base)
    if parsed.scheme != "http":
        ap.error("only http:// (a local bench server) is supported")
    path = parsed.path or "/"

    work = list(bundles(args.ndjson, base, args.batch_size, args.lookups))
    total = sum(n for _, n, _ in work)
    local = threading.local()

    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if args.minimal:
        headers["Prefer"] = "return=minimal"

    def post(item):
        body, n, first = item
        for search in first:
            status, text = send(search)
            if status != 200 or json.loads(text).get("type") != "batch-response":
                return f"searches: {status}: {text[:300]!r}"
        status, text = send(body)
        if status != 200:
            return f"{status}: {text[:300]!r}"
        answer = json.loads(text)
        if answer.get("type") != "transaction-response" or len(answer.get("entry", [])) != n:
            return f"unexpected answer: {text[:300]!r}"
        return None

    def send(body):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=args.timeout)
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()  # one reconnect, then give up: the bench server should not drop connections
            local.conn = conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=args.timeout)
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read()
        return resp.status, text

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        errors = [e for e in pool.map(post, work) if e]
    seconds = time.perf_counter() - started

    print(json.dumps({"bundles": len(work), "resources": total, "seconds": round(seconds, 3),
                      "resources_per_second": round(total / seconds, 1) if seconds else None,
                      "failed_bundles": len(errors)}))
    for e in errors[:5]:
        print(f"post_bundles: {e}", file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
