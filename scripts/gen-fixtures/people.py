"""The synthetic people behind every partner's fixtures.

Nobody here is real. NHS numbers are in the 999 range and are COMPUTED from a nine-digit stem with the
Modulus 11 check (nhs.from_nine); the module refuses to load if a stem cannot form a valid number.
Phone numbers come from Ofcom's drama ranges (07700 900xxx, 0113 496 0xxx, 01632 960xxx); e-mail
addresses use example.org / example.com; addresses are made up, with York-shaped postcodes.

Some people are clients of more than one partner (same NHS number): that is what the partnership is for.
The `at` set of each person says where they appear; partner-specific detail (ids, formats, damage) lives in
each partner's generator.
"""

from dataclasses import dataclass, field

import nhs


@dataclass(frozen=True)
class Person:
    slug: str
    given: str
    family: str
    dob: str  # ISO yyyy-mm-dd
    gender: str  # male | female | other | unknown (FHIR); partners spell it their own way
    nhs_stem: str | None  # first nine digits; None = no NHS number known anywhere
    line1: str
    line2: str | None
    town: str
    postcode: str
    mobile: str | None  # national format, 11 digits
    home: str | None
    email: str | None
    at: frozenset = field(default_factory=frozenset)

    @property
    def nhs(self):
        return nhs.from_nine(self.nhs_stem) if self.nhs_stem else None


def _p(slug, given, family, dob, gender, stem, line1, line2, town, postcode, mobile, home, email, at):
    return Person(slug, given, family, dob, gender, stem, line1, line2, town, postcode, mobile, home, email,
                  frozenset(at.split()))


PEOPLE = [
    # Clients of the Hub (some also elsewhere)
    _p("zoe", "Zoë", "Brontë", "1987-04-03", "female", "999012340", "12 Bishopthorpe Road", None, "York",
       "YO23 1JJ", "07700900123", None, "zoe.bronte@example.org", "hub york-mind"),
    _p("sian", "Siân", "Roberts", "1990-04-03", "female", None, "4 Heslington Lane", "Fulford", "York",
       "YO10 5DD", "07700900234", None, None, "hub"),
    _p("mohammed", "Mohammed", "Iqbal", "1979-11-17", "male", "999211578", "58 Burton Stone Lane", None,
       "York", "YO30 6BU", "07700900345", "01134960123", None, "hub carers-centre"),
    _p("daniel", "Daniel", "Okafor", "1958-08-22", "male", "999300146", "7 Water End", "Clifton", "York",
       "YO30 5GH", None, "01134960456", "d.okafor@example.com", "hub york-mind carers-centre"),
    _p("ewa", "Ewa", "Kowalska", "1995-12-09", "female", "999402613", "Flat 3\nRiverside Court", "Skeldergate",
       "York", "YO1 6DH", "07700900456", None, None, "hub"),
    _p("connor", "Connor", "Walsh", "2001-06-30", "male", "999515830", "21 Tang Hall Lane", None, "York",
       "YO31 0RX", "07700900567", None, "connor.walsh@example.org", "hub york-mind"),
    _p("priya", "Priya", "Sharma", "1984-02-14", "female", None, "33 Front Street", "Acomb", "York",
       "YO24 3BW", None, "01632960111", None, "hub"),
    _p("alex", "Alex", "Turner", "1999-10-05", "other", "999620019", "9 Hull Road", None, "York", "YO10 3JL",
       "07700900678", None, "alex.t@example.com", "hub"),
    _p("margaret", "Margaret", "Hughes", "1952-01-28", "female", "999731552", "2 Main Street", "Haxby",
       "York", "YO32 3HT", None, "01632960222", None, "hub"),
    _p("tom", "Tom", "Bennett", "1972-07-11", "male", "999846201", "41 Gillygate", None, "York", "YO31 7EA",
       "07700900789", None, None, "hub york-mind"),
    _p("niamh", "Niamh", "O’Brien", "1968-03-19", "unknown", "999903317", "16 Lowther Street", None, "York",
       "YO31 7LZ", "07700900890", "01632960333", "niamh.obrien@example.org", "hub carers-centre"),
    # Hub rows that must be quarantined (stems used for the damaged / missing values)
    _p("liam", "Liam", "Foster", "1993-05-21", "male", "999312874", "5 Nunnery Lane", None, "York", "YO23 1AB",
       "07700900901", None, None, "hub"),
    _p("grace", "Grace", "Lee", "1989-09-02", "female", "999433870", "88 Haxby Road", None, "York", "YO31 8JN",
       "07700900912", None, None, "hub"),
    _p("jordan", "Jordan", "Price", "2003-01-15", "male", "999157724", "3 Walmgate", None, "York", "YO1 9TX",
       "07700900923", None, None, "hub"),
    _p("kevin", "Kevin", "Marsh", "1966-10-30", "male", "999268405", "Flat 2, 14 Bootham", None, "York",
       "YO30 7BW", None, "01134960789", None, "hub"),
    # York Mind only
    _p("hannah", "Hannah", "Clarke", "1997-08-08", "female", "999377031", "27 Lawrence Street", None, "York",
       "YO10 3BP", "07700900101", None, "hannah.clarke@example.com", "york-mind"),
    _p("ravi", "Ravi", "Patel", "1981-12-24", "male", "999488169", "10 Poppleton Road", None, "York",
       "YO26 4UW", "07700900112", None, None, "york-mind"),
    _p("sophie", "Sophie", "Ward", "2000-02-29", "female", None, "6 Holgate Road", None, "York", "YO24 4AB",
       "07700900131", None, "sophie.ward@example.org", "york-mind"),
    _p("jamal", "Jamal", "Hussain", "1975-06-01", "male", "999559046", "19 Huntington Road", None, "York",
       "YO31 8RL", None, "01134960222", None, "york-mind"),
    # Carers' Centre only (several are carers of Hub clients: see hub carer.csv)
    _p("susan", "Susan", "Brontë", "1961-09-14", "female", "999664273", "12 Bishopthorpe Road", None, "York",
       "YO23 1JJ", "07700900145", None, None, "carers-centre"),
    _p("david", "David", "Walsh", "1970-04-27", "male", "999775388", "21 Tang Hall Lane", None, "York",
       "YO31 0RX", "07700900156", None, None, "carers-centre"),
    _p("peter", "Peter", "Hughes", "1949-11-03", "male", "999886942", "2 Main Street", "Haxby", "York",
       "YO32 3HT", None, "01632960222", None, "carers-centre"),
    _p("aisha", "Aisha", "Iqbal", "1982-03-09", "female", "999990127", "58 Burton Stone Lane", None, "York",
       "YO30 6BU", "07700900167", None, "aisha.iqbal@example.com", "carers-centre"),
    _p("linda", "Linda", "Marsh", "1967-07-19", "female", None, "Flat 2, 14 Bootham", None, "York", "YO30 7BW",
       "07700900178", None, None, "carers-centre"),
]

BY_SLUG = {p.slug: p for p in PEOPLE}

for _p_ in PEOPLE:
    if _p_.nhs_stem and _p_.nhs is None:
        raise SystemExit(f"{_p_.slug}: stem {_p_.nhs_stem} cannot form a valid NHS number")


def shared():
    """NHS number -> partners, for people known to more than one partner."""
    out = {}
    for p in PEOPLE:
        if p.nhs and len(p.at) > 1:
            out[p.nhs] = (p.given + " " + p.family, sorted(p.at))
    return out


if __name__ == "__main__":
    for p in PEOPLE:
        print(f"{p.slug:10} {p.nhs or '-':12} {' '.join(sorted(p.at))}")
    print("shared:", shared())
