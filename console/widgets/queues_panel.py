"""Queues panel: images per state with a sparkline of the last minutes, the net flow, the
consuming stage's throughput and an ETA per queue."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline, Static

from console.widgets.text_updates import set_message, set_text
from pipeline.core import fmt
from console.history import QUEUE_CONSUMER, QueueHistory

STATES = ("discovered", "downloaded", "batched", "embedded", "tarred", "failed", "dead")


class QueueRow(Horizontal):
    def __init__(self, state: str):
        super().__init__(id=f"queue-{state}", classes="queue-row")
        self.state = state

    def compose(self) -> ComposeResult:
        yield Label(self.state, classes="queue-name")
        yield Label("-", classes="queue-depth")
        yield Sparkline([], classes="queue-spark")
        yield Label("", classes="queue-flow")
        yield Label("", classes="queue-eta")

    def show(self, depth, series: list[float], net_per_s, consumer_rate, eta_s) -> None:
        flow = "" if net_per_s is None else ("+" if net_per_s > 0 else "") + fmt.rate(net_per_s)
        if consumer_rate:
            flow = f"{flow} out {fmt.rate(consumer_rate)}".strip()
        set_text(self.query_one(".queue-depth", Label), fmt.count(depth))
        set_text(self.query_one(".queue-flow", Label), flow)
        set_text(self.query_one(".queue-eta", Label), f"ETA {fmt.eta(eta_s)}" if eta_s else "")
        spark = self.query_one(Sparkline)
        data = series or [0.0]
        if list(spark.data or []) != data:
            spark.data = data


class QueuesPanel(Vertical):
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
        yield Static("", id="queues-message", classes="panel-message")

    def on_mount(self) -> None:
        self.border_title = "Queues"

    def show(self, history: QueueHistory, stage_rates: dict[str, float],
             message: str | None = None) -> None:
        for row in self.query(QueueRow):
            consumer = QUEUE_CONSUMER.get(row.state)
            row.show(history.latest(row.state), history.buckets(row.state),
                     history.net_rate(row.state), stage_rates.get(consumer) if consumer else None,
                     history.eta_s(row.state))
        rates = [f"{name} {fmt.rate(r)}" for name, r in stage_rates.items() if r]
        set_text(self.query_one("#queues-throughput", Static),
                 "throughput: " + (" · ".join(rates) if rates else "no stage is moving images"))
        self.show_message(message)

    def show_message(self, message: str | None) -> None:
        set_message(self.query_one("#queues-message", Static), message)
