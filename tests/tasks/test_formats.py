from __future__ import annotations

import re
import time

from hypothesis import given, strategies as st

from d1.tasks.formats import (
    answer_blocks,
    extract_xml_answer,
    first_answer_block,
    last_answer_block,
    last_boxed_only_string,
    remove_boxed,
)


def test_answer_blocks():
    text = "x<answer> 1 </answer>y<answer>\n2\n</answer><answer>open"
    assert answer_blocks(text) == [" 1 ", "\n2\n"]
    assert first_answer_block(text) == "1"
    assert last_answer_block(text) == "2"
    assert last_answer_block("no tags") is None and first_answer_block("<answer>open") is None
    assert extract_xml_answer("a<answer>\n7\n</answer>tail") == "7"
    assert extract_xml_answer("just text") == "just text"


@given(st.lists(st.sampled_from(["<answer>", "</answer>", "a", "\n", "<", ">"]), max_size=40).map("".join))
def test_answer_blocks_agree_with_the_regex(text):
    assert answer_blocks(text) == re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)


def test_answer_blocks_linear_on_unclosed_tags():
    text = "<answer>" * 20000
    t0 = time.thread_time()
    assert answer_blocks(text) == []
    assert time.thread_time() - t0 < 0.05


def test_boxed():
    s = r"first \boxed{1} then \boxed{\frac{1}{2}} end"
    assert last_boxed_only_string(s) == r"\boxed{\frac{1}{2}}"
    assert remove_boxed(last_boxed_only_string(s)) == r"\frac{1}{2}"
    assert last_boxed_only_string(r"\boxed 5$ more") == r"\boxed 5"
    assert remove_boxed(r"\boxed 5") == "5"
    assert last_boxed_only_string(r"\fbox{x}") == r"\fbox{x}"
    assert last_boxed_only_string(r"\boxed{unclosed") is None
    assert last_boxed_only_string("none") is None
    assert remove_boxed(None) is None and remove_boxed("plain") is None
