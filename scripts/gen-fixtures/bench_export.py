"""Generates a large synthetic Hub-shaped export for benchmarks: person.csv and contact.csv.

    python3 scripts/gen-fixtures/bench_export.py --rows 100000 --out DIR
    python3 scripts/gen-fixtures/bench_export.py --rows 1000000 --out /tmp/bench --contacts-per-person 3

The files have exactly the columns of tests/fixtures/hub/person.csv and contact.csv, so the mappings in
mappings/hub/ apply unchanged (map them as partner "hub"). By default they are written like the fixtures:
person.csv in Windows-1252 with CRLF, contact.csv in UTF-8 with a BOM and CRLF (--utf8 writes both as
plain UTF-8).

Everything is streamed row by row (nothing is held in memory), so a million rows is fine. Output is
deterministic for a given --rows, --seed and options.

People are synthetic: NHS numbers are distinct, in the 999 range, and computed with Modulus 11; about 20%
of people have none (and, as the range holds only 909,091 valid numbers, everyone past ~1.1 million rows). Phones are from Ofcom's drama ranges; some lost their leading zero (Excel), some have
spaces or +44. Dates mix d/m/yyyy and dd/mm/yyyy; postcodes are York-shaped and sometimes lower case or
without the space. With --bad-rate R, about R of person rows are damaged the way the fixtures are (lost
NHS digits, failing Modulus 11, missing date of birth): the connector must quarantine exactly those.
"""

import argparse
import csv
import datetime as dt
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nhs  # noqa: E402

PERSON_HEADER = ["Client ID", "Forename", "Surname", "Date of Birth", "Gender", "NHS Number", "NHS No. Verified",
                 "Address Line 1", "Address Line 2", "Town", "Postcode", "Mobile", "Home Phone", "Email",
                 "Ethnicity", "GP Practice"]
CONTACT_HEADER = ["Contact ID", "Client ID", "Episode ID", "Contact Date/Time", "Duration (mins)", "Contact Type",
                  "Contact Method", "Attendance", "Patient Visible", "Worker Role", "Notes"]

GIVEN_F = ["Zoë", "Siân", "Ewa", "Priya", "Margaret", "Niamh", "Grace", "Hannah", "Sophie", "Aisha", "Susan",
           "Linda", "Chloé", "Maria", "Fatima", "Olivia", "Amelia", "Isla", "Ava", "Mia", "Freya", "Leah"]
GIVEN_M = ["Mohammed", "Daniel", "Connor", "Tom", "Liam", "Jordan", "Kevin", "Ravi", "Jamal", "David", "Peter",
           "José", "Oliver", "George", "Noah", "Arthur", "Harry", "Leo", "Jack", "Charlie", "Oscar", "Kai"]
GIVEN_X = ["Alex", "Sam", "Jo", "Robin", "Charlie", "Jesse"]
FAMILY = ["Brontë", "Roberts", "Iqbal", "Okafor", "Kowalska", "Walsh", "Sharma", "Turner", "Hughes", "Bennett",
          "O’Brien", "Foster", "Lee", "Price", "Marsh", "Clarke", "Patel", "Ward", "Hussain", "Smith", "Jones",
          "Taylor", "Brown", "Wilson", "Johnson", "Davies", "Robinson", "Wright", "Thompson", "Evans", "Nowak",
          "Müller", "Ó Súilleabháin", "Ng", "Kaur", "Begum", "Ali", "Khan", "Murphy", "Kelly"]
STREETS = ["Bishopthorpe Road", "Heslington Lane", "Burton Stone Lane", "Water End", "Skeldergate", "Tang Hall Lane",
           "Front Street", "Hull Road", "Main Street", "Gillygate", "Lowther Street", "Nunnery Lane", "Haxby Road",
           "Walmgate", "Bootham", "Lawrence Street", "Poppleton Road", "Holgate Road", "Huntington Road",
           "Fulford Road", "Tadcaster Road", "Malton Road", "Wigginton Road", "Clarence Street", "Monkgate"]
DISTRICTS = ["YO1", "YO10", "YO23", "YO24", "YO26", "YO30", "YO31", "YO32"]
INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"  # the letters used in inward codes
ETHNICITY = ["White - British", "White - Irish", "White - Any other White background", "Asian or Asian British - Indian",
             "Asian or Asian British - Pakistani", "Black or Black British - African", "Mixed - White and Asian",
             "Not stated", ""]
GP = ["Old Station Surgery", "Fishergate Health Centre", "Clifton Medical Practice", "Tang Hall Medical Centre",
      "Acomb Health Centre", "Heslington Health Centre", "Haxby Group Practice", "Gillygate Surgery"]
CONTACT_TYPES = [("Welcoming Conversation", "Face to face"), ("1-2-1", "Face to face"), ("1-2-1", "Video"),
                 ("Group", "Face to face"), ("Drop-in", "Face to face"), ("Phone", "Telephone")]
ROLES = ["Peer Supporter", "Mental Health Practitioner", "Recovery Worker", "Social Prescriber", "Social Care Worker"]
NOTES = ["", "", "", "Reviewed plan.", "Talked about sleep and routine.\nAgreed next steps.",
         'Said "things are a bit better".', "Signposted to debt advice, housing, and the walking group."]


def uk_date(d, rng):
    return f"{d.day}/{d.month}/{d.year}" if rng.random() < 0.3 else d.strftime("%d/%m/%Y")


def phone(rng, mobile):
    if mobile:
        national = f"07700900{rng.randrange(1000):03d}"
    else:
        national = rng.choice([f"0113496{rng.randrange(1000):04d}", f"01632960{rng.randrange(1000):03d}"])
    r = rng.random()
    if r < 0.15:
        return national[1:]  # Excel dropped the leading zero
    if r < 0.2:
        return "+44 " + national[1:]
    if r < 0.6:
        return f"{national[:5]} {national[5:]}" if national.startswith(("07", "01632")) else \
            f"{national[:4]} {national[4:7]} {national[7:]}"
    return national


def postcode(rng):
    pc = f"{rng.choice(DISTRICTS)} {rng.randrange(1, 10)}{rng.choice(INWARD_LETTERS)}{rng.choice(INWARD_LETTERS)}"
    r = rng.random()
    if r < 0.05:
        return pc.lower()
    if r < 0.1:
        return pc.replace(" ", "")
    return pc


def nhs_text(number, rng):
    r = rng.random()
    if r < 0.3:
        return f"{number[:3]} {number[3:6]} {number[6:]}"
    if r < 0.35:
        return f"{number[0]}.{number[1:]}E+09"  # Excel scientific notation that kept every digit
    return number


def people(rows, seed, bad_rate):
    """Yield (client_id, person_row) one at a time."""
    rng = random.Random(seed)
    # The 999 range has one million nine-digit stems (999000000..999999999), of which 909,091 form valid
    # numbers. About 80% of people get one, spread over the range for small runs; past ~1.1 million rows
    # the range is used up and the remaining people have no NHS number.
    step = max(1, 700_000 // max(rows, 1))
    numbers = nhs.iter_999(999_000_000, step)
    start = dt.date(1935, 1, 1).toordinal()
    span = dt.date(2006, 12, 31).toordinal() - start
    for i in range(rows):
        client_id = f"HUB-{i + 1:07d}"
        g = rng.random()
        if g < 0.48:
            gender, given = rng.choice(["F", "Female"]), rng.choice(GIVEN_F)
        elif g < 0.96:
            gender, given = rng.choice(["M", "Male"]), rng.choice(GIVEN_M)
        elif g < 0.98:
            gender, given = "Non-binary", rng.choice(GIVEN_X)
        else:
            gender, given = "Prefer not to say", rng.choice(GIVEN_X + GIVEN_F + GIVEN_M)
        dob = uk_date(dt.date.fromordinal(start + rng.randrange(span)), rng)
        number = None if rng.random() < 0.2 else next(numbers, None)
        if number is None:
            nhs_value, verified = "", ""
        else:
            nhs_value, verified = nhs_text(number, rng), rng.choice(["Y", "N", "N"])
        if bad_rate and rng.random() < bad_rate:
            damage = rng.randrange(3)
            if damage == 0:
                nhs_value = "9.99E+09"  # lost digits
            elif damage == 1:
                base = number or "9990000018"
                nhs_value = nhs.invalid_999(int(base[:9]))  # fails Modulus 11
            else:
                dob = ""  # required field missing
        line2 = rng.choice(["", "", "", "Acomb", "Clifton", "Fulford", "Haxby", "Heworth"])
        if rng.random() < 0.05:
            line1 = f"Flat {rng.randrange(1, 20)}\n{rng.randrange(1, 200)} {rng.choice(STREETS)}"
        else:
            line1 = f"{rng.randrange(1, 200)} {rng.choice(STREETS)}"
        mobile = phone(rng, True) if rng.random() < 0.75 else ""
        home = phone(rng, False) if rng.random() < 0.35 else ""
        email = f"client{i + 1}@example.org" if rng.random() < 0.4 else ""
        family = rng.choice(FAMILY)
        yield client_id, [client_id, given, family, dob, gender, nhs_value, verified, line1, line2, "York",
                          postcode(rng), mobile, home, email, rng.choice(ETHNICITY), rng.choice(GP)]


def contacts(client_ids, per_person, seed):
    """Yield contact rows for the given client ids (an iterator), per_person each on average."""
    rng = random.Random(seed + 1)
    first = dt.datetime(2022, 1, 3, 9, 0)
    n = 0
    for client_id in client_ids:
        k = rng.randint(0, 2 * per_person) if per_person else 0
        when = first + dt.timedelta(days=rng.randrange(700))
        for _ in range(k):
            n += 1
            when += dt.timedelta(days=rng.randrange(3, 21))
            when = when.replace(hour=rng.randrange(9, 18), minute=rng.choice([0, 15, 30, 45]))
            ctype, method = rng.choice(CONTACT_TYPES)
            r = rng.random()
            attendance = "Attended" if r < 0.85 else ("DNA" if r < 0.95 else "Cancelled by client")
            minutes = str(rng.choice([20, 30, 45, 50, 60, 90])) if attendance == "Attended" else ""
            visible = "No" if rng.random() < 0.03 else "Yes"
            yield [f"C-{n:08d}", client_id, "", when.strftime("%d/%m/%Y %H:%M"), minutes, ctype, method, attendance,
                   visible, rng.choice(ROLES), rng.choice(NOTES)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, required=True, help="number of person rows")
    ap.add_argument("--out", required=True, help="output directory (created if missing)")
    ap.add_argument("--contacts-per-person", type=int, default=2, help="average contacts per person (0: none)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--bad-rate", type=float, default=0.0, help="share of person rows to damage (0..1)")
    ap.add_argument("--utf8", action="store_true", help="write both files as plain UTF-8 (no BOM)")
    args = ap.parse_args()
    if args.rows < 0:
        ap.error("--rows must be >= 0")
    os.makedirs(args.out, exist_ok=True)

    person_path = os.path.join(args.out, "person.csv")
    contact_path = os.path.join(args.out, "contact.csv")
    person_enc = "utf-8" if args.utf8 else "cp1252"
    contact_enc = "utf-8" if args.utf8 else "utf-8-sig"

    # Two passes over the same deterministic person stream: the first writes person.csv, the second
    # (ids only, regenerated) drives contact.csv, so nothing is kept in memory.
    n_people = 0
    with open(person_path, "w", encoding=person_enc, newline="") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(PERSON_HEADER)
        for _, row in people(args.rows, args.seed, args.bad_rate):
            w.writerow(row)
            n_people += 1

    n_contacts = 0
    with open(contact_path, "w", encoding=contact_enc, newline="") as f:
        w = csv.writer(f, lineterminator="\r\n")
        w.writerow(CONTACT_HEADER)
        ids = (cid for cid, _ in people(args.rows, args.seed, args.bad_rate))
        for row in contacts(ids, args.contacts_per_person, args.seed):
            w.writerow(row)
            n_contacts += 1

    print(f"{person_path}: {n_people} people; {contact_path}: {n_contacts} contacts", file=sys.stderr)


if __name__ == "__main__":
    main()
