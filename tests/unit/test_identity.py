"""Which tracking URIs get a Google ID token (only registered IAP deployments), and the access settings' rules."""

from __future__ import annotations

import pytest

from mlflow_gcp import config, identity
from mlflow_gcp.errors import ConfigError
from mlflow_gcp.resources.iam import _edit_json, _json_pairs


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(identity.CONFIG_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(identity.URLS_ENV, raising=False)


def test_only_registered_deployments_get_a_token():
    url = "https://mlflow-dev-123.us-central1.run.app"
    assert identity.audience_for(url) is None
    identity.register(url + "/", "aud-1")
    assert identity.audience_for(url) == "aud-1"
    assert identity.audience_for("HTTPS://MLFLOW-DEV-123.us-central1.run.app/api/2.0") == "aud-1"
    assert identity.audience_for("https://evil.run.app") is None
    assert identity.audience_for("http://mlflow-dev-123.us-central1.run.app") is None  # another scheme
    identity.unregister(url)
    assert identity.audience_for(url) is None


def test_ci_lists_deployments_in_the_environment(monkeypatch):
    monkeypatch.setenv(identity.URLS_ENV, "https://a.run.app, https://b.run.app=custom-client")
    assert identity.audience_for("https://a.run.app") == config.ADC_CLIENT_ID
    assert identity.audience_for("https://b.run.app/x") == "custom-client"
    assert identity.audience_for("https://c.run.app") is None


def test_iap_mode_needs_members_and_valid_admins():
    with pytest.raises(ConfigError) as err:
        config.load(
            flags={"project": "my-proj-123", "access.mode": "iap", "access.admins": ["ana", "user:ben@example.com"]},
            environ={},
        )
    assert "access.members" in str(err.value) and "'ana' must be an email" in str(err.value)
    with pytest.raises(ConfigError, match="needs a prefix"):
        config.load(flags={"project": "my-proj-123", "access.members": ["ana@example.com"]}, environ={})
    ok = config.load(
        flags={"project": "my-proj-123", "access.mode": "iap", "access.members": ["domain:example.com"],
               "access.admins": ["user:ana@example.com", "ci@p.iam.gserviceaccount.com"]},
        environ={},
    )  # fmt: skip
    assert ok.access.admin_emails == ["ana@example.com", "ci@p.iam.gserviceaccount.com"]
    assert ok.access.audiences[0] == config.ADC_CLIENT_ID


def test_json_policy_edits_leave_others_and_conditions_alone():
    role = "roles/iap.httpsResourceAccessor"
    conditional = {"role": role, "members": ["user:cond@example.com"], "condition": {"expression": "true"}}
    policy = {"etag": "BwX", "bindings": [{"role": role, "members": ["user:other@example.com"]}, conditional]}
    assert _edit_json(policy, {(role, "user:ana@example.com")}, set())
    assert _json_pairs(policy) == {(role, "user:other@example.com"), (role, "user:ana@example.com")}
    assert _edit_json(policy, set(), {(role, "user:ana@example.com"), (role, "user:cond@example.com")})
    assert _json_pairs(policy) == {(role, "user:other@example.com")}
    assert policy["bindings"][1]["members"] == ["user:cond@example.com"] and policy["etag"] == "BwX"
    assert not _edit_json(policy, set(), {(role, "user:nobody@example.com")})
