"""`x-tollway-tags`: labels a client attaches to its request, for spend reports by tag."""
from __future__ import annotations

import re

from tollway.core import errors

HEADER = "x-tollway-tags"
MAX_TAGS = 8
MAX_TAG_CHARS = 64
_TAG = re.compile(r"[A-Za-z0-9_.:=-]{1,%d}" % MAX_TAG_CHARS)


def parse_tags(value: str | None) -> tuple[str, ...]:
    """The header's tags, comma-separated, blanks around them ignored, repeats kept once.
    Raises a 400 naming the header for anything else: a bad tag is the client's bug, and
    silently dropping it would misfile its spend."""
    if not value:
        return ()
    tags = tuple(dict.fromkeys(t.strip() for t in value.split(",") if t.strip()))
    if len(tags) > MAX_TAGS:
        raise errors.bad_request(f"The {HEADER} header has {len(tags)} tags; at most {MAX_TAGS} are allowed.",
                                 param=HEADER, code="invalid_request")
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise errors.bad_request(
                f"The {HEADER} header has an invalid tag '{errors.echoed(tag)}': tags are at most {MAX_TAG_CHARS} "
                "characters of A-Z, a-z, 0-9 and _ . : = -", param=HEADER, code="invalid_request")
    return tags
