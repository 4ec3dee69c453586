"""Writes the Carers' Centre fixtures: tests/fixtures/carers-centre/<kind>.xlsx.

    pip install openpyxl
    python3 scripts/gen-fixtures/carers_centre_xlsx.py [--out tests/fixtures/carers-centre]

Shaped like a Lamplight report saved as a spreadsheet: one named sheet per file, column names unlike the
Hub's ("Forename", "D.O.B.", "NHS No.", "Post Code"), dates as real Excel date cells, and the cells Excel
turns into numbers: the Lamplight ID, the NHS number and phone numbers (which so lose their leading zero).
The output is byte-for-byte reproducible (fixed document dates and zip timestamps).
"""

import argparse
import datetime as dt
import io
import os
import re
import sys
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from people import BY_SLUG  # noqa: E402

try:
    from openpyxl import Workbook
    from openpyxl.styles import Font
except ImportError:  # pragma: no cover
    raise SystemExit("openpyxl is needed: pip install openpyxl")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIXED = dt.datetime(2024, 3, 1, 9, 0, 0)

LAMPLIGHT_IDS = {"susan": 10231, "david": 10232, "peter": 10233, "aisha": 10234, "linda": 10235,
                 "mohammed": 10236, "daniel": 10237, "niamh": 10238}

GENDER = {"male": "Male", "female": "Female", "other": "Other", "unknown": "Not known"}

DATE = "dd/mm/yyyy"
DATETIME = "dd/mm/yyyy hh:mm"


def d(iso):
    return dt.date.fromisoformat(iso)


def phone_cell(n):
    """What Excel keeps of a typed phone number: an integer without the leading zero."""
    return int(n) if n else None


def sheet(wb, title, header, rows, formats):
    ws = wb.create_sheet(title)
    ws.append(header)
    for cell in ws[1]:
        cell.font = Font(bold=True)
    for row in rows:
        ws.append(row)
    for col, fmt in formats.items():
        idx = header.index(col) + 1
        for r in range(2, ws.max_row + 1):
            ws.cell(row=r, column=idx).number_format = fmt
    for i, h in enumerate(header, start=1):
        ws.column_dimensions[ws.cell(row=1, column=i).column_letter].width = max(12, len(h) + 2)
    return ws


def clients():
    header = ["Lamplight ID", "Forename", "Surname", "D.O.B.", "Gender", "NHS No.", "Address 1", "Address 2",
              "Town/City", "Post Code", "Mobile No.", "Tel No.", "Email", "Caring For", "Date Registered"]
    caring = {
        "susan": ("Daughter (mental health)", "2023-04-11"),
        "david": ("Son (mental health)", "2023-06-20"),
        "peter": ("Wife (mental health, mobility)", "2023-08-14"),
        "aisha": ("Husband (mental health)", "2023-10-02"),
        "linda": ("Husband (mental health)", "2022-11-30"),
        "mohammed": ("Mother (dementia)", "2021-05-17"),
        "daniel": ("Brother (learning disability)", "2019-09-09"),
        "niamh": ("Brother (alcohol, mental health)", "2024-02-19"),
    }
    rows = []
    for slug, lamplight_id in LAMPLIGHT_IDS.items():
        p = BY_SLUG[slug]
        rows.append([
            lamplight_id, p.given, p.family, d(p.dob), GENDER[p.gender],
            int(p.nhs) if p.nhs else None,
            p.line1.replace("\n", ", "), p.line2, p.town,
            # one postcode typed in lower case without the space, as people do
            p.postcode.replace(" ", "").lower() if slug == "peter" else p.postcode,
            phone_cell(p.mobile), phone_cell(p.home), p.email, caring[slug][0], d(caring[slug][1]),
        ])
    return header, rows, {"D.O.B.": DATE, "Date Registered": DATE, "NHS No.": "0", "Mobile No.": "0", "Tel No.": "0"}


def referrals():
    header = ["Referral Ref", "Lamplight ID", "Date Received", "Referred By", "Reason", "Service", "Status"]
    L = LAMPLIGHT_IDS
    rows = [
        ["CC-R-0101", L["susan"], d("2023-04-11"), "York Mental Health Hub", "Caring for daughter in crisis", "Carer Support", "Open"],
        ["CC-R-0102", L["david"], d("2023-06-20"), "York Mental Health Hub", "Father of young adult using the Hub", "Carer Support", "Open"],
        ["CC-R-0103", L["peter"], d("2023-08-14"), "GP", "Carer strain", "Carer Support", "Open"],
        ["CC-R-0104", L["aisha"], d("2023-10-02"), "Self", "Needs a break from caring", "Carers Breaks", "Open"],
        ["CC-R-0105", L["linda"], d("2022-11-30"), "Adult Social Care", "Carer's assessment follow-up", "Carer Support", "Closed"],
        ["CC-R-0106", L["mohammed"], d("2021-05-17"), "Self", "Caring for mother with dementia", "Carer Support", "Open"],
        ["CC-R-0107", L["daniel"], d("2019-09-09"), "Adult Social Care", "Long-term carer for brother", "Carer Support", "Open"],
        ["CC-R-0108", L["niamh"], d("2024-02-19"), "York Mental Health Hub", "Stress of caring", "Carer Support", "Open"],
    ]
    return header, rows, {"Date Received": DATE}


def work_records():
    header = ["Record ID", "Lamplight ID", "Date", "Duration (mins)", "Work Type", "Method", "Attended",
              "Visible to Client", "Summary"]
    L = LAMPLIGHT_IDS
    t = dt.datetime
    rows = [
        [4001, L["susan"], t(2023, 4, 18, 10, 0), 60, "Welcoming conversation", "Face to face", "Yes", "Yes", "Carer's story; what would help."],
        [4002, L["susan"], t(2023, 5, 2, 10, 0), 45, "1-2-1", "Face to face", "Yes", "Yes", "Carer's emergency plan."],
        [4003, L["david"], t(2023, 6, 27, 18, 30), 90, "Group", "Face to face", "Yes", "Yes", "Dads' group."],
        # Either side of the start of BST on Sun 26 March 2023 (Mohammed, long-standing client)
        [4004, L["mohammed"], t(2023, 3, 24, 14, 0), 30, "Phone call", "Telephone", "Yes", "Yes", ""],
        [4005, L["mohammed"], t(2023, 3, 27, 14, 0), None, "Phone call", "Telephone", "No", "Yes", "No answer."],
        [4006, L["peter"], t(2023, 8, 21, 11, 0), 60, "1-2-1", "Face to face", "Yes", "Yes", "Carer's assessment."],
        # Not for the client: third-party information about the person cared for
        [4007, L["aisha"], t(2023, 10, 9, 13, 0), 50, "1-2-1", "Video", "Yes", "No",
         "Talked about husband's recent crisis and police involvement.\nThird-party information."],
        [4008, L["daniel"], t(2023, 10, 30, 10, 0), 40, "1-2-1", "Face to face", "Yes", "Yes", ""],
        [4009, L["niamh"], t(2024, 2, 26, 15, 15), None, "Welcoming conversation", "Face to face", "No", "Yes", "Did not attend; sent a letter."],
    ]
    return header, rows, {"Date": DATETIME}


def consents():
    header = ["Consent ID", "Lamplight ID", "Date Given", "Share with Cito", "Share with PKB",
              "Share with partners", "Restrictions", "Status", "Date Withdrawn"]
    L = LAMPLIGHT_IDS
    rows = [
        [501, L["susan"], d("2023-04-11"), "Yes", "No", "York Mental Health Hub", None, "Active", None],
        [502, L["david"], d("2023-06-20"), "Yes", "Yes", "York Mental Health Hub", None, "Active", None],
        [503, L["peter"], d("2023-08-14"), "Yes", "No", None, "No social care information", "Active", None],
        [504, L["aisha"], d("2023-10-02"), "Yes", "No", None, "No third-party information", "Active", None],
        [505, L["linda"], d("2022-11-30"), "Yes", "Yes", None, None, "Withdrawn", d("2023-06-30")],
        [506, L["mohammed"], d("2021-05-17"), "Yes", "Yes", "York Mental Health Hub", None, "Active", None],
        [507, L["daniel"], d("2019-09-09"), "No", "No", None, None, "Declined", None],
        [508, L["niamh"], d("2024-02-19"), "Yes", "No", "York Mental Health Hub", None, "Active", None],
    ]
    return header, rows, {"Date Given": DATE, "Date Withdrawn": DATE}


def save(wb, path):
    """Save with fixed timestamps so the file is reproducible."""
    wb.properties.creator = "Lamplight report"
    wb.properties.lastModifiedBy = "Lamplight report"
    wb.properties.created = FIXED
    wb.properties.modified = FIXED
    buf = io.BytesIO()
    wb.save(buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                # openpyxl stamps "modified" with the time of saving; pin it.
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)",
                              rb"\g<1>" + FIXED.strftime("%Y-%m-%dT%H:%M:%SZ").encode() + rb"\g<2>", data)
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED.timetuple()[:6])
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o600 << 16
            dst.writestr(fixed, data)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "carers-centre"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for kind, title, build in [
        ("person", "Clients", clients),
        ("referral", "Referrals", referrals),
        ("contact", "Work Records", work_records),
        ("consent", "Consent", consents),
    ]:
        wb = Workbook()
        wb.remove(wb.active)
        # A cover sheet first, as Lamplight reports have, so the mapping must name its sheet.
        cover = wb.create_sheet("Report")
        cover.append(["Report", f"{title} export"])
        cover.append(["Run on", FIXED])
        cover["B2"].number_format = DATETIME
        header, rows, formats = build()
        sheet(wb, title, header, rows, formats)
        save(wb, os.path.join(args.out, f"{kind}.xlsx"))


if __name__ == "__main__":
    main()
