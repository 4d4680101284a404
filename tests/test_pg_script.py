"""The runner (scripts/test.sh) provides a throwaway PostgreSQL via scripts/pg-dev.sh.

Fails, rather than skips, when it does not: the PostgreSQL catalogue tests
would otherwise silently not run.
"""

import asyncio
import os

import asyncpg

HINT = "run the suite with scripts/test.sh, which starts PostgreSQL via scripts/pg-dev.sh"


def _pg_url() -> str:
    url = os.environ.get("STREAMD_TEST_PG_URL")
    assert url, f"STREAMD_TEST_PG_URL is not set: {HINT}"
    assert url.startswith("postgresql+asyncpg://"), url
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def test_pg_dev_cluster_answers():
    dsn = _pg_url()
    pg_dir = os.environ.get("STREAMD_TEST_PG_DIR")
    assert pg_dir and os.path.isdir(pg_dir), f"STREAMD_TEST_PG_DIR is not a directory: {HINT}"

    async def probe():
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            one = await conn.fetchval("SELECT 1")
            data_dir = await conn.fetchval("SHOW data_directory")
        finally:
            await conn.close()
        return one, data_dir

    one, data_dir = asyncio.run(probe())
    assert one == 1
    # The server is the one pg-dev.sh started in STREAMD_TEST_PG_DIR.
    real_pg_dir = os.path.realpath(pg_dir)
    assert os.path.realpath(data_dir).startswith(real_pg_dir + os.sep), (data_dir, pg_dir)
