"""The offline PII/secret detectors (tollway.core.guardrails.detectors): positives per detector,
a published false-positive corpus that must produce no finding, overlap resolution and masking."""
from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.timing import cpu_best
from tollway.core.guardrails.detectors import ALL, Finding, find, iban_ok, luhn_ok, mask

GH_CLASSIC = "ghp_" + "A1b2C3d4E5f6G7h8I9j0" + "K1l2M3n4O5p6Q7r8"  # 36 after the prefix
JWT = ".".join(
    base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
    for part in ({"alg": "HS256", "typ": "JWT"}, {"sub": "1234567890", "name": "Jane"})
) + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
    "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQJAIJLixBy2qpFoS4DSmoEm\n"
    "-----END RSA PRIVATE KEY-----"
)

POSITIVES: dict[str, list[str]] = {
    "email": ["jane.doe@example.com", "j+tag@mail.example.co.uk", "first_last-99@sub.domain.io", "A.B%x@EXAMPLE.ORG"],
    "phone": ["+1 (555) 123-4567", "+44 20 7946 0958", "+49 30 901820", "+33 1 23 45 67 89", "+15551234567",
              "+1-555-123-4567", "(555) 123-4567", "555-123-4567", "555.123.4567", "+81 3-1234-5678"],
    "credit_card": ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5500 0000 0000 0004",
                    "378282246310005", "3782 822463 10005", "6011111111111117", "3530111333300000",
                    "5555555555554444", "2223003122003222", "4222222222222", "6011 0009 9013 9424"],
    "iban": ["GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432", "DE89 3704 0044 0532 0130 00",
             "DE89370400440532013000", "FR1420041010050500013M02606", "NL91ABNA0417164300", "BE68539007547034",
             "CH9300762011623852957", "ES9121000418450200051332", "IT60X0542811101000000123456", "NO9386011117947",
             "AT611904300234573201", "PL61109010140000071219812874", "MT84MALT011000012345MTLCAST001S"],
    "us_ssn": ["123-45-6789", "123 45 6789", "001-01-0001", "665-12-3456", "899-99-9999"],
    "ip_address": ["192.168.0.1", "10.0.0.1", "8.8.8.8", "255.255.255.255", "2001:db8::1",
                   "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "fe80::1ff:fe23:4567:890a", "::ffff:192.0.2.1"],
    "secret": ["sk-proj-abc123DEF456ghi789JKL012mno", "sk-ant-api03-" + "aB3" * 30, "sk-" + "Z9y8" * 12,
               "AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A", GH_CLASSIC, "gho_" + "x" * 35 + "9",
               "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcde",
               JWT, PEM, "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"],
}

CONTEXTS = ["{}", "value: {}", "see ({}).", "«{}»", "first line\n{}\nlast line", "\"{}\","]

# Nothing in here is PII or a secret (under the rules in detectors.py); every line must be clean.
FALSE_POSITIVES = [
    # versions
    "version: 1.2.3.4", "version 1.2.3.4", "v1.2.3.4", "release 10.0.0.1 notes", "python-3.11.2.1",
    "1.2.3.4.5", "node 18.17.1", "build 2024.01.15.3", "ver. 4.3.2.1",
    # timestamps and dates
    "2024-01-15T10:30:00Z", "2024-01-15 10:30:00.123456", "1700000000", "1700000000000", "1700000000000000000",
    "12:30:45", "Mon, 15 Jan 2024 10:30:00 GMT", "20240115103000", "2024/01/15", "15.01.2024",
    # hashes, ids, uuids
    "3f786850e387550fdab836ed7e6dc881de23001b", "commit a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
    "d41d8cd98f00b204e9800998ecf8427e", "123e4567-e89b-12d3-a456-426614174000",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "deadbeefcafebabe0123456789abcdef",
    "order 12345678901234567890", "id 98765432109876543210987", "tracking 1Z999AA10123456784",
    "#4111111111111111", "ref 4111111111111112", "4111 1111 1111 1112", "1234 5678 9012 3456", "0000 0000 0000 0000",
    "4111 1111 1111 1111 2222", "9111111111111111", "4111111111111111111111",
    # prices and amounts
    "$1,299.99", "€ 4.111.111,11", "USD 1,234,567.89", "+5.2%", "-3.75", "1e10", "3.14159265358979",
    # phone-like but not phones
    "555-1234", "123-456-7890", "call 5551234567", "2024 555 1234", "1-2-3-4", "(123) 456-7890", "x-555-123-4567",
    "+1 23", "page 12-34-5678",
    # SSN-like
    "000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000", "078-05-1120", "123456789",
    "123-45 6789",
    # IPs that are not
    "256.1.1.1", "1.2.3", "01.02.03.04", "10.0.0.256", "00:1A:2B:3C:4D:5E", "::1", "std::vector<int>", "a::b::c",
    "12:34:56:78", "fe80:::1",
    # IBAN-like
    "GB82 WEST 1234 5698 7654 33", "DE89370400440532013001", "XX82WEST12345698765432", "GB82WEST1234569876543",
    # secrets-like
    "sk-learn", "task-1234567890abcdefghijklmnop", "sk-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "AKIA1234",
    "AKIAIOSFODNN7EXAMPL", "ghp_short", "github_pat_short", "-----BEGIN PUBLIC KEY-----\nMIIBIjANBg\n-----END PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----", "eyJhbGciOiJIUzI1NiJ9", "eyJub3RhbGciOjF9.eyJzdWIiOjF9.c2ln",
    "aGVsbG8gd29ybGQgdGhpcyBpcyBhIGJhc2U2NCBibG9i", "QUtJQUlPU0ZPRE5ON0VYQU1QTEU=",
    # emails that are not
    "user@localhost", "@mention", "a@b", "john..doe@example", "email me @ example.com", "foo@bar.c",
    # prose
    "The quick brown fox jumps over the lazy dog 3 times in 2024.", "Section 4.2.1 (see p. 12)",
]


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("detector,value", [(d, v) for d, vs in POSITIVES.items() for v in vs])
def test_positive(detector: str, value: str, context: str) -> None:
    text = context.format(value)
    start = text.index(value)
    assert find(text) == [Finding(start, start + len(value), detector)]
    assert find(text, [detector]) == [Finding(start, start + len(value), detector)]
    masked = mask(text, find(text))
    assert masked == context.format("<%s>" % detector.upper())
    assert value not in masked


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_false_positive_corpus(text: str) -> None:
    assert find(text) == []
    assert find("some text " + text + " more text") == []


def test_corpus_sizes() -> None:
    assert sum(len(v) for v in POSITIVES.values()) >= 60
    assert len(FALSE_POSITIVES) >= 80
    assert set(POSITIVES) == set(ALL)


def test_validators() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
    assert not iban_ok("GB82WEST1234569876543")  # wrong length for GB


def _luhn_textbook(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


@given(st.text(alphabet="0123456789", max_size=25))
def test_luhn_is_the_textbook_checksum(digits: str) -> None:
    assert luhn_ok(digits) is _luhn_textbook(digits)


def test_boundaries_keep_numbers_whole() -> None:
    # a longer digit run is never searched for a valid 16-digit card inside it
    assert find("x 94111111111111111 y") == []
    assert find("4111111111111111a") == []
    # a port after an IPv4 is fine, a fifth dotted part is not
    assert find("10.0.0.1:8080") == [Finding(0, 8, "ip_address")]
    assert find("10.0.0.1.2") == []
    # SSN only with separators, never bare 9 digits
    assert find("ssn 123456789") == []


def test_several_and_sorted() -> None:
    text = "a@b.co, 4111 1111 1111 1111; ip 8.8.8.8, key AKIAIOSFODNN7EXAMPLE"
    found = find(text)
    assert [f.detector for f in found] == ["email", "credit_card", "ip_address", "secret"]
    assert mask(text, found) == "<EMAIL>, <CREDIT_CARD>; ip <IP_ADDRESS>, key <SECRET>"
    assert find(text, ["ip_address"]) == [found[2]]
    assert find(text, []) == []


def test_overlap_earlier_and_longer_wins() -> None:
    # the email's local part looks like a phone number; the email starts earlier and wins
    text = "555-123-4567@example.com"
    assert find(text) == [Finding(0, len(text), "email")]
    # a JWT contains no other finding
    assert [f.detector for f in find("t=" + JWT)] == ["secret"]


def test_unknown_detector() -> None:
    with pytest.raises(ValueError):
        find("x", ["email", "nope"])


def test_pem_without_end_is_capped() -> None:
    body = ("MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n" * 200)
    text = "-----BEGIN PRIVATE KEY-----\n" + body + "tail"
    (f,) = find(text)
    assert f.start == 0 and 4000 < f.end <= 4096 and f.detector == "secret"
    assert find("-----BEGIN PRIVATE KEY-----\nMIIB\nnot base64 here") == [Finding(0, 32, "secret")]


# Texts a client can send that are one shape repeated. A scan must stay linear and, per
# character, within a bounded factor of prose's (find() runs on the event loop for texts below
# OFF_LOOP_CHARS of gateway/guardrails/hooks.py). Prose's scan is the compiled prefilter alone.
#
# Runs a parser could walk (or backtrack across) at each candidate inside them: a candidate must
# cost one boundary check, not a walk of the run (before: 300-1,300x prose).
RUNS = {
    "jwt prefixes": "eyJ",
    "openai prefixes": "sk-",
    "github prefixes": "github_pat_",
    "aws prefixes": "AKIA",
    "ipv6 colons": "a:",
    "dotted digits": "1.",
}
# A candidate every few characters that a parser must look at (~0.5-2 µs each in Python): a
# bounded cost per candidate, but far above prose's; an IPv6 run is parsed once, not at each of
# its colons (before: ~1,500x prose).
DENSE = {
    "ipv6 short runs": "a:b:c:d:e:f:1:2:3 ",
    "card groups": "4111 ",
    "iban heads": "DE89 ",
    "at signs": "a@",
    "phone plus": "+1 ",
}
_PROSE = "the quick brown fox jumps over the lazy dog. "


def _scan_cost(unit: str, chars: int) -> float:
    text = unit * (chars // len(unit))
    return cpu_best(lambda: find(text))


# Per character, against prose. "dotted digits" ("1.1.1.…": every dot a boundary the IP and
# card detectors try) reads 120-170x on this 2-vCPU VM since the escape-boundary check, ~125x
# before it: 180 failed a loaded CI run, so it gets 300; the linear bound above is the guard
# against quadratic work, this one against a shape growing costlier per character.
_FACTORS = {"dotted digits": 300}


@pytest.mark.parametrize("unit,factor", [(u, _FACTORS.get(name, 180)) for name, u in RUNS.items()]
                         + [(u, 1000) for u in DENSE.values()], ids=list(RUNS) + list(DENSE))
def test_a_hostile_shape_costs_linear_time_near_prose(unit: str, factor: int) -> None:
    small, large = _scan_cost(unit, 20_000), _scan_cost(unit, 200_000)
    # 10x the text: ~10x the time (a ratio, not a wall-clock bound: load scales both sides)
    assert large < 20 * max(small, 0.002), (small, large)
    prose = _scan_cost(_PROSE, 200_000)
    assert large < factor * max(prose, 0.0003), (prose, large)


def test_one_ipv6_run_is_found_once_from_any_of_its_colons() -> None:
    text = "hosts 2001:db8::1 and fe80::1ff:fe23:4567:890a, not a:b:c:d:e:f:1:2:3 nor " + "a:" * 40
    assert [text[f.start:f.end] for f in find(text)] == ["2001:db8::1", "fe80::1ff:fe23:4567:890a"]


def test_secrets_after_a_run_of_their_prefixes() -> None:
    # the left boundary rules out the prefixes inside a run; a whole token after one still counts
    for run in ("eyJ" * 50, "sk-" * 50, "github_pat_" * 30, "AKIA" * 20):
        assert find(run) == []
        assert find(run + " " + JWT) == [Finding(len(run) + 1, len(run) + 1 + len(JWT), "secret")]
    assert find("eyJ" + "a" * 5000 + "." + "b" * 10 + "." + "c" * 10) == []
    long_sk = "sk-" + "a1" * 126  # 252 after the prefix: past the cap, and not cut short to fit
    assert find(long_sk) == [] and find(long_sk[:-2]) == [Finding(0, 253, "secret")]


@pytest.mark.parametrize("escape", ["\\u0001", "\\u001F", "\\u000b", "\\uDE00", "\\ud800", "\\\\\\u0001", "\\n"])
def test_a_value_behind_a_control_characters_escape_is_found_and_masked_as_json(escape: str) -> None:
    # A streamed tool call's arguments are scanned as JSON text, where a control character stays
    # an escape (core/guardrails/json_escapes.py): its digits are the boundary the character is,
    # as in the decoded text, and a finding never starts inside it. These were missed (a card,
    # an IBAN, an IP, a secret) or masked into invalid JSON (`\<EMAIL>`).
    before = json.loads('"%s"' % escape)
    for detector, values in POSITIVES.items():
        for value in values:
            text = '{"v": "%s%s"}' % (escape, json.dumps(value)[1:-1])
            assert json.loads(mask(text, find(text))) == {"v": before + "<%s>" % detector.upper()}, value
