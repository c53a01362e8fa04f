"""From what is wrong now to alerts: each condition is alerted once while it lasts, and one
``condition_cleared`` ("ok again: ...") goes out when it clears.

- new condition: its alert is sent; it stays open in ``watch_conditions``;
- still there: nothing is sent (its text is refreshed); if its alert was never delivered
  (mail server down, rate limit), it is tried again while alerts are enabled;
- gone: one "ok again" is sent, then it is forgotten; one whose alert never went out is just
  forgotten (nothing to take back); an "ok again" that could not be delivered is tried again
  next run (unless alerts are off);
- a scope whose check could not look this time (``None``) keeps its conditions as they are.

A delivery counts when the alerter sent it, or when it was a duplicate of one it sent within
alerts.dedupe_s (the operator has it already)."""
from __future__ import annotations

from pipeline.watch import store
from pipeline.watch.conditions import CLEARED_KIND, Condition, ok_again_text


def _delivered(result: dict) -> bool:
    return bool(result["sent"]) or str(result.get("error") or "").startswith("duplicate")


def _in_scope(key: str, scopes: list[str]) -> bool:
    return any(key.startswith(prefix) for prefix in scopes)


def reconcile(conn, alerter, results: dict[str, list[Condition] | None], now: float) -> list[dict]:
    """``results``: {key prefix of a check: its conditions, or None when it could not look}.
    Returns one line per condition acted on: key, kind, action, text, sent, error."""
    enabled = bool(alerter.config.enabled)
    rows = store.open_rows(conn)
    looked = [prefix for prefix, conds in results.items() if conds is not None]
    current: dict[str, Condition] = {}
    for conds in results.values():
        for cond in conds or []:
            current.setdefault(cond.key, cond)
    report: list[dict] = []

    def send(kind: str, text: str, key: str, action: str) -> dict:
        result = alerter.send(kind, text)
        report.append({"key": key, "kind": kind, "action": action, "text": text,
                       "sent": bool(result["sent"]), "error": result.get("error")})
        return result

    for key, cond in current.items():
        text, row = cond.text(), rows.get(key)
        if row is None:
            store.opened(conn, key, cond.kind, text, now)
            must_send = True
        else:
            store.seen(conn, key, text, now)
            must_send = row.sent_at is None and enabled
            if not must_send:
                report.append({"key": key, "kind": cond.kind, "action": "still open", "text": text,
                               "sent": False,
                               "error": None if row.sent_at else "its alert was never delivered"})
        if must_send:
            result = send(cond.kind, text, key, "alert")
            if _delivered(result):
                store.alert_sent(conn, key, result["alert_id"], now)

    for key, row in rows.items():
        if key in current or not _in_scope(key, looked):
            continue
        if row.sent_at is None:
            store.forget(conn, key)
            report.append({"key": key, "kind": row.kind, "action": "cleared (never sent)",
                           "text": row.text, "sent": False, "error": None})
            continue
        store.cleared(conn, key, now)
        result = send(CLEARED_KIND, ok_again_text(row.kind, row.text, row.opened_at, now), key, "ok again")
        if _delivered(result) or not enabled:
            store.forget(conn, key)
    return report
