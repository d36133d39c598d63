"""The OpenAI-compatible request, pure: the body goes as the gateway rewrote it (it is
already OpenAI-shaped); only its URL and headers are the adapter's."""

from __future__ import annotations

from urllib.parse import quote

from gateway.config import ProviderConfig
from gateway.providers.base import UpstreamRequest


def url_template(config: ProviderConfig) -> str:
    """``base_url`` + ``chat_path``; may hold ``{model}`` (Azure-style deployments)."""
    return config.base_url.rstrip("/") + "/" + config.chat_path.lstrip("/")


def path_template(config: ProviderConfig, path: str) -> str:
    """``base_url`` + ``path`` (may hold ``{model}``)."""
    return config.base_url.rstrip("/") + "/" + path.lstrip("/")


def embeddings_url_template(config: ProviderConfig) -> str:
    """``base_url`` + ``embeddings_path`` (may hold ``{model}`` too)."""
    return config.base_url.rstrip("/") + "/" + config.embeddings_path.lstrip("/")


def url(template: str, request: UpstreamRequest) -> str:
    if "{model}" not in template:
        return template
    return template.replace("{model}", quote(str(request.body.get("model", "")), safe=""))


def headers(config: ProviderConfig, request: UpstreamRequest) -> dict[str, str]:
    """JSON in, SSE or JSON out, the request id, the operator's then the call's headers,
    and the provider key as ``auth_header`` (never the client's credential)."""
    out = {
        "Content-Type": "application/json",
        "Accept": "text/event-stream" if request.body.get("stream") else "application/json",
        "X-Request-Id": request.request_id,
        **config.headers,
        **request.extra_headers,
    }
    if request.api_key:
        scheme = config.auth_scheme
        out[config.auth_header] = f"{scheme} {request.api_key}" if scheme else request.api_key
    return out
