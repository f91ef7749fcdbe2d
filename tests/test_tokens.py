"""Token counting from the shipped tokenizer files, and the prompt-token upper bound."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollway.core.accounting.tokens import (
    CL100K,
    COUNT_EXACT_MAX_CHARS,
    O200K,
    count_tokens,
    count_tokens_bounded,
    encoding_for,
    encoding_name_for_model,
    estimate_prompt_tokens,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", O200K),
        ("gpt-4o-mini-2024-07-18", O200K),
        ("gpt-4.1-nano", O200K),
        ("o3-mini", O200K),
        ("gpt-5", O200K),
        ("some-llama-we-host", O200K),
        ("gpt-4", CL100K),
        ("gpt-4-turbo-2024-04-09", CL100K),
        ("gpt-3.5-turbo", CL100K),
        ("openai/gpt-4", CL100K),
    ],
)
def test_encoding_for_model(model, encoding):
    assert encoding_name_for_model(model) == encoding


def test_known_counts():
    # Reference counts from OpenAI's tokenizer for these encodings.
    assert count_tokens("hello world", "gpt-4") == 2
    assert count_tokens("hello world", "gpt-4o") == 2
    assert count_tokens("", "gpt-4o") == 0
    assert encoding_for(CL100K).decode(encoding_for(CL100K).encode("tiktoken is great!")) == "tiktoken is great!"


def test_special_token_text_is_counted_as_text():
    assert count_tokens("<|endoftext|>", "gpt-4o") > 1


def test_loads_from_package_data_without_network_or_cache(tmp_path):
    # A poisoned cache dir and no network: loading must still come from core/data/tiktoken.
    code = (
        "from tollway.core.accounting.tokens import count_tokens;"
        "print(count_tokens('hello world', 'gpt-4o'), count_tokens('hello world', 'gpt-4'))"
    )
    for name in ("9b5ad71b2ce5302211f9c61530b329a4922fc6a4", "fb374d419588a4632f3f557e76b4b70aebbca790"):
        (tmp_path / name).write_bytes(b"garbage")
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "https_proxy": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2"]


def test_encodings_are_cached():
    assert encoding_for(CL100K) is encoding_for(CL100K)


# --- the prompt estimate bounds the real count ----------------------------------------------

texts = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=200
) | st.sampled_from(["", " ", "\n\n\n", "1234567890" * 5, "日本語のテキスト", "🙂🙃🤖" * 10, "<|endoftext|>"])
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": texts}),
    min_size=1,
    max_size=6,
)


def chat_prompt_tokens(msgs, model: str) -> int:
    """OpenAI's documented way to count a chat prompt: 3 per message + contents + 3 priming."""
    return sum(3 + count_tokens(m["role"], model) + count_tokens(m["content"], model) for m in msgs) + 3


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=messages, model=st.sampled_from(["gpt-4o", "gpt-4"]), encoder=st.sampled_from(["ascii", "utf8", "msgspec"]))
def test_estimate_bounds_the_real_count(msgs, model, encoder):
    doc = {"model": model, "messages": msgs}
    if encoder == "msgspec":
        body = msgspec.json.encode(doc)
    else:
        body = json.dumps(doc, ensure_ascii=encoder == "ascii", separators=(",", ":")).encode()
    assert estimate_prompt_tokens(body) >= chat_prompt_tokens(msgs, model)


@settings(max_examples=100, deadline=None)
@given(text=texts)
def test_tokens_never_exceed_utf8_bytes(text):
    # The premise of the estimate, checked directly on both encodings.
    for model in ("gpt-4o", "gpt-4"):
        assert count_tokens(text, model) <= len(text.encode())


# --- an answer's count: exact up to a cap, an upper bound past it ------------------------------

answers = texts | st.builds(lambda parts: "".join(parts), st.lists(
    st.sampled_from(["x" * 40, "word ", "Word", "'s", "don't ", "12345", "+/=", "\n", "\n\n", "  ", "\t", ".", ",",
                     "é", "日本語", "🙂", "a", "Z", "\r\n", "_", "\u0301"]), max_size=60))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=answers, exact_max=st.integers(0, 120), model=st.sampled_from(["gpt-4o", "gpt-4"]))
def test_a_bounded_count_is_exact_under_its_cap_and_an_upper_bound_past_it(text, exact_max, model):
    bounded, exact = count_tokens_bounded(text, model, exact_max), count_tokens(text, model)
    if len(text) <= exact_max:
        assert bounded == exact
    assert exact <= bounded <= len(text.encode())  # never above the bytes bound the prompt uses


def test_a_long_text_without_spaces_is_bounded_by_its_bytes_in_bounded_time():
    import time
    encoding_for(O200K)
    text = "x" * (8 * 1024 * 1024)  # tiktoken alone: ~7 s of CPU and ~0.5 GB here
    started = time.process_time()
    assert count_tokens_bounded(text, "gpt-4o") == len(text)
    assert time.process_time() - started < 0.5


def test_past_the_cap_the_text_before_a_word_boundary_is_counted_exactly():
    head = "the quick brown fox " * (COUNT_EXACT_MAX_CHARS // 40)  # half the cap, 4 tokens per 20 chars
    text = head + "x" * (4 * COUNT_EXACT_MAX_CHARS)
    bounded = count_tokens_bounded(text, "gpt-4o")
    assert bounded == count_tokens(head.rstrip(), "gpt-4o") + len(text) - len(head.rstrip())
    assert bounded >= count_tokens(text, "gpt-4o")
