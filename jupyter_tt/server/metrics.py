"""Prometheus gauges for ``/metrics``: device telemetry and lease counts, from the devices document the
server renews at each change and telemetry sample: a scrape never calls the scheduler on the event loop."""

from __future__ import annotations

from collections import Counter

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily


class DeviceCollector:
    """Collects from whichever server extension registered last (one per process)."""

    def __init__(self):
        self.app = None

    def collect(self):
        if self.app is None:
            return
        report = self.app.watcher.report
        if report is None:  # no look yet
            return
        simulated = "true" if report.simulated else "false"
        labels = ["device", "bdf", "card_type", "simulated"]
        gauges = {
            "temperature_c": GaugeMetricFamily("jupyter_tt_device_temperature_celsius", "ASIC temperature", labels=labels),
            "power_w": GaugeMetricFamily("jupyter_tt_device_power_watts", "Board power", labels=labels),
            "aiclk_mhz": GaugeMetricFamily("jupyter_tt_device_aiclk_mhz", "AI clock", labels=labels),
        }
        leased = GaugeMetricFamily("jupyter_tt_device_leased", "1 when the device is leased", labels=labels)
        healthy = GaugeMetricFamily("jupyter_tt_device_healthy", "1 when the device is healthy", labels=labels)
        unaccounted = GaugeMetricFamily(
            "jupyter_tt_device_unaccounted_processes", "Processes holding the device without a lease", labels=labels
        )
        for state in report.devices:
            device = state.device
            values = [str(device.id), device.bdf, device.card_type, simulated]
            for key, gauge in gauges.items():
                value = getattr(device.telemetry, key)
                if value is not None:
                    gauge.add_metric(values, value)
            leased.add_metric(values, 1 if state.lease_id else 0)
            healthy.add_metric(values, 1 if device.healthy else 0)
            unaccounted.add_metric(values, len(state.unaccounted_processes))
        yield from gauges.values()
        yield from (leased, healthy, unaccounted)

        leases = report.leases
        per_user = GaugeMetricFamily("jupyter_tt_leased_devices", "Devices leased, per user", labels=["user"])
        for user, n in Counter(lease.user for lease in leases for _ in lease.devices).items():
            per_user.add_metric([user], n)
        yield per_user
        yield GaugeMetricFamily("jupyter_tt_leases", "Active leases on the host", value=len(leases))
        yield GaugeMetricFamily("jupyter_tt_queue_requests", "Requests waiting for devices", value=len(report.queue))


collector = DeviceCollector()
_registered = False


def register(app) -> None:
    global _registered
    collector.app = app
    if not _registered:
        REGISTRY.register(collector)
        _registered = True
