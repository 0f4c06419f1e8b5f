"""The contract suite over every built-in strategy, so that none escapes it. Strategies of other
installed packages are theirs to test (with the same suite): the count of this file's tests
does not change with what else is installed."""

from __future__ import annotations

from strategies import list_strategies, strategy_origin
from strategies.testing import StrategyContract

BUILT_IN = [n for n in list_strategies() if strategy_origin(n).via == "builtin"]

for _name in BUILT_IN:
    _cls_name = f"TestContract_{_name}"
    globals()[_cls_name] = type(_cls_name, (StrategyContract,), {"strategy_name": _name})


def test_every_built_in_strategy_is_under_contract() -> None:
    assert set(BUILT_IN) >= {
        "bit_learning",
        "bit_regularization",
        "exact_binary",
        "full_precision",
        "weight_fixing",
        "wrn_1bit",
    }
