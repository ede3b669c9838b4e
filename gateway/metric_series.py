"""Counters and histograms for the request path, kept as plain numbers and handed to
``prometheus_client`` only when scraped.

``prometheus_client``'s own metrics take a lock and go through three or four Python calls per
update (``labels`` -> ``inc``/``observe`` -> the value object), about eight updates per gateway
call. These series are updated only from the event loop's thread (the recorder's observers and
the request middleware), so a dict entry and a list slot do, and a scrape renders them as the
same families, samples and ``_created`` gauges the library's ``Counter`` and ``Histogram``
would (``tests/unit/test_metric_series.py`` compares the two on random updates).
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

Labels = tuple[str, ...]


class CounterSeries:
    """A counter per label values (exposed as ``<name>_total``, like ``prometheus_client.Counter``)."""

    __slots__ = ("_created", "documentation", "labelnames", "name", "values")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.values: dict[Labels, float] = {}
        self._created: dict[Labels, float] = {}

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        values = self.values
        if labels in values:
            values[labels] += amount
        else:
            values[labels] = float(amount)
            self._created[labels] = time.time()

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self.values.items():
            family.add_metric(labels, value, created=self._created[labels])
        return family


class HistogramSeries:
    """A histogram per label values, with ``prometheus_client.Histogram``'s buckets (a value
    counts in the first bucket whose upper bound is >= it; ``+Inf`` last)."""

    __slots__ = ("_bounds", "_created", "_les", "documentation", "labelnames", "name", "series")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        self._les = tuple(str(floatToGoString(b)) for b in bounds)  # type: ignore[no-untyped-call]
        #: label values -> [count per bucket (not cumulative)..., sum]
        self.series: dict[Labels, list[float]] = {}
        self._created: dict[Labels, float] = {}

    def observe(self, labels: Labels, value: float) -> None:
        slots = self.series.get(labels)
        if slots is None:
            slots = self.series[labels] = [0.0] * (len(self._bounds) + 1)
            self._created[labels] = time.time()
        slots[bisect_left(self._bounds, value)] += 1
        slots[-1] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, slots in self.series.items():
            cumulative, buckets = 0.0, []
            for le, count in zip(self._les, slots, strict=False):
                cumulative += count
                buckets.append((le, cumulative))
            family.add_metric(labels, buckets, sum_value=slots[-1])
            named = dict(zip(self.labelnames, labels, strict=True))
            family.samples.append(Sample(self.name + "_created", named, self._created[labels]))
        return family


class SeriesCollector(Collector):
    """Registers series with a ``CollectorRegistry``: each scrape renders their current values."""

    def __init__(self, series: Sequence[CounterSeries | HistogramSeries]) -> None:
        self.series = list(series)

    def collect(self) -> Iterator[Metric]:
        for one in self.series:
            yield one.family()
