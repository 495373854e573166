"""The metric registry: each metric's file registers it once, with everything the rest of the
package needs to know about it.

A registration (:func:`register_metric`) holds the function, its call shape (``kind``), its
``"default"`` (published) and ``"fast"`` keyword arguments, the keys of its result shown in
summaries (``headline``), whether a per-run evaluation runs it (``suite``) and the capabilities
the evaluation layer asks for instead of testing names (``partition_units``, ``from_sampler``).
``METRICS``, ``KINDS`` and ``PRESETS`` are read-only live views of it, so a metric registered
later (in a user's own module) shows up everywhere at once.

Adding a metric: write ``metrics/my_metric.py`` with a pure numpy function and a
``register_metric(...)`` call, then add one import line to ``metrics/__init__.py``; the
evaluation suite, ``gatedvae evaluate --metrics``, the headline table and the registry tests pick
it up from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..errors import ConfigError
from ..io import unknown_choice

__all__ = ["MetricSpec", "KIND_NAMES", "register_metric", "registered", "get_metric", "METRICS", "KINDS", "PRESETS"]

#: The call shapes a metric may have (see :mod:`gatedvae.metrics`).
KIND_NAMES: tuple[str, ...] = ("arrays", "sampler", "models", "codes")


@dataclass(frozen=True)
class MetricSpec:
    """One registered metric.

    Attributes:
        name: the registry name (``compute(name, ...)``, ``gatedvae evaluate --metrics name``).
        fn: the metric; its call shape is ``kind``'s (see :mod:`gatedvae.metrics`).
        kind: ``"arrays"``, ``"sampler"``, ``"models"`` or ``"codes"``.
        presets: ``{"default": kwargs, "fast": kwargs}``: the published settings and a quick set.
        headline: keys of its result shown in summaries (dotted for nested entries:
            ``"partition.disentanglement"``).
        suite: whether a per-run evaluation (``gatedvae evaluate``) runs it when no metric is named.
        not_in_suite: the one-line answer for a user who names a metric that cannot run on one run
            (UDR compares several runs); empty for suite metrics.
        aliases: short names of ``--metrics`` that select it (several metrics may share one:
            ``dci`` names the three DCI variants).
        partition_units: the metric accepts ``units=`` (groups of latent indices) and then also
            scores the groups as units in ``result["partition"]``: the evaluation passes a gated
            run's partitions.
        from_sampler: sampler metrics only: ``fn(sampler, rng, **kwargs)`` over any
            :class:`~gatedvae.metrics.sampling.FactorSampler`, used on labelled (non-grid)
            datasets where the evaluation samples observed factor combinations.
    """

    name: str
    fn: Callable[..., dict]
    kind: str
    presets: Mapping[str, Mapping[str, Any]]
    headline: tuple[str, ...] = ()
    suite: bool = True
    not_in_suite: str = ""
    aliases: tuple[str, ...] = ()
    partition_units: bool = False
    from_sampler: Callable[..., dict] | None = field(default=None, repr=False)

    @property
    def needs_factors(self) -> bool:
        """Whether the metric is supervised (needs the ground-truth factors)."""
        return self.kind in ("arrays", "sampler")


_REGISTRY: dict[str, MetricSpec] = {}


def register_metric(
    name: str,
    fn: Callable[..., dict],
    *,
    kind: str,
    default: Mapping[str, Any],
    fast: Mapping[str, Any],
    headline: tuple[str, ...] = (),
    suite: bool = True,
    not_in_suite: str = "",
    aliases: tuple[str, ...] = (),
    partition_units: bool = False,
    from_sampler: Callable[..., dict] | None = None,
) -> MetricSpec:
    """Register metric ``name`` (see :class:`MetricSpec` for the fields); returns its spec.

    The registration order is the order in which an evaluation runs the metrics and reports them.
    Registering a name twice is an error (two files claiming one metric).
    """
    if name in _REGISTRY:
        raise ConfigError(f"metric {name!r} is registered twice")
    if kind not in KIND_NAMES:
        raise unknown_choice("metric kind", kind, KIND_NAMES)
    if from_sampler is not None and kind != "sampler":
        raise ConfigError(f"metric {name!r}: from_sampler is for sampler metrics, not {kind!r}")
    spec = MetricSpec(
        name=name,
        fn=fn,
        kind=kind,
        presets={"default": dict(default), "fast": dict(fast)},
        headline=tuple(headline),
        suite=bool(suite),
        not_in_suite=not_in_suite,
        aliases=tuple(aliases),
        partition_units=bool(partition_units),
        from_sampler=from_sampler,
    )
    _REGISTRY[name] = spec
    return spec


def registered() -> tuple[MetricSpec, ...]:
    """Every registered metric, in registration order."""
    return tuple(_REGISTRY.values())


def get_metric(name: str) -> MetricSpec:
    """The spec of metric ``name``; ConfigError with the nearest name for an unknown one."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise unknown_choice("metric", name, _REGISTRY) from None


V = TypeVar("V")


class _View(Mapping[str, V], Generic[V]):
    """A read-only, always current ``name -> field`` view of the registry."""

    def __init__(self, get: Callable[[MetricSpec], V], doc: str) -> None:
        self._get = get
        self.__doc__ = doc

    def __getitem__(self, name: str) -> V:
        return self._get(_REGISTRY[name])

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return repr(dict(self))


#: name -> metric function.
METRICS: Mapping[str, Callable[..., dict]] = _View(lambda s: s.fn, "name -> metric function")
#: name -> call shape (see :mod:`gatedvae.metrics`).
KINDS: Mapping[str, str] = _View(lambda s: s.kind, "name -> call shape")
#: name -> {"default": kwargs, "fast": kwargs}.
PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = _View(lambda s: s.presets, "name -> presets")
