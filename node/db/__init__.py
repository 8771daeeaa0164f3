"""The audit database: schema (one owner), engine, migrations."""
