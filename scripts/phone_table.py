#!/usr/bin/env python3
"""Builds services/common/testdata/phone_numbers.tsv: real-world spellings of numbers from
many countries with the E.164 that Google's libphonenumber (Python port `phonenumbers`)
gives for them, or INVALID. The Rust unit test checks crm-common::phone against it.

Usage: python3 scripts/phone_table.py > services/common/testdata/phone_numbers.tsv"""
import random
import phonenumbers as pn
from phonenumbers import CountryCodeSource, PhoneNumberFormat as F, PhoneNumberType as T

REGIONS = ["US", "CA", "GB", "IE", "DE", "FR", "ES", "IT", "NL", "CH", "SE", "PL",
           "IN", "JP", "AU", "SG", "BR", "MX", "ZA", "NG"]

def oracle(raw, region):
    try:
        # As crm-sync does (DESIGN §3): input already carrying +CC is read without a region.
        n = pn.parse(raw, None if raw.strip().startswith("+") else region)
    except pn.NumberParseException:
        return "INVALID"
    return pn.format_number(n, F.E164) if pn.is_valid_number(n) else "INVALID"

rows = []
def add(raw, region, note):
    rows.append((raw, region, oracle(raw, region), note))

for r in REGIONS:
    for kind, t in (("fixed", T.FIXED_LINE), ("mobile", T.MOBILE)):
        n = pn.example_number_for_type(r, t)
        if n is None:
            continue
        nat = pn.format_number(n, F.NATIONAL)
        intl = pn.format_number(n, F.INTERNATIONAL)
        e164 = pn.format_number(n, F.E164)
        add(nat, r, f"{r} {kind} national")
        add(intl, r, f"{r} {kind} international")
        add(e164, "US" if r != "US" else "GB", f"{r} {kind} E.164 with another region's hint")
        add(nat.replace(" ", "-").replace("(", "").replace(")", ""), r, f"{r} {kind} dashed")
        add(" " + nat.replace(" ", ".") + " ", r, f"{r} {kind} dotted, padded")
        add("00" + e164[1:], "GB" if r != "GB" else "DE", f"{r} {kind} 00 international prefix")
        add(pn.format_number(n, F.RFC3966), r, f"{r} {kind} tel: URI")
        if kind == "fixed":
            add(intl.replace("+", "+ ("), r, f"{r} {kind} odd punctuation")

# Things people and PBXs really send.
add("(415) 555-2671", "US", "US parens")
add("1-415-555-2671", "US", "US leading 1")
add("+1 (415) 555-2671 ext. 12", "US", "US with extension")
add("011 44 20 7946 0958", "US", "US IDD to GB")
add("+44 (0)20 7946 0958", "US", "GB with (0) trunk in international form, US hint")
add("020 7946 0958", "GB", "GB London national")
add("07700 900123", "GB", "GB mobile national")
add("+49 (0)30 901820", "DE", "DE with (0)")
add("030 901820", "DE", "DE Berlin national")
add("0612345678", "NL", "NL mobile compact")
add("+33 6 12 34 56 78", "US", "FR mobile, US hint")
add("06 12 34 56 78", "FR", "FR mobile national")
add("+61 2 1234 5678", "AU", "AU Sydney")
add("0412 345 678", "AU", "AU mobile national")
add("+91 98765 43210", "IN", "IN mobile")
add("098765 43210", "IN", "IN mobile trunk 0")
add("+81 3-1234-5678", "JP", "JP Tokyo")
add("(11) 96123-4567", "BR", "BR São Paulo mobile")
add("+52 55 1234 5678", "MX", "MX CDMX")
# Country codes written without '+': libphonenumber (maybeExtractCountryCode) strips the
# region's own country code from a nationally written number only when the rest, after any
# national prefix, matches the region's national-number pattern and the whole does not, or
# when the whole is too long for the region. Numbers whose own digits start with the
# country code stay national. Cases generated here for every region, both ways.
rnd = random.Random(20)
for r in REGIONS:
    cc = str(pn.country_code_for_region(r))
    kept, stripped = [], []
    for length in range(len(cc) + 4, 16):
        for _ in range(300):
            full = cc + "".join(rnd.choice("0123456789") for _ in range(length - len(cc)))
            try:
                n = pn.parse(full, r, keep_raw_input=True)
            except pn.NumberParseException:
                continue
            if not pn.is_valid_number(n):
                continue
            (kept if n.country_code_source == CountryCodeSource.FROM_DEFAULT_COUNTRY else stripped).append(full)
    for full in rnd.sample(kept, min(5, len(kept))):
        add(full, r, f"{r} national number starting with its country code {cc}")
    for full in rnd.sample(stripped, min(3, len(stripped))):
        add(full, r, f"{r} country code {cc} without '+'")

# Not numbers, or not valid ones.
for raw, region, note in [
    ("", "US", "empty"), ("   ", "US", "blank"), ("anonymous", "US", "withheld caller"),
    ("12345", "US", "too short"), ("+1 555 0100", "US", "US too short"),
    ("+999 123 456 789", "US", "unassigned country code"), ("+44 20 7946 09581234", "GB", "too long"),
    ("0000000000", "US", "zeros"), ("+1 (000) 000-0000", "US", "zeros international"),
    ("555-0100", "US", "US local without area code"), ("+", "US", "bare plus"),
    ("tel:", "US", "empty tel URI"), ("12 34", "ZZ", "unknown region"),
]:
    add(raw, region, note)

print("# input\tregion\texpected\tnote")
for raw, region, exp, note in rows:
    assert "\t" not in raw
    print(f"{raw}\t{region}\t{exp}\t{note}")
