"""Remove a user and watch their session die: the sessions part over HTTP (docs/sessions.md).

Run against `rabbitry up` (or USER and SESSION served apart):
    RABBITRY_ADMIN_TOKEN=change-me-to-a-long-secret rabbitry up &
    RABBITRY_ADMIN_TOKEN=change-me-to-a-long-secret python examples/sessions.py
"""

from __future__ import annotations

import os
import time

import httpx

USER = os.environ.get("RABBITRY_USER_URL", "http://127.0.0.1:8000")  # USER (tenants, users)
SESSION = os.environ.get("RABBITRY_SESSION_URL", USER)  # SESSION (login, sessions/me)
admin = {"Authorization": f"Bearer {os.environ['RABBITRY_ADMIN_TOKEN']}"}

with httpx.Client(timeout=10) as http:
    http.post(f"{USER}/api/tenants", json={"name": "acme"}, headers=admin).raise_for_status()
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
