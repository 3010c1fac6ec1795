"""Answer keys for the benchmarks' generators, read through the service's own stores.

The API never returns answer keys and the database holds them sealed with the target's data key,
so a benchmark opens them the way the service does: same settings (``litestar.toml`` plus the
given environment), same key-encryption keys, ``KeyStore.get_quiz``. Benchmark use only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import Iterable, Mapping

__all__ = ["read_answer_keys"]


async def _read(environ: Mapping[str, str], key_ids: list[str]) -> dict[str, str | None]:
    from app.db.data_keys import DataKeyStore
    from app.db.engine import Database
    from app.db.key_store import KeyStore
    from app.db.tables import utcnow
    from app.services.encryption import FieldEncryption
    from app.services.key_encryption_keys import LocalKeyEncryptionKeys
    from app.settings import load_settings

    settings = load_settings(environ=dict(environ))
    db = Database(settings.database)
    await db.start()
    try:
        keys = KeyStore(
            FieldEncryption(LocalKeyEncryptionKeys.from_settings(settings.encryption), DataKeyStore(), utcnow)
        )
        found: dict[str, str | None] = {}
        for key_id in key_ids:
            quiz = await keys.get_quiz(uuid.UUID(key_id))
            if quiz is None:
                raise RuntimeError(f"connection key {key_id} not found")
            found.update((str(q.id), q.answer_key) for q in quiz[0].questions)
        return found
    finally:
        await db.stop()


def read_answer_keys(database_url: str, key_ids: Iterable[str], environ: Mapping[str, str] = {}) -> dict[str, str | None]:
    """Question id -> answer key (``None`` for free responses) of every key in ``key_ids``. Runs on its own
    thread and event loop, so it can be called from sync code and from inside a running loop alike."""
    env = {**environ, "CK_DATABASE__URL": database_url, "CK_DATABASE__AUTO_MIGRATE": "false"}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _read(env, list(key_ids))).result()
