"""Setting up trace export for ``rabbitry up``, ``serve`` and ``worker`` from OpenTelemetry's
standard variables.

Nothing happens unless the SDK is installed (``pip install 'rabbitry[otel]'``) and the
environment asks for traces: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or ``none``) or an
OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and
``OTEL_SDK_DISABLED`` is not ``true``. The SDK reads the rest itself: ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_EXPORTER_OTLP_HEADERS``, the
batch processor's ``OTEL_BSP_*``. The exporter speaks OTLP over HTTP (protobuf, port 4318).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rabbitry.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

EXPORTERS = ("otlp", "console", "none")
_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted_exporter(environ: Mapping[str, str]) -> str | None:
    """The exporter the environment asks for (``None``: tracing is off). Pure."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not name:
        return "otlp" if any(environ.get(v, "").strip() for v in _ENDPOINTS) else None
    if name not in EXPORTERS:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={name!r} is not supported: use one of {', '.join(EXPORTERS)}"
        )
    return None if name == "none" else name


def configure_tracing(environ: Mapping[str, str], service: str) -> Callable[[], None] | None:
    """Install a global tracer provider exporting as ``environ`` says, named ``service``
    unless ``OTEL_SERVICE_NAME`` says otherwise; its shutdown (which flushes the spans
    still buffered), or ``None`` when tracing stays off."""
    exporter_name = wanted_exporter(environ)
    if exporter_name is None:
        return None
    try:
        sdk = importlib.util.find_spec("opentelemetry.sdk")
    except ImportError:
        sdk = None
    if sdk is None:
        log.warning(
            "traces asked for (OTEL_*) but the OpenTelemetry SDK is not installed: "
            "pip install 'rabbitry[otel]'"
        )
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, which win.
    named = "OTEL_SERVICE_NAME" in environ
    resource = Resource.create() if named else Resource.create({"service.name": service})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(_exporter(exporter_name)))
    trace.set_tracer_provider(provider)
    log.info("exporting traces (%s) as %s", exporter_name, resource.attributes["service.name"])
    return provider.shutdown


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            "OTLP export needs opentelemetry-exporter-otlp-proto-http: pip install 'rabbitry[otel]'"
        ) from None
    return OTLPSpanExporter()
