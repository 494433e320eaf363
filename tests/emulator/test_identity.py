"""The emulator's Google identity through google-auth itself: credential files from ``/_emulator/identities``,
the OAuth 2.0 token endpoint (refresh-token and JWT-bearer grants), ID tokens and their certs, IAP's keys."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import google.auth
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import crypt, exceptions, jwt
from google.auth.transport.requests import Request
from google.oauth2 import id_token, service_account

from mlflow_gcp.emulator.apis.oauth2 import ADC_CLIENT_ID
from mlflow_gcp.emulator.server import Emulator

AUDIENCE = "https://mlflow.example.com"


def _file(emulator, tmp_path: Path, email: str, kind: str) -> Path:
    r = requests.post(f"{emulator.base_url}/_emulator/identities", json={"email": email, "type": kind}, timeout=30)
    r.raise_for_status()
    path = tmp_path / f"{kind}.json"
    path.write_text(json.dumps(r.json()))
    return path


def _verify(emulator, token: str, audience: str) -> dict:
    # google-auth's own verifier, fed the emulator's certs in Google's format.
    return id_token.verify_token(
        token, Request(), audience=audience, certs_url=f"{emulator.base_url}/_emulator/oauth2/v1/certs"
    )


def _service_account(clients, project: str, account_id: str = "iap-caller") -> dict:
    body = {"accountId": account_id, "serviceAccount": {}}
    return clients.iam().projects().serviceAccounts().create(name=f"projects/{project}", body=body).execute()


def test_authorized_user_file_refreshes_to_an_id_token(emulator, tmp_path):
    path = _file(emulator, tmp_path, "ana@example.com", "authorized_user")
    info = json.loads(path.read_text())
    assert info["type"] == "authorized_user" and info["client_id"] == ADC_CLIENT_ID
    creds, _ = google.auth.load_credentials_from_file(str(path))
    # google-auth always sends an authorized_user file's refresh to Google's token_uri; point it at the emulator.
    creds = creds.with_token_uri(info["token_uri"])
    creds.refresh(Request())
    assert creds.token and creds.valid
    claims = _verify(emulator, creds.id_token, ADC_CLIENT_ID)
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["email"] == "ana@example.com" and claims["email_verified"] is True
    assert claims["azp"] == ADC_CLIENT_ID and claims["exp"] - claims["iat"] == 3600
    # The subject is stable per email, across files.
    again = _file(emulator, tmp_path, "ana@example.com", "authorized_user")
    other, _ = google.auth.load_credentials_from_file(str(again))
    other = other.with_token_uri(info["token_uri"])
    other.refresh(Request())
    assert _verify(emulator, other.id_token, ADC_CLIENT_ID)["sub"] == claims["sub"]


def test_an_unknown_refresh_token_is_refused(emulator, tmp_path):
    path = _file(emulator, tmp_path, "ana@example.com", "authorized_user")
    info = {**json.loads(path.read_text()), "refresh_token": "1//not-issued"}
    creds, _ = google.auth.load_credentials_from_file(_write(tmp_path, info))
    with pytest.raises(exceptions.RefreshError, match="Token has been expired or revoked"):
        creds.with_token_uri(info["token_uri"]).refresh(Request())


def _write(tmp_path: Path, info: dict) -> str:
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(info))
    return str(path)


def test_service_account_key_file_fetches_id_tokens(emulator, clients, enabled_project, tmp_path, monkeypatch):
    sa = _service_account(clients, enabled_project)
    path = _file(emulator, tmp_path, sa["email"], "service_account")
    info = json.loads(path.read_text())
    assert info["client_email"] == sa["email"] and info["token_uri"].startswith(emulator.base_url)
    # The key is one of the account's keys, as if made with keys.create.
    keys = clients.iam().projects().serviceAccounts().keys().list(name=sa["name"]).execute()["keys"]
    assert [k["name"].rsplit("/", 1)[1] for k in keys] == [info["private_key_id"]]

    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    token = id_token.fetch_id_token(Request(), AUDIENCE)
    claims = _verify(emulator, token, AUDIENCE)
    assert claims["email"] == sa["email"] and claims["sub"] == sa["uniqueId"]

    # An access token through the same grant, without target_audience.
    creds = service_account.Credentials.from_service_account_file(
        str(path), scopes=["https://www.googleapis.com/auth/cloud-platform"]
    )
    creds.refresh(Request())
    assert creds.token.startswith("ya29.")

    # A deleted key no longer signs anything Google accepts.
    clients.iam().projects().serviceAccounts().keys().delete(
        name=f"{sa['name']}/keys/{info['private_key_id']}"
    ).execute()
    with pytest.raises(exceptions.RefreshError, match="Invalid JWT Signature"):
        id_token.fetch_id_token(Request(), AUDIENCE)


def test_an_assertion_signed_by_another_key_is_refused(emulator, clients, enabled_project, tmp_path):
    sa = _service_account(clients, enabled_project)
    info = json.loads(_file(emulator, tmp_path, sa["email"], "service_account").read_text())
    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    info["private_key"] = forged.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    creds = service_account.IDTokenCredentials.from_service_account_info(info, target_audience=AUDIENCE)
    with pytest.raises(exceptions.RefreshError, match="Invalid JWT Signature"):
        creds.refresh(Request())


def test_service_account_files_need_an_existing_account(emulator):
    r = requests.post(
        f"{emulator.base_url}/_emulator/identities",
        json={"email": "nobody@nowhere.iam.gserviceaccount.com", "type": "service_account"},
        timeout=10,
    )
    assert r.status_code == 404 and "does not exist" in r.json()["error"]["message"]


def test_id_tokens_and_iap_assertions_on_request(emulator):
    base = emulator.base_url
    token = requests.post(
        f"{base}/_emulator/identities/id-token", json={"email": "bob@example.com", "audience": "aud-1"}, timeout=10
    ).json()["id_token"]
    claims = _verify(emulator, token, "aud-1")
    assert claims["email"] == "bob@example.com" and claims["exp"] - claims["iat"] == 3600

    audience = "/projects/123/locations/us-central1/services/mlflow"
    assertion = requests.post(
        f"{base}/_emulator/iap/assertion", json={"email": "bob@example.com", "audience": audience}, timeout=10
    ).json()["assertion"]
    keys = requests.get(f"{base}/_emulator/iap/verify/public_key", timeout=10).json()
    assert all(pem.startswith("-----BEGIN PUBLIC KEY-----") for pem in keys.values())
    header = jwt.decode_header(assertion)
    assert header["alg"] == "ES256" and header["kid"] in keys
    claims = jwt.decode(assertion, certs=keys, audience=audience)
    assert claims["iss"] == "https://cloud.google.com/iap" and claims["email"] == "bob@example.com"
    assert claims["sub"] == f"accounts.google.com:{_verify(emulator, token, 'aud-1')['sub']}"
    assert claims["exp"] - claims["iat"] == 600 and claims["identity_source"] == "GOOGLE" and claims["google"] == {}
    with pytest.raises(ValueError):
        jwt.decode(assertion, certs=keys, audience="/projects/123/locations/us-central1/services/other")


def test_keys_survive_a_restart():
    data_dir = Path(tempfile.mkdtemp(prefix="mge-", dir="/tmp"))
    try:
        first = Emulator(data_dir).start()
        try:
            base = first.base_url
            token = requests.post(
                f"{base}/_emulator/identities/id-token", json={"email": "c@example.com", "audience": "a"}, timeout=10
            ).json()["id_token"]
            iap_keys = requests.get(f"{base}/_emulator/iap/verify/public_key", timeout=10).json()
        finally:
            first.stop()
        second = Emulator(data_dir).start()
        try:
            assert requests.get(f"{second.base_url}/_emulator/iap/verify/public_key", timeout=10).json() == iap_keys
            claims = id_token.verify_token(
                token, Request(), audience="a", certs_url=f"{second.base_url}/_emulator/oauth2/v1/certs"
            )
            assert claims["email"] == "c@example.com"
            assert second.world.identity.verify_id_token(token)["email"] == "c@example.com"
        finally:
            second.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_token_signed_by_someone_else_does_not_verify(emulator):
    from mlflow_gcp.emulator.core.identity import TokenError

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    now = int(time.time())
    claims = {"iss": "https://accounts.google.com", "aud": "a", "email": "e@example.com", "iat": now, "exp": now + 60}
    forged = jwt.encode(crypt.RSASigner.from_string(pem, "k"), claims).decode()
    with pytest.raises(TokenError) as err:
        emulator.world.identity.verify_id_token(forged)
    assert err.value.reason == "signature"
    expired = emulator.world.identity.id_token("e@example.com", "a", lifetime=-120)
    with pytest.raises(TokenError) as err:
        emulator.world.identity.verify_id_token(expired)
    assert err.value.reason == "expired"
