"""Writes the York Mental Health Hub fixtures: tests/fixtures/hub/<kind>.csv.

    python3 scripts/gen-fixtures/hub_csv.py [--out tests/fixtures/hub]

The output is deterministic (no clock, no randomness), so re-running it gives byte-identical files.

person.csv is the deliberately messy one (see tests/fixtures/hub/README.md for every bad row):
Windows-1252, CRLF, a quoted field with an embedded newline, mixed d/m/yyyy and dd/mm/yyyy dates,
NHS numbers spaced / in Excel scientific notation / failing Modulus 11, phones that lost their leading
zero, a missing date of birth, an exact duplicate row and a row with an unquoted comma.
contact.csv is UTF-8 with a BOM and CRLF, with quoted multi-line notes. The rest are plain UTF-8 CSV.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from people import BY_SLUG  # noqa: E402
import nhs  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

PERSON_HEADER = ["Client ID", "Forename", "Surname", "Date of Birth", "Gender", "NHS Number", "NHS No. Verified",
                 "Address Line 1", "Address Line 2", "Town", "Postcode", "Mobile", "Home Phone", "Email",
                 "Ethnicity", "GP Practice"]

CLIENT_IDS = {
    "zoe": "HUB-1001", "sian": "HUB-1002", "mohammed": "HUB-1003", "daniel": "HUB-1004", "ewa": "HUB-1005",
    "connor": "HUB-1006", "priya": "HUB-1007", "alex": "HUB-1008", "margaret": "HUB-1009", "tom": "HUB-1010",
    "niamh": "HUB-1011", "liam": "HUB-1012", "grace": "HUB-1013", "jordan": "HUB-1014", "kevin": "HUB-1015",
}


def uk(iso, pad=True):
    y, m, d = iso.split("-")
    return f"{d}/{m}/{y}" if pad else f"{int(d)}/{int(m)}/{y}"


def spaced(n):
    return f"{n[:3]} {n[3:6]} {n[6:]}"


def phone_spaced(n):
    if n.startswith("07") or n.startswith("01632"):
        return f"{n[:5]} {n[5:]}"  # 07700 900123, 01632 960111
    return f"{n[:4]} {n[4:7]} {n[7:]}"  # 0113 496 0123


def quote(value):
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


def line(fields):
    return ",".join(quote(f) for f in fields)


def person_row(slug, *, dob=None, gender, nhs_text, verified, mobile=None, home=None, email=None, postcode=None,
               ethnicity, gp):
    p = BY_SLUG[slug]
    return [
        CLIENT_IDS[slug], p.given, p.family, uk(p.dob) if dob is None else dob, gender, nhs_text, verified,
        p.line1, p.line2 or "", p.town, p.postcode if postcode is None else postcode,
        mobile if mobile is not None else (phone_spaced(p.mobile) if p.mobile else ""),
        home if home is not None else (phone_spaced(p.home) if p.home else ""),
        email if email is not None else (p.email or ""), ethnicity, gp,
    ]


def person_lines():
    P = BY_SLUG
    rows = [
        # 1 Zoë: d/m/yyyy without padding (3 April 1987), spaced NHS number, verified, mobile lost its 0
        person_row("zoe", dob="3/4/1987", gender="F", nhs_text=spaced(P["zoe"].nhs), verified="Y",
                   mobile="7700900123", ethnicity="White - British", gp="Old Station Surgery"),
        # 2 Siân: dd/mm/yyyy (3 April 1990), no NHS number, lower-case postcode
        person_row("sian", gender="F", nhs_text="", verified="", postcode="yo10 5dd",
                   ethnicity="White - Any other White background", gp="Fishergate Health Centre"),
        # 3 Mohammed: NHS number in scientific notation that kept all ten digits, +44 mobile
        person_row("mohammed", gender="M", nhs_text="9.992115785E+09", verified="N", mobile="+44 7700 900345",
                   ethnicity="Asian or Asian British - Pakistani", gp="Clifton Medical Practice"),
        # 4 Liam: BAD, scientific notation that LOST digits (9.993E+09 = 9993000000, which even passes Mod 11)
        person_row("liam", gender="M", nhs_text="9.993E+09", verified="N", ethnicity="White - British",
                   gp="Old Station Surgery"),
        # 5 Daniel: home phone lost its 0, postcode without the space, verified
        person_row("daniel", gender="Male", nhs_text=P["daniel"].nhs, verified="Y", home="1134960456",
                   postcode="YO305GH", ethnicity="Black or Black British - African", gp="Clifton Medical Practice"),
        # 6 Ewa: address line 1 has an embedded newline (quoted field)
        person_row("ewa", gender="Female", nhs_text=spaced(P["ewa"].nhs), verified="N",
                   ethnicity="White - Any other White background", gp="Fishergate Health Centre"),
        # 7 Grace: BAD, NHS number fails Modulus 11
        person_row("grace", dob="2/9/1989", gender="F", nhs_text=spaced(nhs.invalid_999(int(P["grace"].nhs_stem))),
                   verified="N", ethnicity="Asian or Asian British - Chinese", gp="Haxby Road Surgery"),
        # 8 Connor: mobile without spaces
        person_row("connor", gender="M", nhs_text=P["connor"].nhs, verified="N", mobile="07700900567",
                   ethnicity="White - Irish", gp="Tang Hall Medical Centre"),
        # 9 Priya: no NHS number, home phone only
        person_row("priya", gender="F", nhs_text="", verified="", ethnicity="Asian or Asian British - Indian",
                   gp="Acomb Health Centre"),
        # 10 Jordan: BAD, date of birth empty (required)
        person_row("jordan", dob="", gender="M", nhs_text=P["jordan"].nhs, verified="N", ethnicity="Mixed - White and Black Caribbean",
                   gp="Old Station Surgery"),
        # 11 Alex: gender Non-binary -> other
        person_row("alex", dob="5/10/1999", gender="Non-binary", nhs_text=P["alex"].nhs, verified="N",
                   ethnicity="Not stated", gp="Heslington Health Centre"),
        # 12 Margaret: older client, landline only, verified
        person_row("margaret", gender="F", nhs_text=spaced(P["margaret"].nhs), verified="Y",
                   ethnicity="White - British", gp="Haxby Group Practice"),
    ]
    out = [line(PERSON_HEADER)] + [line(r) for r in rows]
    # 13 BAD: exact duplicate of Margaret's row (the report joined two result sets)
    out.append(line(rows[-1]))
    # 14 Tom
    out.append(line(person_row("tom", dob="11/7/1972", gender="M", nhs_text=spaced(P["tom"].nhs), verified="N",
                               ethnicity="White - British", gp="Gillygate Surgery")))
    # 15 Kevin: BAD, address "Flat 2, 14 Bootham" written WITHOUT quotes -> 17 fields for a 16-column header
    kevin = person_row("kevin", gender="M", nhs_text=P["kevin"].nhs, verified="N", ethnicity="White - British",
                       gp="Clifton Medical Practice")
    out.append(",".join(kevin))
    # 16 Niamh: Windows-1252 curly apostrophe in the surname, gender not stated, mixed-case e-mail
    out.append(line(person_row("niamh", gender="Prefer not to say", nhs_text=P["niamh"].nhs, verified="Y",
                               email="Niamh.OBrien@Example.org", ethnicity="White - Irish", gp="Gillygate Surgery")))
    return out


def carer_lines():
    header = ["Carer ID", "Client ID", "Carer Forename", "Carer Surname", "Relationship", "Carer Phone",
              "Lives With Client", "Consent to Contact Carer"]
    rows = [
        ["CR-01", "HUB-1001", "Susan", "Brontë", "Mother", "07700 900145", "No", "Yes"],
        ["CR-02", "HUB-1006", "David", "Walsh", "Father", "07700900156", "Yes", "Yes"],
        ["CR-03", "HUB-1009", "Peter", "Hughes", "Husband", "01632 960222", "Yes", "Yes"],
        ["CR-04", "HUB-1003", "Aisha", "Iqbal", "Wife", "07700 900167", "Yes", "No"],
        ["CR-05", "HUB-1005", "Kasia", "Nowak", "Friend", "7700900189", "No", "Yes"],
        # Kevin's person row is quarantined (row 15 of person.csv), so this carer cannot resolve its patient.
        ["CR-06", "HUB-1015", "Linda", "Marsh", "Wife", "07700 900178", "Yes", "Yes"],
        ["CR-07", "HUB-1004", "Chidi", "Okafor", "Son", "07700 900190", "No", "Yes"],
    ]
    return [line(header)] + [line(r) for r in rows]


def referral_lines():
    header = ["Referral ID", "Client ID", "Date Received", "Referral Source", "Referral Reason", "Service",
              "Status", "Date Closed", "Closure Reason"]
    rows = [
        ["REF-201", "HUB-1001", "01/03/2023", "Self", "Low mood and anxiety since a bereavement", "Hub Core Team", "Accepted", "", ""],
        ["REF-202", "HUB-1002", "15/03/2023", "GP", "Panic attacks, struggling to work", "Hub Core Team", "Accepted", "", ""],
        ["REF-203", "HUB-1003", "20/09/2023", "A&E Liaison", "Attended ED in crisis; needs community follow-up", "24/7 Centre", "Accepted", "", ""],
        ["REF-204", "HUB-1004", "02/10/2023", "Police", "Street triage: welfare concern, isolated since retirement", "Hub Core Team", "Accepted", "", ""],
        ["REF-205", "HUB-1005", "18/04/2023", "GP", "Housing worries, low mood, new to York", "Peer Support", "Closed", "30/11/2023", "Goals met"],
        ["REF-206", "HUB-1006", "01/06/2023", "Family or Friend", "Withdrawn, not attending college", "Hub Core Team", "Accepted", "", ""],
        ["REF-207", "HUB-1007", "10/01/2024", "VCSE Partner", "Loneliness after moving house", "Social Prescribing", "Accepted", "", ""],
        ["REF-208", "HUB-1008", "03/07/2023", "Self", "Anxiety, wants peer support", "Peer Support", "Accepted", "", ""],
        ["REF-209", "HUB-1009", "20/07/2023", "GP", "Low mood, caring responsibilities changed", "Hub Core Team", "Accepted", "", ""],
        ["REF-210", "HUB-1010", "05/12/2023", "VCSE Partner", "Debt and low mood", "Social Prescribing", "Accepted", "", ""],
        ["REF-211", "HUB-1011", "01/02/2024", "Self", "Stress, caring for a relative", "Hub Core Team", "Accepted", "", ""],
        ["REF-212", "HUB-1007", "12/06/2022", "GP", "Anxiety", "Hub Core Team", "Declined", "20/06/2022", "Needs met by talking therapies"],
    ]
    return [line(header)] + [line(r) for r in rows]


def episode_lines():
    header = ["Episode ID", "Client ID", "Referral ID", "Team", "Key Worker", "Start Date", "End Date", "Status",
              "End Reason"]
    rows = [
        ["EP-301", "HUB-1001", "REF-201", "Hub Core Team", "Sam Holt", "08/03/2023", "", "Open", ""],
        ["EP-302", "HUB-1002", "REF-202", "Hub Core Team", "Sam Holt", "20/03/2023", "", "Open", ""],
        ["EP-303", "HUB-1003", "REF-203", "24/7 Centre", "Jo Ellis", "21/09/2023", "", "Open", ""],
        ["EP-304", "HUB-1004", "REF-204", "Hub Core Team", "Jo Ellis", "03/10/2023", "", "Open", ""],
        ["EP-305", "HUB-1005", "REF-205", "Peer Support", "Ria Kaur", "25/04/2023", "30/11/2023", "Closed", "Goals met"],
        ["EP-306", "HUB-1006", "REF-206", "Hub Core Team", "Sam Holt", "05/06/2023", "", "Open", ""],
        ["EP-307", "HUB-1007", "REF-207", "Social Prescribing", "Lee Moss", "15/01/2024", "", "Open", ""],
        ["EP-308", "HUB-1008", "REF-208", "Peer Support", "Ria Kaur", "10/07/2023", "", "Open", ""],
        ["EP-309", "HUB-1009", "REF-209", "Hub Core Team", "Jo Ellis", "27/07/2023", "", "Open", ""],
        ["EP-310", "HUB-1010", "REF-210", "Social Prescribing", "Lee Moss", "07/12/2023", "", "Open", ""],
        ["EP-311", "HUB-1011", "REF-211", "Hub Core Team", "Sam Holt", "05/02/2024", "", "Open", ""],
    ]
    return [line(header)] + [line(r) for r in rows]


def contact_lines():
    header = ["Contact ID", "Client ID", "Episode ID", "Contact Date/Time", "Duration (mins)", "Contact Type",
              "Contact Method", "Attendance", "Patient Visible", "Worker Role", "Notes"]
    rows = [
        # Friday before the clock change of Sun 26 March 2023 (GMT, +00:00)
        ["C-5001", "HUB-1001", "EP-301", "24/03/2023 10:00", "60", "Welcoming Conversation", "Face to face", "Attended", "Yes", "Peer Supporter",
         "First meeting. Talked about what matters to her.\nAgreed 3 Hardest Things."],
        # Monday after the change (BST, +01:00)
        ["C-5002", "HUB-1001", "EP-301", "27/03/2023 10:00", "45", "1-2-1", "Face to face", "Attended", "Yes", "Mental Health Practitioner",
         "Reviewed sleep diary."],
        ["C-5003", "HUB-1002", "EP-302", "25/03/2023 11:00", "", "1-2-1", "Face to face", "DNA", "Yes", "Mental Health Practitioner", ""],
        # The day of the change itself, afternoon (already BST, +01:00)
        ["C-5004", "HUB-1002", "EP-302", "26/03/2023 14:30", "30", "Phone", "Telephone", "Attended", "Yes", "Mental Health Practitioner",
         'Rebooked after missed appointment. She said "it\'s been a hard week".'],
        # Either side of the end of BST on Sun 29 October 2023
        ["C-5005", "HUB-1003", "EP-303", "27/10/2023 15:00", "60", "1-2-1", "Face to face", "Attended", "Yes", "Recovery Worker", "Crisis plan drafted with him."],
        ["C-5006", "HUB-1003", "EP-303", "30/10/2023 15:00", "90", "Group", "Face to face", "Attended", "Yes", "Recovery Worker", "Men's group."],
        # Drop-in with no episode, on the morning the clocks went back (GMT, +00:00)
        ["C-5007", "HUB-1004", "", "29/10/2023 09:30", "20", "Drop-in", "Face to face", "Attended", "Yes", "Peer Supporter", ""],
        ["C-5008", "HUB-1005", "EP-305", "02/05/2023 13:00", "", "1-2-1", "Face to face", "DNA", "Yes", "Peer Supporter", "No answer on phone follow-up."],
        # Not for the patient: safeguarding note
        ["C-5009", "HUB-1005", "EP-305", "09/05/2023 13:00", "50", "1-2-1", "Face to face", "Attended", "No", "Peer Supporter",
         "Disclosed worries about ex-partner turning up at the flat.\r\nSafeguarding discussed with team lead; referral made.\r\nNOT for patient view."],
        ["C-5010", "HUB-1006", "EP-306", "14/06/2023 16:00", "40", "1-2-1", "Video", "Attended", "Yes", "Mental Health Practitioner", ""],
        # Not for the patient: third-party information from a family member
        ["C-5011", "HUB-1009", "EP-309", "01/08/2023 10:30", "60", "Welcoming Conversation", "Face to face", "Attended", "No", "Social Care Worker",
         "Husband shared, in confidence, concerns about his own health.\nThird-party information - do not share."],
        ["C-5012", "HUB-1010", "EP-310", "12/01/2024 11:00", "120", "Group", "Face to face", "Attended", "Yes", "Social Prescriber", "Walking group."],
        ["C-5013", "HUB-1011", "EP-311", "20/02/2024 09:15", "", "1-2-1", "Face to face", "Cancelled by client", "Yes", "Mental Health Practitioner", ""],
        # BAD: client HUB-1099 is not in person.csv at all (orphan)
        ["C-5014", "HUB-1099", "", "05/03/2024 14:00", "30", "Drop-in", "Face to face", "Attended", "Yes", "Peer Supporter", ""],
        # BAD (cascade): HUB-1012's person row is quarantined (lost NHS digits), so this cannot resolve
        ["C-5015", "HUB-1012", "", "07/03/2024 10:00", "30", "Drop-in", "Face to face", "Attended", "Yes", "Peer Supporter", ""],
        ["C-5016", "HUB-1007", "", "22/01/2024 12:00", "45", "Drop-in", "Face to face", "Attended", "Yes", "Social Prescriber", ""],
        ["C-5017", "HUB-1008", "EP-308", "18/07/2023 17:45", "25", "Phone", "Telephone", "Attended", "Yes", "Peer Supporter", ""],
        # 24/7 centre call at 01:30 on Sun 29 October 2023: the hour the clocks went back happens twice
        # (01:30 BST, then 01:30 GMT); the connector must pick one consistently (the first, +01:00).
        ["C-5018", "HUB-1003", "EP-303", "29/10/2023 01:30", "20", "Phone", "Telephone", "Attended", "Yes", "Mental Health Practitioner", "Night call to the 24/7 line."],
        # BAD: 01:30 on Sun 26 March 2023 never existed in the UK (clocks went from 01:00 to 02:00)
        ["C-5019", "HUB-1002", "EP-302", "26/03/2023 01:30", "15", "Phone", "Telephone", "Attended", "Yes", "Mental Health Practitioner", ""],
    ]
    return [line(header)] + [line(r) for r in rows]


def goals_lines():
    header = ["Plan ID", "Client ID", "Plan Date", "Hardest Thing 1", "Progress 1", "Hardest Thing 2", "Progress 2",
              "Hardest Thing 3", "Progress 3", "Last Reviewed"]
    rows = [
        ["GP-401", "HUB-1001", "24/03/2023", "Getting out of the house on my own", "Improving", "Sleeping through the night", "In progress",
         "Opening letters about debt", "No change", "27/06/2023"],
        ["GP-402", "HUB-1002", "26/03/2023", "Going back to work", "In progress", "Talking to my sister again", "Achieved", "", "", "30/06/2023"],
        ["GP-403", "HUB-1003", "27/10/2023", "Feeling safe at home", "Worse", "Managing money", "In progress", "Seeing my kids", "In progress", ""],
        ["GP-404", "HUB-1005", "09/05/2023", "Finding somewhere settled to live", "Achieved", "Making friends in York", "Improving",
         "Cooking proper meals", "Achieved", "30/11/2023"],
        ["GP-405", "HUB-1006", "14/06/2023", "Getting to college", "Not achieved", "Less gaming through the night", "", "", "", ""],
        ["GP-406", "HUB-1009", "01/08/2023", "Coping with being a carer", "No change", "Getting out to church again", "Improving",
         "Sleeping better", "In progress", "01/11/2023"],
    ]
    return [line(header)] + [line(r) for r in rows]


def reqol_lines():
    header = ["Measure ID", "Client ID", "Date Completed"] + [f"Q{i}" for i in range(1, 11)] + ["Completed With"]
    rows = [
        ["RQ-601", "HUB-1001", "24/03/2023", 1, 2, 1, 1, 2, 1, 0, 2, 1, 1, "Peer Supporter"],
        ["RQ-602", "HUB-1001", "27/06/2023", 3, 3, 2, 3, 3, 2, 2, 3, 3, 2, "Peer Supporter"],
        ["RQ-603", "HUB-1002", "26/03/2023", 2, 1, 2, 2, 1, 2, 2, 1, 2, 2, "Mental Health Practitioner"],
        ["RQ-604", "HUB-1003", "27/10/2023", 0, 1, 0, 1, 0, 1, 1, 0, 1, 0, "Recovery Worker"],
        ["RQ-605", "HUB-1005", "09/05/2023", 2, 2, 1, 2, 2, 1, 2, 2, 1, 2, "Peer Supporter"],
        ["RQ-606", "HUB-1005", "30/11/2023", 4, 3, 4, 3, 4, 3, 4, 4, 3, 4, "Peer Supporter"],
        # BAD: Q7 = 5, outside the 0-4 scale
        ["RQ-607", "HUB-1006", "14/06/2023", 2, 2, 2, 1, 2, 2, 5, 2, 1, 2, "Mental Health Practitioner"],
        ["RQ-608", "HUB-1009", "01/08/2023", 1, 1, 2, 1, 1, 2, 1, 1, 2, 1, "Social Care Worker"],
        ["RQ-609", "HUB-1010", "12/01/2024", 2, 3, 2, 2, 3, 2, 2, 3, 2, 2, "Social Prescriber"],
    ]
    return [line(header)] + [line([str(v) for v in r]) for r in rows]


def consent_lines():
    header = ["Consent ID", "Client ID", "Consent Date", "Share with Central Record", "Share with PKB",
              "Share with Partners", "Restrictions", "Consent Status", "Withdrawn Date"]
    rows = [
        ["CN-701", "HUB-1001", "24/03/2023", "Yes", "No", "York Mind", "", "Active", ""],
        ["CN-702", "HUB-1002", "20/03/2023", "Yes", "Yes", "", "", "Active", ""],
        ["CN-703", "HUB-1003", "21/09/2023", "Yes", "No", "Carers Centre", "No social care information", "Active", ""],
        ["CN-704", "HUB-1004", "03/10/2023", "Yes", "Yes", "York Mind; Carers Centre", "", "Active", ""],
        ["CN-705", "HUB-1005", "25/04/2023", "Yes", "Yes", "", "", "Withdrawn", "01/12/2023"],
        ["CN-706", "HUB-1006", "05/06/2023", "Yes", "No", "York Mind", "", "Active", ""],
        ["CN-707", "HUB-1007", "15/01/2024", "No", "No", "", "", "Declined", ""],
        ["CN-708", "HUB-1008", "10/07/2023", "Yes", "Yes", "", "No sexual health information", "Active", ""],
        ["CN-709", "HUB-1009", "27/07/2023", "Yes", "Yes", "", "No third-party information", "Active", ""],
        ["CN-710", "HUB-1010", "07/12/2023", "Yes", "No", "York Mind", "", "Active", ""],
        ["CN-711", "HUB-1011", "05/02/2024", "Yes", "Yes", "Carers Centre", "", "Active", ""],
    ]
    return [line(header)] + [line(r) for r in rows]


def write(path, lines, *, encoding="utf-8", newline="\n", bom=False):
    data = newline.join(lines) + newline
    raw = data.encode(encoding)
    if bom:
        raw = b"\xef\xbb\xbf" + raw
    with open(path, "wb") as f:
        f.write(raw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "hub"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    # Windows-1252 + CRLF; the embedded newline inside the quoted address stays a bare LF, as Excel writes it.
    write(os.path.join(args.out, "person.csv"), person_lines(), encoding="cp1252", newline="\r\n")
    write(os.path.join(args.out, "contact.csv"), contact_lines(), newline="\r\n", bom=True)
    write(os.path.join(args.out, "carer.csv"), carer_lines())
    write(os.path.join(args.out, "referral.csv"), referral_lines())
    write(os.path.join(args.out, "episode.csv"), episode_lines())
    write(os.path.join(args.out, "goals.csv"), goals_lines())
    write(os.path.join(args.out, "reqol.csv"), reqol_lines())
    write(os.path.join(args.out, "consent.csv"), consent_lines())


if __name__ == "__main__":
    main()
