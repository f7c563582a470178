"""UpdateOrderOperator: add or update a handful of orders given as documented order bodies."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kapture_provider.compat import AirflowException, AirflowFailException, BaseOperator, Context, mask_secret
from kapture_provider.exceptions import KaptureError, KaptureSetupError
from kapture_provider.hooks.kapture import KaptureHook
from kapture_provider.lineage_methods import ReportsLineage
from kapture_provider.metrics import RequestMetrics, emit_run, metrics_enabled, task_tags
from kapture_provider.payload import InvalidOrder, NullValues, check_null_values, personal_values, prepare_order

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage


class UpdateOrderOperator(ReportsLineage, BaseOperator):
    """Validate and send one order body, or a list of them, to Kapture's add-update endpoint.

    Every body is validated first (``order_info.order_id`` and ``customer_info.customer_name``
    non-empty, every value JSON-serialisable); an invalid one is reported and never sent.

    :param orders: an order body in the documented nested shape, or a list of them (templated; an
        XComArg works too). Personal fields in it are masked in logs and rendered templates.
    :param kapture_conn_id: the Kapture connection.
    :param max_failed_orders: how many orders may fail or be invalid before the task fails (default 0).
    :param timezone: timezone datetimes are written in (``yyyy-MM-dd HH:mm:ss``).
    :param null_values: what a ``None`` becomes: ``"omit"`` (default) leaves the field out of the body, so
        Kapture keeps what it holds; ``"empty"`` sends ``""``, clearing the field (docs/null-values.md).
    :return: ``{"succeeded", "failed", "invalid", "orders": [{"order_id", "status", "error"}]}`` —
        order ids and reasons only, no personal data. Pushed to XCom even when the task fails.
    """

    template_fields: Sequence[str] = ("orders", "kapture_conn_id")
    template_fields_renderers = {"orders": "json"}
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        orders: Any,
        kapture_conn_id: str = KaptureHook.default_conn_name,
        max_failed_orders: int = 0,
        timezone: str = "UTC",
        null_values: NullValues = "omit",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.orders = orders
        self.kapture_conn_id = kapture_conn_id
        self.max_failed_orders = max_failed_orders
        self.timezone = timezone
        self.null_values = check_null_values(null_values)
        self._invalid_at: dict[int, InvalidOrder] = {}  # found while rendering, by position
        self._run_summary: dict[str, Any] | None = None  # for OpenLineage, once the run has one
        self._undelivered = 0  # of the failed orders, those that failed transiently (for the metrics)

    def render_template_fields(self, context: Context, jinja_env: Any = None) -> None:
        """Render as usual, then make the rendered ``orders`` safe to store and show.

        Personal values are registered with the secret masker, so rendered fields and logs show
        ``***``. Bodies that are invalid are noted now, and non-finite numbers in them (which Airflow
        cannot store as rendered JSON) are replaced by text; such bodies are reported, never sent.
        """
        super().render_template_fields(context, jinja_env)
        _mask_personal_values(self.orders)
        for position, body in enumerate(_as_list(self.orders)):
            try:
                prepare_order(body, self.timezone, self.null_values)
            except InvalidOrder as err:
                self._invalid_at[position] = err
        self.orders = _finite_only(self.orders)

    def execute(self, context: Context) -> dict[str, Any]:
        orders = _as_list(self.orders)
        hook = KaptureHook(self.kapture_conn_id)
        hook.check_settings()
        metric_tags = task_tags(self.dag_id, self.task_id) if metrics_enabled() else None
        if metric_tags is not None:
            hook.metrics = RequestMetrics(metric_tags)
        outcomes: list[dict[str, Any]] = []
        try:
            for position, body in enumerate(orders):
                outcomes.append(self._update_one(hook, position, body))
        finally:
            hook.close()
        summary = {
            "succeeded": sum(o["status"] == "succeeded" for o in outcomes),
            "failed": sum(o["status"] == "failed" for o in outcomes),
            "invalid": sum(o["status"] == "invalid" for o in outcomes),
            "orders": outcomes,
        }
        self._run_summary = summary
        self.log.info("Kapture update: %d succeeded, %d failed, %d invalid",
                      summary["succeeded"], summary["failed"], summary["invalid"])  # fmt: skip
        if metric_tags is not None:
            emit_run(
                metric_tags, requests=hook.requests_sent, delivered=summary["succeeded"],
                refused=summary["failed"] - self._undelivered, undelivered=self._undelivered,
                invalid=summary["invalid"],
            )  # fmt: skip
        bad = summary["failed"] + summary["invalid"]
        if bad > self.max_failed_orders:
            context["ti"].xcom_push(key="return_value", value=summary)
            problems = "; ".join(f"#{o['position']} {o['order_id']}: {o['error']}" for o in outcomes if o["error"])
            raise AirflowException(
                f"{bad} of {len(outcomes)} orders failed or were invalid (max_failed_orders="
                f"{self.max_failed_orders}): {problems}"
            )
        return summary

    def _lineage(self) -> OperatorLineage:
        from kapture_provider.lineage import update_lineage  # only with the OpenLineage provider installed

        return update_lineage(kapture_conn_id=self.kapture_conn_id, summary=self._run_summary)

    def _update_one(self, hook: KaptureHook, position: int, body: Any) -> dict[str, Any]:
        order_id = _order_id_of(body)
        try:
            if position in self._invalid_at:
                raise self._invalid_at[position]
            order = prepare_order(body, self.timezone, self.null_values)
        except InvalidOrder as err:
            self.log.warning("Order #%d (%s) is invalid, not sent: %s", position, order_id, err)
            return {"position": position, "order_id": order_id, "status": "invalid", "error": str(err)}
        try:
            hook.post_order(order.data, order_id=order.order_id)
        except KaptureSetupError as err:
            raise AirflowFailException(str(err)) from None  # retrying cannot fix credentials or TLS settings
        except KaptureError as err:
            self.log.warning("Order #%d failed: %s", position, err)
            self._undelivered += err.retryable  # not refused: Kapture was down or overloaded
            return {
                "position": position,
                "order_id": order.order_id,
                "status": "failed",
                "error": err.message,
            }
        self.log.info("Order #%d (%s) updated in Kapture", position, order.order_id)
        return {"position": position, "order_id": order.order_id, "status": "succeeded", "error": None}


def _as_list(orders: Any) -> list[Any]:
    """One body or a sequence of them, as a list; text is refused (it is not an order body)."""
    if isinstance(orders, str | bytes):
        raise AirflowFailException(
            "orders rendered to text, not to order bodies: pass a dict or a list of dicts (an XComArg works), "
            "or set render_template_as_native_obj=True on the DAG"
        )
    return [orders] if isinstance(orders, Mapping) else list(orders or [])


def _finite_only(value: Any) -> Any:
    """A copy with NaN and ±Infinity written as text, so the rendered field can be stored as JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_only(v) for v in value]
    return value


def _order_id_of(body: Any) -> str | None:
    order_info = body.get("order_info") if isinstance(body, Mapping) else None
    value = order_info.get("order_id") if isinstance(order_info, Mapping) else None
    return str(value) if value not in (None, "") else None


def _mask_personal_values(value: Any) -> None:
    """Register every personal field's value with Airflow's secret masker."""
    for text in personal_values(value):
        mask_secret(text)
