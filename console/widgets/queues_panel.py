"""Queues panel: images per state with a sparkline of the last minutes, the net flow over the
last minute, the consuming stage's rate and an ETA per queue, and why a held-back queue waits
(pipeline/status/queue_reasons.py). Rates are per minute everywhere, and only a running stage
has one."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline, Static

from console.widgets.text_updates import set_message, set_text
from pipeline.core import fmt
from console.history import QUEUE_CONSUMER, QueueHistory
from console.table_view import TableView
from console.widgets import queue_view

STATES = ("discovered", "downloaded", "batched", "embedded", "tarred", "failed", "dead")


class QueueRow(Vertical):
    """One queue: its line, and under it why it is held back (when it is)."""

    def __init__(self, state: str):
        super().__init__(id=f"queue-{state}", classes="queue-item")
        self.state = state

    def compose(self) -> ComposeResult:
        with Horizontal(classes="queue-row"):
            yield Label(self.state, classes="queue-name")
            yield Label("-", classes="queue-depth")
            yield Sparkline([], classes="queue-spark")
            yield Label("", classes="queue-flow")
            yield Label("", classes="queue-eta")
        yield Static("", classes="queue-why")

    def show(self, depth, series: list[float], net_per_s, consumer_rate, eta_s,
             why: dict | None = None) -> None:
        # one unit in the column (per minute), over the last minute, like the stage rates
        flow = "" if net_per_s is None else fmt.per_minute(net_per_s, signed=True)
        if consumer_rate:
            flow = f"{flow} out {fmt.per_minute(consumer_rate)}".strip()
        set_text(self.query_one(".queue-depth", Label), fmt.count(depth))
        set_text(self.query_one(".queue-flow", Label), flow)
        set_text(self.query_one(".queue-eta", Label), f"ETA {fmt.eta(eta_s)}" if eta_s else "")
        set_message(self.query_one(".queue-why", Static), why_text(why))
        spark = self.query_one(Sparkline)
        data = series or [0.0]
        if list(spark.data or []) != data:
            spark.data = data


def why_text(why: dict | None) -> str:
    """'↳ waits for a full batch of 50: 38 of 50 · full at ~14:05 at download's rate'."""
    if not why:
        return ""
    return "↳ " + why["reason"] + (f" · {why['next']}" if why.get("next") else "")


def running_text(running: dict[str, float | None]) -> str:
    """The stages that move images and run now, with their rates (one unit: per minute)."""
    if not running:
        return "running: no stage that moves images"
    # None: running without a rate yet (a worker on its first batch): not "idle", which would
    # contradict its busy row; 0: running and moving nothing
    return "running: " + " · ".join(f"{name} {fmt.per_minute(rate)}" if rate
                                    else f"{name} {'no rate yet' if rate is None else 'idle'}"
                                    for name, rate in running.items())


class QueuesPanel(Vertical, can_focus=True):
    FILTERABLE = True   # `/` filters and `o` sorts its rows (console/widgets/queue_view.py)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.view = TableView()

    def view_columns(self) -> dict[str, str]:
        return queue_view.COLUMNS

    def apply_view(self) -> None:
        rows = sorted(self.query(QueueRow), key=lambda r: STATES.index(r.state))
        queue_view.apply_queue_view(self, rows)

    def compose(self) -> ComposeResult:
        with Horizontal(classes="queue-row queue-head"):
            yield Label("queue", classes="queue-name")
            yield Label("images", classes="queue-depth")
            yield Label("trend", classes="queue-spark-head")
            yield Label("flow", classes="queue-flow")
            yield Label("", classes="queue-eta")
        for state in STATES:
            yield QueueRow(state)
        yield Static("", id="queues-throughput")
        yield Static("", id="queues-reembed")
        yield Static("", id="queues-message", classes="panel-message")

    def on_mount(self) -> None:
        self.border_title = "Queues"

    def show(self, history: QueueHistory, running: dict[str, float | None],
             message: str | None = None, reasons: dict[str, dict] | None = None) -> None:
        """running: each running stage that moves images with its rate (None: no rate yet);
        reasons: pipeline/status/queue_reasons.py's, per queue."""
        reasons = reasons or {}
        for row in self.query(QueueRow):
            consumer = QUEUE_CONSUMER.get(row.state)
            row.show(history.latest(row.state), history.buckets(row.state),
                     history.net_rate(row.state), running.get(consumer) if consumer else None,
                     history.eta_s(row.state), reasons.get(row.state))
        set_text(self.query_one("#queues-throughput", Static), running_text(running))
        self.show_message(message)
        if self.view.filter or self.view.sort_column or self.view.reverse:
            self.apply_view()

    def show_reembed(self, text: str) -> None:
        """One line per re-embed in progress (console/widgets/scale_out.py); hidden when none."""
        set_message(self.query_one("#queues-reembed", Static), text)

    def show_message(self, message: str | None) -> None:
        set_message(self.query_one("#queues-message", Static), message)
