"""Writes the York Mind fixtures: tests/fixtures/york-mind/<kind>.json (and contact.ndjson).

    python3 scripts/gen-fixtures/york_mind_json.py [--out tests/fixtures/york-mind]

Shaped like a Charitylog-style REST API page: {"meta": {...}, "data": [records]}, nested objects, ids and
some NHS numbers as JSON numbers, ISO dates, nulls for missing values, booleans for flags. Contacts come as
NDJSON (one record per line), as a bulk/streaming endpoint would give them. Deterministic output.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from people import BY_SLUG  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

CLIENT_IDS = {"zoe": 50231, "daniel": 50244, "connor": 50260, "tom": 50275, "hannah": 50288, "ravi": 50291,
              "sophie": 50302, "jamal": 50317}

GENDER = {"male": "Male", "female": "Female", "other": "Non-binary", "unknown": "Prefer not to say"}


def page(resource, data):
    return {
        "meta": {"resource": resource, "exportedAt": "2024-03-01T09:00:00Z", "page": 1, "pageSize": 100,
                 "total": len(data)},
        "data": data,
        "links": {"next": None},
    }


def client(slug, nhs_as, gender=None):
    p = BY_SLUG[slug]
    if p.nhs is None:
        nhs_value = None
    elif nhs_as == "number":
        nhs_value = int(p.nhs)
    elif nhs_as == "dashed":
        nhs_value = f"{p.nhs[:3]}-{p.nhs[3:6]}-{p.nhs[6:]}"
    elif nhs_as == "spaced":
        nhs_value = f"{p.nhs[:3]} {p.nhs[3:6]} {p.nhs[6:]}"
    else:
        nhs_value = p.nhs
    mobile = f"{p.mobile[:5]} {p.mobile[5:]}" if p.mobile else None
    return {
        "id": CLIENT_IDS[slug],
        "client": {
            "nhsNumber": nhs_value,
            "name": {"title": None, "first": p.given, "last": p.family},
            "dateOfBirth": p.dob,
            "gender": gender or GENDER[p.gender],
        },
        "address": {"line1": p.line1, "line2": p.line2, "town": p.town, "postcode": p.postcode},
        "contactDetails": {"mobile": mobile, "landline": p.home, "email": p.email},
        "status": "Active",
    }


def persons():
    return [
        client("zoe", "number"),
        client("daniel", "dashed"),
        client("connor", "number"),
        client("tom", "spaced"),
        client("hannah", "number"),
        client("ravi", "string"),
        client("sophie", "none"),
        client("jamal", "number", gender="Prefer not to say"),
    ]


SOURCES = {"GP": "GP", "SELF": "Self", "POLICE": "Police", "AE_LIAISON": "A&E liaison",
           "PARTNER": "Partner organisation", "FAMILY": "Family or friend"}


def referral(rid, slug, received, source, service, reason, status, closed=None):
    return {
        "id": rid,
        "client": {"id": CLIENT_IDS[slug]},
        "receivedDate": received,
        "source": {"code": source, "label": SOURCES[source]},
        "service": {"name": service},
        "reason": reason,
        "status": status,
        "closedDate": closed,
    }


def referrals():
    return [
        referral(70011, "zoe", "2023-01-16", "GP", "Peer Support Groups", "Low mood, isolated", "Open"),
        referral(70012, "daniel", "2023-10-20", "PARTNER", "Wellbeing Service", "Referred on by the Hub for befriending", "Open"),
        referral(70013, "connor", "2023-05-02", "SELF", "Young People's Service", "Anxiety about college", "Closed", "2023-09-29"),
        referral(70014, "tom", "2023-11-13", "PARTNER", "Wellbeing Service", "Debt worries, low mood", "Open"),
        referral(70015, "hannah", "2023-02-07", "SELF", "Counselling", "Bereavement", "Open"),
        referral(70016, "ravi", "2023-08-22", "AE_LIAISON", "Crisis Support", "Follow-up after attending ED", "Open"),
        referral(70017, "sophie", "2024-01-09", "FAMILY", "Counselling", "Low mood", "Declined", "2024-01-20"),
        referral(70018, "jamal", "2023-12-01", "POLICE", "Crisis Support", "Welfare concern", "Open"),
    ]


def contact(cid, slug, rid, start, minutes, ctype, mode, attended, visible, notes=None):
    return {
        "id": cid,
        "clientId": CLIENT_IDS[slug],
        "referralId": rid,
        "start": start,
        "durationMinutes": minutes,
        "type": ctype,
        "mode": mode,
        "attended": attended,
        "visibleToClient": visible,
        "notes": notes,
    }


def contacts():
    return [
        contact(90001, "zoe", 70011, "2023-01-30T18:00:00", 90, "GROUP", "IN_PERSON", True, True, "Tuesday peer group."),
        contact(90002, "zoe", 70011, "2023-03-25T11:00:00", 60, "ONE_TO_ONE", "IN_PERSON", True, True),
        # The morning the clocks went forward (Sun 26 March 2023): 11:00 is BST, +01:00
        contact(90003, "hannah", 70015, "2023-03-26T11:00:00", 50, "ONE_TO_ONE", "VIDEO", True, True),
        contact(90004, "connor", 70013, "2023-05-10T15:30:00", None, "ONE_TO_ONE", "IN_PERSON", False, True),
        contact(90005, "connor", 70013, "2023-05-17T15:30:00", 45, "ONE_TO_ONE", "IN_PERSON", True, True),
        # Either side of the end of BST (Sun 29 October 2023)
        contact(90006, "daniel", 70012, "2023-10-28T10:00:00", 30, "PHONE", "TELEPHONE", True, True),
        contact(90007, "daniel", 70012, "2023-10-29T10:00:00", 30, "PHONE", "TELEPHONE", True, True),
        # Not for the patient: safeguarding
        contact(90008, "ravi", 70016, "2023-08-24T09:00:00", 60, "ONE_TO_ONE", "IN_PERSON", True, False,
                "Safeguarding concern raised with the local authority.\nNot for client view."),
        contact(90009, "tom", 70014, "2023-11-20T14:00:00", 45, "WELCOMING", "IN_PERSON", True, True),
        contact(90010, "jamal", 70018, "2023-12-04T12:00:00", 20, "DROP_IN", "IN_PERSON", True, True),
        contact(90011, "hannah", 70015, "2024-02-12T16:00:00", None, "ONE_TO_ONE", "VIDEO", False, True),
    ]


def consent(kid, slug, given, central, pkb, partners, restrictions, status, withdrawn=None):
    return {
        "id": kid,
        "clientId": CLIENT_IDS[slug],
        "givenDate": given,
        "sharing": {"centralRecord": central, "pkb": pkb, "partners": partners},
        "restrictions": restrictions,
        "status": status,
        "withdrawnDate": withdrawn,
    }


def consents():
    return [
        consent(80001, "zoe", "2023-01-16", True, False, ["York Mental Health Hub"], None, "active"),
        consent(80002, "daniel", "2023-10-20", True, True, ["York Mental Health Hub", "Carers Centre"], None, "active"),
        consent(80003, "connor", "2023-05-02", True, False, ["York Mental Health Hub"], "No social care information", "active"),
        consent(80004, "tom", "2023-11-13", True, False, [], None, "active"),
        consent(80005, "hannah", "2023-02-07", True, True, [], None, "withdrawn", "2023-09-01"),
        consent(80006, "ravi", "2023-08-22", False, False, [], None, "declined"),
        consent(80007, "jamal", "2023-12-01", True, False, [], "No sexual health information", "active"),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "york-mind"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    def dump(name, obj):
        with open(os.path.join(args.out, name), "w", encoding="utf-8", newline="\n") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.write("\n")

    dump("person.json", page("clients", persons()))
    dump("referral.json", page("referrals", referrals()))
    dump("consent.json", page("consents", consents()))
    with open(os.path.join(args.out, "contact.ndjson"), "w", encoding="utf-8", newline="\n") as f:
        for c in contacts():
            f.write(json.dumps(c, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
