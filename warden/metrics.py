"""Where metric plugins import from: a third-party metric type subclasses
:class:`warden.metrics.Metric` and registers in the ``warden.metrics`` entry-point
group. The demand metrics themselves live in :mod:`warden.manager.demand`; this name
stays so that plugins written for earlier releases import as before."""

from __future__ import annotations

from warden.errors import MetricError
from warden.manager.demand import Metric, MetricContext, load_metric

__all__ = ["Metric", "MetricContext", "MetricError", "load_metric"]
