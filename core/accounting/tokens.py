"""Token counting with tiktoken, from the tokenizer files shipped in `core/data/tiktoken/`.

The gateway must work air-gapped, so the BPE rank files are package data and are read from
there, checked against tiktoken's published SHA-256, never fetched and never looked up in
``TIKTOKEN_CACHE_DIR``. An encoding is loaded on first use and kept (o200k_base alone holds
~76 MB), so a gateway that never counts tokens never pays for a tokenizer.

`estimate_prompt_tokens` is the cheap upper bound used for rate-limit reservations; it never
runs the tokenizer. See its docstring for why it bounds the real count. `count_tokens_bounded`
counts an answer the upstream reported no usage for: exactly up to `COUNT_EXACT_MAX_CHARS`, and
past it with the same bytes bound, because tiktoken's cost grows faster than a text's length
where the text has no spaces (one "word" of 8 MiB: ~7 s of CPU and ~0.5 GB).
"""
from __future__ import annotations

import base64
import functools
import re
from importlib import resources

import tiktoken
from tiktoken.load import check_hash

__all__ = ["COUNT_EXACT_MAX_CHARS", "count_tokens", "count_tokens_bounded", "encoding_for", "encoding_name_for_model",
           "estimate_prompt_tokens"]

# Characters of an answer counted exactly: ~64k tokens of English, more than most answers. Its
# worst case (one piece with no split point) costs tiktoken ~60 ms of a pool thread; the
# cost grows faster than the length (8 MiB of "x": ~7 s), so the rest is bounded, not counted.
COUNT_EXACT_MAX_CHARS = 256 * 1024

CL100K = "cl100k_base"
O200K = "o200k_base"

# As in tiktoken_ext/openai_public.py (tiktoken is MIT-licensed): file name in our package
# data (tiktoken's cache key for the download URL), content SHA-256, split pattern, specials.
_ENDOFTEXT, _FIM_PREFIX, _FIM_MIDDLE, _FIM_SUFFIX, _ENDOFPROMPT = (
    "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|endofprompt|>",
)
_SPECS: dict[str, tuple[str, str, str, dict[str, int]]] = {
    CL100K: (
        "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501 - the tokenizer's pattern, verbatim
        {_ENDOFTEXT: 100257, _FIM_PREFIX: 100258, _FIM_MIDDLE: 100259, _FIM_SUFFIX: 100260, _ENDOFPROMPT: 100276},
    ),
    O200K: (
        "fb374d419588a4632f3f557e76b4b70aebbca790",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}

# Model-name prefixes that still use cl100k_base; everything else (gpt-4o, gpt-4.1, o1/o3/o4,
# gpt-5, and models we do not know) is counted with o200k_base, the current OpenAI encoding.
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "chatgpt-4o")


def encoding_name_for_model(model: str) -> str:
    """The tiktoken encoding name for `model` (o200k_base unless it is a cl100k-era model)."""
    name = model.rpartition("/")[2].lower()  # "openai/gpt-4" and "azure/gpt-4" count alike
    if name.startswith(_O200K_PREFIXES):
        return O200K
    if name.startswith(_CL100K_PREFIXES):
        return CL100K
    return O200K


@functools.cache
def encoding_for(name: str) -> tiktoken.Encoding:
    """The encoding `name`, loaded from package data on first use and cached.

    Raises KeyError for an encoding we do not ship, ValueError if the file fails its hash check.
    """
    file_name, sha256, pattern, specials = _SPECS[name]
    data = resources.files("tollway.core").joinpath("data", "tiktoken", file_name).read_bytes()
    if not check_hash(data, sha256):
        raise ValueError(f"tokenizer data for {name} is corrupt (sha256 mismatch); reinstall tollway")
    encoding = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=_parse_ranks(data), special_tokens=specials)
    # The Rust core copied the ranks; tiktoken keeps the Python dict only to pickle the encoding,
    # which the gateway never does. Emptied, it gives back ~27 MB per worker (o200k: 200k entries).
    encoding._mergeable_ranks.clear()
    return encoding


def _parse_ranks(data: bytes) -> dict[bytes, int]:
    """tiktoken's rank file format: one ``base64(token) rank`` pair per line."""
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def count_tokens(text: str, model: str) -> int:
    """Tokens in `text` for `model`'s encoding; special-token text counts as plain text."""
    return len(encoding_for(encoding_name_for_model(model)).encode_ordinary(text))


def count_tokens_bounded(text: str, model: str, exact_max: int = COUNT_EXACT_MAX_CHARS) -> int:
    """`count_tokens(text, model)` when `text` has at most `exact_max` characters; past that, an
    upper bound of it: the exact count of the text up to its last word boundary within
    `exact_max` characters, plus the UTF-8 bytes of the rest (each token is at least one
    byte, see `estimate_prompt_tokens`); all of its bytes when there is no such boundary.

    The sum bounds the whole text's count because tiktoken counts a text piece by piece (its
    split pattern's matches) and the cut is a place where the pieces of the whole text and of
    the text before the cut are the same: right after an ASCII letter and before an ASCII
    character that no piece joins to a preceding letter (not a letter, digit or apostrophe;
    see `_CUT_REVERSED`).
    """
    if len(text) <= exact_max:
        return count_tokens(text, model)
    cut = _last_cut(text, exact_max)
    return count_tokens(text[:cut], model) + _utf8_length(text[cut:])


# A cut point, in the text reversed: the character after the cut, then an ASCII letter before
# it. A letter piece (both encodings' patterns) ends at any character that is not a letter, a
# combining mark, a digit, or (for a contraction: "'s", "'ll") an apostrophe; an ASCII
# character other than those ends it the way the end of the text does, so the text before the
# cut splits into the same pieces alone as within the whole.
_CUT_REVERSED = re.compile(r"[\x00-\x26\x28-\x2f\x3a-\x40\x5b-\x60\x7b-\x7f][A-Za-z]")


def _last_cut(text: str, exact_max: int) -> int:
    """The last cut point at or before `exact_max` (its index: the length of the text before it), or 0."""
    found = _CUT_REVERSED.search(text[exact_max::-1])  # (a slice, reversed: one copy of exact_max characters)
    return exact_max - found.start() if found else 0


def _utf8_length(text: str) -> int:
    """Bytes of `text` in UTF-8 (a lone surrogate, which tiktoken counts as U+FFFD, as 3)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def estimate_prompt_tokens(body: bytes) -> int:
    """An upper bound of the prompt tokens of a JSON request body, without tokenizing.

    The bound is the body's length in bytes. Why it holds for text prompts:
    - every BPE token of tiktoken's byte-level encodings stands for at least one byte of UTF-8
      text, so a text has at most as many tokens as UTF-8 bytes;
    - JSON never writes a string in fewer bytes than its UTF-8 form (escapes only lengthen it);
    - the chat format's per-message overhead (about 4 tokens: start, role, separators, end)
      and the 3 reply-priming tokens are smaller than the JSON syntax each message and the
      body need around them (``{"role":"user","content":""}`` alone is 29 bytes).
    It is loose (English averages ~4 bytes per token). It does not bound media the provider
    counts by its own formula: an image given by URL costs up to ~1.5k tokens whatever the
    URL's length (inline base64 images are far longer than their token cost, so they stay
    bounded). The limiter reserves this much and settles with the real usage afterwards.
    """
    return len(body)
