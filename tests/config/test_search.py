"""The `search` group: every shipped search composes with the training config it names; bad values name the key."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from medtune.config import ConfigError, compose
from medtune.config.search import SearchConfig, compose_search, split_overrides
from medtune.search.scores import check_groups

SEARCHES = sorted(p.stem for p in (REPO / "medtune" / "conf" / "search").glob("*.yaml"))


@pytest.mark.parametrize("name", SEARCHES)
def test_every_shipped_search_composes_with_its_training_config(name: str) -> None:
    cfg = compose_search([f"+search={name}"])
    assert isinstance(cfg, SearchConfig)
    cfg.require_plan()
    train = compose(list(cfg.train))
    assert cfg.vary in train.data_mix.weights
    assert check_groups(cfg, train) == [*cfg.target, *cfg.protect]


def test_overrides_are_split_between_the_search_and_training() -> None:
    mine, rest = split_overrides(["search=ratio_ja", "search.margin=0.1", "model=tiny_llama", "+experiment=x"])
    assert mine == ["+search=ratio_ja", "search.margin=0.1"] and rest == ["model=tiny_llama", "+experiment=x"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search.margn=0.1"], "search.margn"),  # a typo fails at composition (the schema)
        (["search.shares=[0.5]"], "needs at least two different shares"),
        (["search.shares=[0,0.5]"], "search.shares has [0.0]"),
        (["search.seeds=[1,1]"], "search.seeds=[1, 1] must name at least one seed, each once"),
        (["search.level=0.3"], "search.level=0.3 must be in (0.5, 1)"),
        (["search.degree=3"], "search.degree=3 is not one of [1, 2]"),
        (["search.protect=[lang:]"], "search.protect has 'lang:'"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose_search(["+search=ratio_ja", *overrides])


def test_a_search_must_be_chosen_and_complete() -> None:
    with pytest.raises(ConfigError, match="choose a search: search=<name>"):
        compose_search(["search.margin=0.1"])
    with pytest.raises(ConfigError, match=r"no search/nope\.yaml"):
        compose_search(["+search=nope"])
    with pytest.raises(ConfigError, match=r"search.vary is not set; .*search.vary=ja"):
        SearchConfig(target=["ja_exam"], protect=["lang:ko"]).require_plan()
    with pytest.raises(ConfigError, match="both name"):
        SearchConfig(vary="ja", target=["lang:ko"], protect=["lang:ko"]).require_plan()
