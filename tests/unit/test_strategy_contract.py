"""The contract suite over every registered strategy, so that none escapes it."""

from __future__ import annotations

from strategies import list_strategies
from strategies.testing import StrategyContract

for _name in list_strategies():
    _cls_name = f"TestContract_{_name}"
    globals()[_cls_name] = type(_cls_name, (StrategyContract,), {"strategy_name": _name})
