"""Remove a user and watch their session die: the sessions part over HTTP (docs/sessions.md).

Run against `rabbitry up`, from the same directory (or USER and SESSION served apart):
    rabbitry up &
    python examples/sessions.py [URL [SESSION_URL]]

URL is where `rabbitry up` (or `serve user`) listens, http://127.0.0.1:8000 by default, and
SESSION_URL where `serve session` does (URL by default). The admin token is
RABBITRY_ADMIN_TOKEN, or the one `rabbitry up` generated and keeps in var/admin-token
(RABBITRY_DATA_DIR/admin-token).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

USER = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"  # tenants, users
SESSION = sys.argv[2] if len(sys.argv) > 2 else USER  # login, sessions/me
kept = Path(os.environ.get("RABBITRY_DATA_DIR", "var")) / "admin-token"
admin_token = os.environ.get("RABBITRY_ADMIN_TOKEN") or (
    kept.read_text().strip() if kept.exists() else ""
)
if not admin_token:
    raise SystemExit(f"set RABBITRY_ADMIN_TOKEN (no {kept}: start `rabbitry up` here first)")
admin = {"Authorization": f"Bearer {admin_token}"}

with httpx.Client(timeout=10) as http:
    tenant = http.post(f"{USER}/api/tenants", json={"name": "acme"}, headers=admin)
    if tenant.status_code != 409:  # 409: made by an earlier run
        tenant.raise_for_status()
    ann = {"username": "ann", "password": "correct horse"}
    user = http.post(f"{USER}/api/tenants/acme/users", json=ann, headers=admin).json()
    print("user", user["id"], "created in acme")

    login = http.post(f"{SESSION}/api/tenants/acme/sessions", json=ann).json()
    token = {"Authorization": f"Bearer {login['token']}"}
    me = http.get(f"{SESSION}/api/tenants/acme/sessions/me", headers=token)
    print("sessions/me:", me.status_code, me.json()["username"])

    removal = http.delete(f"{USER}/api/tenants/acme/users/{user['id']}", headers=admin)
    print("DELETE user:", removal.status_code, removal.json()["request"])

    deadline = time.monotonic() + 10
    while http.get(f"{SESSION}/api/tenants/acme/sessions/me", headers=token).status_code == 200:
        if time.monotonic() > deadline:
            raise SystemExit("the session outlived its user")
        time.sleep(0.05)
    print("sessions/me:", 401, "- the session went with its user")
