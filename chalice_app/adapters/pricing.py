"""The AWS Price List API: SageMaker's on-demand hourly price of an instance type in the stage's region.

The Price List's SageMaker products carry the instance type and the component (``Training``,
``Hosting``) as attributes; the API answers from us-east-1 for every region. Anything that does not
give one clear price (an unknown type, a throttled call, a shape we do not read) is ``None``, and the
forecast falls back to the bundled table (``chalice_app.cost``) and says so.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from chalice_app.cost import Price, bundled_price


class PricingAdapter:
    def __init__(self, client: Any, region: str):
        self._client = client
        self._region = region
        self._cache: dict[tuple[str, str], Price | None] = {}

    def hourly(self, instance_type: str, component: str) -> Price | None:
        key = (instance_type, component)
        if key not in self._cache:
            self._cache[key] = self._lookup(instance_type, component) or bundled_price(instance_type, component)
        return self._cache[key]

    def _lookup(self, instance_type: str, component: str) -> Price | None:
        filters = [
            {"Type": "TERM_MATCH", "Field": field, "Value": value}
            for field, value in (
                ("regionCode", self._region),
                ("instanceName", instance_type),
                ("component", component),
            )
        ]
        try:
            page = self._client.get_products(ServiceCode="AmazonSageMaker", Filters=filters, MaxResults=10)
        except (ClientError, BotoCoreError):
            return None  # the bundled table stands in; the forecast names its source
        prices = {price for item in page.get("PriceList", []) if (price := _on_demand_usd(item)) is not None}
        if len(prices) != 1:
            return None
        return Price(prices.pop(), "price-list-api", date.today().isoformat())


def _on_demand_usd(item: str | dict) -> float | None:
    """The hourly on-demand USD price of one Price List product (a JSON document)."""
    try:
        product = json.loads(item) if isinstance(item, str) else item
        for term in product["terms"]["OnDemand"].values():
            for dimension in term["priceDimensions"].values():
                if dimension.get("unit", "").lower() in ("hrs", "hour", "hours"):
                    value = float(dimension["pricePerUnit"]["USD"])
                    if value > 0:
                        return value
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


class BundledPrices:
    """The bundled table alone (the local runtime, or a stage that cannot reach the Price List)."""

    def hourly(self, instance_type: str, component: str) -> Price | None:
        return bundled_price(instance_type, component)
