"""The price table that turns status.usage into status.usage.estimatedCost, and the Kubernetes quantities usage reads.

A cluster admin sets it once in the chart's values (``pricing``); it reaches the operator as JSON in
``FINETUNE_PRICES`` (settings.py) and `finetune plan` reads the same JSON from ``--prices``. Prices are per
resource per hour, with a default and optional overrides for pods whose node selector matches (a GPU type, spot
nodes): the first override whose ``nodeSelector`` is contained in the job's ``spec.resources.nodeSelector`` wins,
resource by resource, over the default. It is an estimate from requests, not a bill.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

from pydantic import Field, ValidationError

from finetune_trainer.spec_base import ApiModel

_QUANTITY = re.compile(r"^([0-9.]+(?:[eE][+-]?[0-9]+)?)([KMGTPE]i|[numkMGTPE])?$")
_SUFFIX = {"": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
           "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
           "Pi": 2**50, "Ei": 2**60}
GIB = 2**30


def quantity(value: str) -> float:
    """A Kubernetes quantity ("500m", "32Gi", "1e3", "2") as a number; 0 for one that does not parse."""
    match = _QUANTITY.match(str(value).strip())
    if not match:
        return 0.0
    return float(Decimal(match.group(1)) * Decimal(_SUFFIX[match.group(2) or ""]))


class HourlyPrices(ApiModel):
    gpu_hour: float | None = Field(None, ge=0, description="Price of one GPU for an hour.")
    cpu_core_hour: float | None = Field(None, ge=0, description="Price of one CPU core for an hour.")
    memory_gib_hour: float | None = Field(None, ge=0, description="Price of one GiB of memory for an hour.")


class SelectorPrices(HourlyPrices):
    node_selector: dict[str, str] = Field(description="Applies to jobs whose nodeSelector holds all these labels.")


class Prices(ApiModel):
    currency: str = Field("USD", min_length=1, max_length=16)
    default: HourlyPrices = Field(default_factory=HourlyPrices)
    node_selectors: list[SelectorPrices] = Field(default_factory=list)

    def for_selector(self, node_selector: dict[str, str] | None) -> HourlyPrices:
        """The default, overlaid with the first matching override's prices."""
        selector = node_selector or {}
        match = next((o for o in self.node_selectors if o.node_selector.items() <= selector.items()), None)
        if match is None:
            return self.default
        chosen = {k: v for k, v in match.model_dump(exclude={"node_selector"}).items() if v is not None}
        return self.default.model_copy(update=chosen)

    def cost(self, node_selector: dict[str, str] | None, gpu_hours: float, cpu_core_hours: float,
             memory_gib_hours: float) -> dict[str, object] | None:
        """{amount, currency} for these resource hours; None when the table prices none of the resources used."""
        hourly = self.for_selector(node_selector)
        terms = [(gpu_hours, hourly.gpu_hour), (cpu_core_hours, hourly.cpu_core_hour),
                 (memory_gib_hours, hourly.memory_gib_hour)]
        if all(price is None for _, price in terms):
            return None
        return {"amount": round(sum(hours * (price or 0) for hours, price in terms), 4), "currency": self.currency}


def hourly_cost(prices: Prices, gpus: float, cpu: str | None, memory: str | None, nodes: int,
                node_selector: dict[str, str] | None) -> dict[str, object] | None:
    """`finetune plan`'s estimate before a run: what an hour of the job's requests (per node, times nodes) costs."""
    return prices.cost(node_selector, gpus * nodes, quantity(cpu or "0") * nodes, quantity(memory or "0") / GIB * nodes)


def parse_prices(text: str) -> Prices | None:
    """The table from its JSON (FINETUNE_PRICES, `finetune plan --prices`); None when unset. A bad table is an error
    that names the field, so an operator does not start with prices it cannot read."""
    if not text.strip():
        return None
    try:
        return Prices.model_validate(json.loads(text))
    except (ValueError, ValidationError) as error:
        raise ValueError(f"the price table (FINETUNE_PRICES / chart value pricing) is not valid: {error}") from None
