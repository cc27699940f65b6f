"""The allow-list's admin endpoints in-process against the real PostgreSQL: grant, list, revoke,
bad ids, scopes; and that a grant is what the worker's access check reads."""

from __future__ import annotations

import random

from aiconv.store.repository import Store
from aiconv.web import auth
from tests.support.admin import KEY, admin_client, bearer, settings_for
from tests.support.database import open_pool


async def test_grant_list_and_revoke_a_user_and_a_chat(
    database_url: str, redis_prefix: str
) -> None:
    user, chat = random.randrange(10**6, 10**7), -random.randrange(10**6, 10**7)
    settings = settings_for(database_url, redis_prefix)
    async with admin_client(settings) as http:
        granted = await http.post(f"/admin/access/users/{user}", headers=bearer())
        assert granted.status_code == 200
        assert (granted.json()["id"], granted.json()["granted_by"]) == (user, "tests")
        again = await http.post(f"/admin/access/users/{user}", headers=bearer())
        assert again.json()["created_at"] == granted.json()["created_at"]  # idempotent
        assert (await http.post(f"/admin/access/chats/{chat}", headers=bearer())).status_code == 200

        listed = (await http.get("/admin/access", headers=bearer())).json()
        assert listed["mode"] == "open"
        assert {("user", user), ("chat", chat)} <= {(g["kind"], g["id"]) for g in listed["grants"]}

        async with open_pool(database_url, name="test") as pool:
            store = Store(pool)
            assert await store.access_granted(user, 1)
            assert await store.access_granted(None, chat)
            revoked = await http.delete(f"/admin/access/users/{user}", headers=bearer())
            assert revoked.status_code == 200 and revoked.json()["revoked"] is True
            assert not await store.access_granted(user, 1)
        missing = await http.delete(f"/admin/access/users/{user}", headers=bearer())
        assert missing.status_code == 404 and "error" in missing.json()


async def test_bad_ids_and_kinds_are_refused_and_writing_needs_the_write_scope(
    database_url: str, redis_prefix: str
) -> None:
    async with admin_client(settings_for(database_url, redis_prefix)) as http:
        for path in ("/admin/access/users/abc", f"/admin/access/users/{2**64}"):
            response = await http.post(path, headers=bearer())
            assert response.status_code == 400 and "64-bit" in response.json()["error"]
        assert (await http.post("/admin/access/bots/1", headers=bearer())).status_code == 404
        reader = bearer(auth.mint(KEY, "reader", 60, ("read",)))
        assert (await http.get("/admin/access", headers=reader)).status_code == 200
        assert (await http.post("/admin/access/users/1", headers=reader)).status_code == 403
        assert (await http.post("/admin/access/users/1")).status_code == 401
