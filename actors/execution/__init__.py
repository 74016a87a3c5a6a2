"""Execution algorithms as pure, clock-driven state machines (TWAP, VWAP, a limit chaser, brackets).

Each one is driven by its owner (the strategy host, :mod:`actors.strategy_host`, for a
strategy that returns one, or that works its targets with one) through
``start`` / ``on_timer`` / ``on_bbo`` / ``on_trade`` / ``on_fill`` / ``on_update`` /
``on_rejected``, each taking the engine clock's ``now_ns`` and returning an
:class:`~actors.execution.common.Actions`. Every child is a plain
:class:`~engine.messages.OrderIntent`: it goes through risk like any order.
"""

from actors.execution.brackets import Bracket, TakeProfitMode
from actors.execution.chaser import LimitChaser, OnExhausted
from actors.execution.common import Actions, Child, ChildBook, ExecutionAlgo, MakeIntentId
from actors.execution.schedule import ScheduledExecution
from actors.execution.twap import TWAP, twap_steps
from actors.execution.vwap import VolumeProfile, VWAPSchedule, vwap_steps

__all__ = [
    "TWAP",
    "Actions",
    "Bracket",
    "Child",
    "ChildBook",
    "ExecutionAlgo",
    "LimitChaser",
    "MakeIntentId",
    "OnExhausted",
    "ScheduledExecution",
    "TakeProfitMode",
    "VWAPSchedule",
    "VolumeProfile",
    "twap_steps",
    "vwap_steps",
]
