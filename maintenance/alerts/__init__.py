"""Alerts by webhook and e-mail when a scan finds too much or a run fails; never fail the run.

`maybe_alert(settings, result, outcome)` is the call for code that finishes a maintenance run.
"""

from maintenance.alerts.events import AlertEvent, Trigger
from maintenance.alerts.settings import AlertSettings
from maintenance.alerts.sink import AlertSink, maybe_alert, send_test

__all__ = ["AlertEvent", "AlertSettings", "AlertSink", "Trigger", "maybe_alert", "send_test"]
