"""MLflow's ``mlflow.request_header_provider`` plugin: a Google ID token on every request to a deployment behind
Identity-Aware Proxy, so ``import mlflow`` with only ``MLFLOW_TRACKING_URI`` set simply works.

MLflow asks each registered provider, per request, whether it applies (``in_context``) and for its headers; it does
not say which URL the request goes to (mlflow/utils/rest_utils.py ``http_request``), so the provider decides by the
current tracking URI, which is also where proxied artifacts go. It applies only to tracking URIs registered as IAP
deployments (identity.audience_for): other servers never see the token.
"""

from __future__ import annotations

from mlflow.tracking.request_header.abstract_request_header_provider import RequestHeaderProvider

from . import identity


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri() or ""


class IapRequestHeaderProvider(RequestHeaderProvider):
    def in_context(self) -> bool:
        uri = _tracking_uri()
        return uri.startswith(("http://", "https://")) and identity.audience_for(uri) is not None

    def request_headers(self) -> dict[str, str]:
        audience = identity.audience_for(_tracking_uri())
        if audience is None:
            return {}
        try:
            return {"Authorization": f"Bearer {identity.id_token(audience)}"}
        except identity.NoIdentity as exc:
            # MLflow would send the request anyway and IAP would answer 401: say what to do instead.
            from mlflow.exceptions import MlflowException

            raise MlflowException(
                f"This MLflow server is behind Identity-Aware Proxy and needs a Google identity: {exc}. "
                "Run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS."
            ) from None
