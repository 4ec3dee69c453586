"""NHS number helpers for synthetic test data.

Test data uses only the 999 range (999 000 000 0 .. 999 999 999 9), which is never issued to real people.
The check digit is Modulus 11: weights 10..2 on the first nine digits, check = 11 - (sum mod 11);
11 means 0 and 10 means the nine digits cannot form a valid number (skip them).

    python3 scripts/gen-fixtures/nhs.py --count 5 --start 9990000000   # print valid numbers
    python3 scripts/gen-fixtures/nhs.py --check 9990000018              # check one
"""

import argparse


def check_digit(first_nine: str):
    """The Modulus 11 check digit for nine digits, or None when they cannot form a valid number."""
    if len(first_nine) != 9 or not first_nine.isdigit():
        raise ValueError(f"need nine digits, got {first_nine!r}")
    total = sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1)))
    check = 11 - (total % 11)
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid(number: str) -> bool:
    digits = number.replace(" ", "").replace("-", "")
    if len(digits) != 10 or not digits.isdigit():
        return False
    check = check_digit(digits[:9])
    return check is not None and check == int(digits[9])


def from_nine(first_nine: str):
    """The full ten-digit number for nine digits, or None when the check digit would be 10."""
    check = check_digit(first_nine)
    return None if check is None else first_nine + str(check)


def iter_999(start_stem: int = 999_000_000, step: int = 1):
    """Yield valid NHS numbers from a nine-digit stem upwards, `step` stems apart (skipping invalid ones)."""
    stem = start_stem
    while stem <= 999_999_999:
        full = from_nine(str(stem))
        if full is not None:
            yield full
        stem += step


def invalid_999(start_stem: int) -> str:
    """A ten-digit 999 number that FAILS Modulus 11 (wrong last digit), for quarantine tests."""
    stem = start_stem
    while True:
        check = check_digit(str(stem))
        if check is not None:
            return str(stem) + str((check + 1) % 10)
        stem += 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--start", type=int, default=9990000000, help="ten-digit start (the last digit is ignored)")
    ap.add_argument("--check", help="check one number")
    args = ap.parse_args()
    if args.check:
        print(args.check, "valid" if is_valid(args.check) else "INVALID")
    else:
        gen = iter_999(args.start // 10)
        for _ in range(args.count):
            print(next(gen))
