"""Fuzzing plan files and search-space files: whatever a file holds, reading and binding
it either works (and what it gives is consistent) or raises UserError with one line
naming the file; never any other exception.

Fixed seed (derandomize=True) and a fixed number of examples per test, EXAMPLES below.
Inputs are drawn near the real formats (right keys, good and bad values) mixed with
arbitrary JSON/YAML values and raw bytes, including pathologically deep nesting.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from autoq.errors import UserError
from autoq.plan import FORMAT, Plan
from autoq.search.space import FORMAT as SPACE_FORMAT
from autoq.search.space import load_space, parse_space

EXAMPLES = {"plan objects": 400, "plan files": 200, "space objects": 400, "space files": 200}
SHAPES = {f"model.layers.{b}.{r}": s for b in range(4) for r, s in
          (("self_attn.q_proj", (64, 64)), ("self_attn.k_proj", (64, 32)),
           ("mlp.up_proj", (64, 128)), ("mlp.down_proj", (128, 64)))} | {"lm_head": (64, 96)}
HEADS = {"lm_head"}
TMP = Path(tempfile.mkdtemp(prefix="autoq-fuzz-"))


def fuzz(name: str):
    return settings(derandomize=True, max_examples=EXAMPLES[name], deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def one_line_about(e: UserError, source: str) -> None:
    text = str(e)
    assert "\n" not in text and text.startswith(source), text


# ---- strategies: near the formats, plus arbitrary values ---------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))
anything = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=8), st.integers()),
                                                 inner, max_size=4)), max_leaves=12)
deep = st.sampled_from([3, 700]).map(lambda n: "[" * n + "]" * n)  # 700: RecursionError

def mostly(good, bad):
    """Usually (11 in 12) a good value, else a bad one, so deep code paths get reached too."""
    return st.integers(0, 11).flatmap(lambda i: bad if i == 0 else good)


def with_bogus_key(d: dict) -> dict:
    return {**d, "bogus": 1}


nbits = mostly(st.sampled_from([1, 1.58, 2, 3, 4, 8]),
               st.sampled_from([4.0, 5, 0, -4, 2.5, True, "4", None, math.nan, math.inf]))
group = mostly(st.sampled_from([None, 8, 16, 32, 64, 128]),
               st.sampled_from([48, 256, 0, -64, 60, 2**70, True, "64", 6.4]))
layer = mostly(st.one_of(st.none(), st.fixed_dictionaries({"nbits": nbits, "group_size": group})),
               st.one_of(st.fixed_dictionaries({}, optional={"nbits": nbits, "group_size": group,
                                                             "axis": anything}), anything))
names = mostly(st.sampled_from(sorted(SHAPES)),
               st.one_of(st.sampled_from(["model.layers.9.mlp.up_proj", "up_proj", ""]),
                         st.text(max_size=10)))
plans = mostly(
    st.fixed_dictionaries(
        {"format": mostly(st.just(FORMAT), st.sampled_from(["autoq.plan/2", 1, None])),
         "model": mostly(st.just("tiny"), st.sampled_from(["", 3, None, ["x"]])),
         "layers": mostly(st.dictionaries(names, layer, max_size=6), anything)},
        optional={"default": layer, "metrics": mostly(st.dictionaries(st.text(max_size=5),
                                                                        scalars), anything),
                  "note": anything}),
    anything)

option = mostly(st.sampled_from([None, "keep", "8:64", "4:64", "4:32", "4:16", "3:64", "2:32",
                                 "1:64", "1.58:32", "4:row", "4:none", "4:128"]),
                st.one_of(st.sampled_from(["4:48", "4:0", "4:-8", "5:64", "nan:64", "inf:8",
                                           "4", "4:64:1", ":", "x:y", 4, 4.5, True]), anything))
options = mostly(st.lists(option, min_size=1, max_size=5), st.one_of(st.just([]), option))
blocks = mostly(
    st.one_of(st.sampled_from(["all", "first", "last", "middle", "first_quarter",
                               "second_quarter", "third_quarter", "last_quarter", "0-1", "1-3",
                               "3-0", "7-9"]),
              st.lists(st.sampled_from(["first", "last", "0-1", "last_quarter"]), max_size=3)),
    st.recursive(st.sampled_from(["x", None, 3, -1, "1-", "a-b"]),
                 lambda inner: st.one_of(st.lists(inner, max_size=3),
                                         st.dictionaries(st.text(max_size=3), inner, max_size=2)),
                 max_leaves=5))
regex = mostly(st.sampled_from(["self_attn\\.", "mlp", "mlp\\.(up|down)_proj", ".*", "^lm_head$",
                                "k_proj", "nothing", "model.layers.0.mlp.up_proj"]),
               st.one_of(st.sampled_from(["[", "(", "*"]), scalars))
group_dicts = st.fixed_dictionaries(
    {"name": mostly(st.sampled_from(["attn", "mlp", "g", "h"]),
                    st.sampled_from(["model.layers.1.mlp.up_proj", "", 1, None])),
     "match": regex},
    optional={"blocks": blocks, "per_layer": mostly(st.booleans(), st.sampled_from(["yes", 1,
                                                                                  None])),
              "options": options})
groups = mostly(group_dicts, group_dicts.map(with_bogus_key))
space_dicts = st.fixed_dictionaries(
        {"format": mostly(st.just(SPACE_FORMAT), st.sampled_from(["autoq.space/2", None])),
         "options": options,
         "groups": mostly(st.lists(mostly(groups, anything), min_size=1, max_size=4), anything)},
        optional={"ignore": mostly(st.lists(regex, max_size=2), anything),
                  "pinned": mostly(st.dictionaries(names, option, max_size=3), anything),
                  "baselines": mostly(st.lists(option, max_size=3), anything),
                  "description": st.text(max_size=20)})
spaces = mostly(space_dicts, st.one_of(space_dicts.map(with_bogus_key), anything))


def mangle(text: str, data) -> str:
    """Cut the text somewhere and/or insert some junk there."""
    cut, junk = data.draw(st.integers(0, len(text))), data.draw(st.sampled_from(
        ["", "\x00", "{", "]", ":", "\ufeff", "\udcff", "\n- ", "&a *a", "!!python/object:os.system"]))
    return text[:cut] + junk + (text[cut:] if data.draw(st.booleans()) else "")


# ---- plans --------------------------------------------------------------------------
def check_plan(obj, source: str) -> None:
    try:
        plan = Plan.from_json(obj, source)
        resolved = plan.resolve(SHAPES, HEADS, source)
    except UserError as e:
        one_line_about(e, source)
        return
    assert set(resolved) == set(SHAPES)
    for name, cfg in resolved.items():
        assert cfg is None or cfg.problem(*SHAPES[name]) is None
    once = json.dumps(Plan.from_json(json.loads(json.dumps(plan.to_json())), source).to_json())
    assert json.dumps(Plan.from_json(json.loads(once), source).to_json()) == once  # stable


@fuzz("plan objects")
@given(plans)
@example({"format": FORMAT, "model": "tiny", "layers": {"lm_head": {"": 1, 0: 2}}})  # TypeError
def test_fuzzed_plan_objects_parse_or_raise_user_error(obj):
    check_plan(obj, "fuzz.json")


@fuzz("plan files")
@given(st.one_of(plans.map(lambda o: json.dumps(o, allow_nan=True)), deep, st.text(max_size=80)),
       st.data())
def test_fuzzed_plan_files_load_or_raise_user_error(text, data):
    path = TMP / "plan.json"
    raw = data.draw(st.one_of(st.just(mangle(text, data)), st.binary(max_size=40)))
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    try:
        plan = Plan.load(path)
    except UserError as e:
        one_line_about(e, str(path))
        return
    check_plan(plan.to_json(), str(path))


# ---- search spaces ------------------------------------------------------------------
def check_space(obj, source: str) -> None:
    try:
        space = parse_space(obj, source)
        choices, fixed = space.bind(SHAPES)
    except UserError as e:
        one_line_about(e, source)
        return
    covered = [n for c in choices for n in c.layers] + list(fixed)
    assert sorted(covered) == sorted(SHAPES)                    # every layer exactly once
    assert len({c.param for c in choices}) == len(choices)      # distinct Optuna parameters
    for c in choices:
        assert c.options and len(set(c.labels)) == len(c.labels)
        assert all(o is None or o.problem(*SHAPES[n]) is None for o in c.options
                   for n in c.layers)


@fuzz("space objects")
@given(spaces)
@example({"format": SPACE_FORMAT, "options": ["4:32"],            # once a TypeError
          "groups": [{"name": "g", "match": "mlp", "blocks": {"first": 1}}]})
@example({"format": SPACE_FORMAT, "options": [None, "4:row", "4:none", "4:64"],  # repeats
          "groups": [{"name": "g", "match": "mlp"}]})
def test_fuzzed_space_objects_parse_and_bind_or_raise_user_error(obj):
    check_space(obj, "fuzz.yaml")


@fuzz("space files")
@given(st.one_of(spaces.map(lambda o: yaml.safe_dump(o, allow_unicode=True)), deep,
                 st.text(max_size=80)), st.data())
def test_fuzzed_space_files_load_or_raise_user_error(text, data):
    path = TMP / "space.yaml"
    raw = data.draw(st.one_of(st.just(mangle(text, data)), st.binary(max_size=40)))
    path.write_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass"))
    try:
        space = load_space(path)
    except UserError as e:
        one_line_about(e, str(path))
        return
    try:
        space.bind(SHAPES)
    except UserError as e:
        one_line_about(e, str(path))


def test_deeply_nested_files_are_user_errors():
    plan, space = TMP / "deep.json", TMP / "deep.yaml"
    plan.write_text("[" * 5000 + "]" * 5000)
    space.write_text("[" * 700 + "]" * 700)
    for load, path in ((Plan.load, plan), (load_space, space)):
        try:
            load(path)
        except UserError as e:
            one_line_about(e, str(path))
            assert "nested too deeply" in str(e)
        else:
            raise AssertionError(f"{path} loaded")
