"""Tables of the metadata store and their migrations, by version number.

A migration is a list of statements applied in one transaction; the ``schema_version`` table records which ones
ran, so opening an older file upgrades it in place and opening a current one changes nothing.
Large arrays (CQT features) stay in ``.npy`` files; the store keeps their paths, shapes and content hashes.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

Migration = tuple[int, Sequence[str]]

MIGRATIONS: tuple[Migration, ...] = (
    (
        1,
        (
            """CREATE TABLE performances (
                dataset TEXT NOT NULL, perf TEXT NOT NULL, wav TEXT NOT NULL, dur_s DOUBLE NOT NULL,
                work TEXT NOT NULL, version TEXT, source TEXT, line_no INTEGER, audio_hash TEXT NOT NULL,
                audio_size BIGINT, audio_mtime_ns BIGINT, batch_id TEXT, updated_at TIMESTAMP DEFAULT current_timestamp,
                PRIMARY KEY (dataset, perf))""",
            """CREATE TABLE rejected (
                dataset TEXT NOT NULL, source TEXT NOT NULL, line_no INTEGER, perf TEXT, raw TEXT,
                reason TEXT NOT NULL, batch_id TEXT, recorded_at TIMESTAMP DEFAULT current_timestamp)""",
            """CREATE TABLE catalog_warnings (
                dataset TEXT NOT NULL, source TEXT NOT NULL, line_no INTEGER, perf TEXT, message TEXT NOT NULL,
                recorded_at TIMESTAMP DEFAULT current_timestamp)""",
            """CREATE TABLE works (
                dataset TEXT NOT NULL, work TEXT NOT NULL, work_id INTEGER NOT NULL,
                created_at TIMESTAMP DEFAULT current_timestamp,
                PRIMARY KEY (dataset, work), UNIQUE (dataset, work_id))""",
            """CREATE TABLE variants (
                dataset TEXT NOT NULL, variant TEXT NOT NULL, perf TEXT NOT NULL, speed DOUBLE NOT NULL,
                wav TEXT NOT NULL, dur_s DOUBLE NOT NULL, source_hash TEXT NOT NULL,
                PRIMARY KEY (dataset, variant))""",
            """CREATE TABLE features (
                dataset TEXT NOT NULL, variant TEXT NOT NULL, settings_hash TEXT NOT NULL, path TEXT NOT NULL,
                n_frames INTEGER NOT NULL, n_bins INTEGER NOT NULL, audio_hash TEXT NOT NULL,
                settings JSON, created_at TIMESTAMP DEFAULT current_timestamp,
                PRIMARY KEY (dataset, variant, settings_hash))""",
            """CREATE TABLE splits (
                dataset TEXT NOT NULL, perf TEXT NOT NULL, split TEXT NOT NULL, seed INTEGER,
                PRIMARY KEY (dataset, perf))""",
            """CREATE TABLE unseen_works (
                dataset TEXT NOT NULL, work_id INTEGER NOT NULL, split TEXT NOT NULL,
                PRIMARY KEY (dataset, work_id))""",
            """CREATE TABLE models (
                model_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, training_dir TEXT NOT NULL,
                checkpoint TEXT NOT NULL, epoch INTEGER, fingerprint TEXT, hparams JSON, metrics JSON,
                promoted BOOLEAN DEFAULT false, created_at TIMESTAMP DEFAULT current_timestamp)""",
            """CREATE TABLE embeddings (
                dataset TEXT NOT NULL, perf TEXT NOT NULL, model_id TEXT NOT NULL, segment INTEGER NOT NULL,
                start_frame INTEGER NOT NULL, vector FLOAT[] NOT NULL,
                PRIMARY KEY (dataset, perf, model_id, segment))""",
            """CREATE TABLE calibrations (
                dataset TEXT NOT NULL, model_id TEXT NOT NULL, record JSON NOT NULL,
                created_at TIMESTAMP DEFAULT current_timestamp, PRIMARY KEY (dataset, model_id))""",
            """CREATE TABLE centroids (
                dataset TEXT NOT NULL, model_id TEXT NOT NULL, work_id INTEGER NOT NULL, centroid FLOAT[] NOT NULL,
                radius DOUBLE, coherence DOUBLE, n_members INTEGER, PRIMARY KEY (dataset, model_id, work_id))""",
            """CREATE TABLE evaluations (
                dataset TEXT NOT NULL, model_id TEXT NOT NULL, test_set TEXT NOT NULL, metrics JSON NOT NULL,
                report_path TEXT, created_at TIMESTAMP DEFAULT current_timestamp,
                PRIMARY KEY (dataset, model_id, test_set))""",
            """CREATE TABLE ingest_batches (
                batch_id TEXT PRIMARY KEY, dataset TEXT NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
                n_good INTEGER DEFAULT 0, n_bad INTEGER DEFAULT 0, reason TEXT,
                received_at TIMESTAMP DEFAULT current_timestamp, updated_at TIMESTAMP DEFAULT current_timestamp)""",
        ),
    ),
    (
        2,
        (
            # the source-audio hash of the feature each segment was embedded from: a recording replaced by other
            # audio of the same length is embedded again
            "ALTER TABLE embeddings ADD COLUMN audio_hash TEXT",
        ),
    ),
    (
        4,
        (
            # the CQT settings of the features a model was trained on (its input contract); NULL for models
            # registered before: their contract is derived from their hparams as far as those say
            "ALTER TABLE models ADD COLUMN input_contract JSON",
        ),
    ),
    (
        5,
        (
            # musical categories of each performance (the data hparams' `labels:`); value NULL = the catalog line
            # has no value for that label, so missing values are counted, not guessed
            """CREATE TABLE performance_labels (
                dataset TEXT NOT NULL, perf TEXT NOT NULL, label TEXT NOT NULL, value TEXT,
                PRIMARY KEY (dataset, perf, label))""",
        ),
    ),
    (
        6,
        (
            # the size and mtime (ns) a feature file had when it was last read whole and found sound: a later scan
            # reads only files whose size or mtime changed since; NULL = never verified (or rewritten since)
            "ALTER TABLE features ADD COLUMN verified_size BIGINT",
            "ALTER TABLE features ADD COLUMN verified_mtime_ns BIGINT",
        ),
    ),
    (
        7,
        (
            # the shards a stage's commit loaded (csi_assets/shards.py): a commit retried after it went through
            # loads nothing twice; a shard planned again (its items pending once more) loses its entry first
            """CREATE TABLE shard_commits (
                stage TEXT NOT NULL, shard_id TEXT NOT NULL, n_rows INTEGER NOT NULL,
                committed_at TIMESTAMP DEFAULT current_timestamp, PRIMARY KEY (stage, shard_id))""",
        ),
    ),
    (
        8,
        (
            # the folders a dataset name stands for, recorded when a run first uses it (csi_assets/dataset_folders.py):
            # the same name must mean the same folders in every process, whatever its environment
            """CREATE TABLE dataset_folders (
                dataset TEXT PRIMARY KEY, folder TEXT NOT NULL, training_folder TEXT,
                bound_at TIMESTAMP DEFAULT current_timestamp)""",
        ),
    ),
)


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    row = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0])


def stored_version(con: duckdb.DuckDBPyConnection) -> int:
    """The file's schema version without writing anything (0 for a file with no tables): for read-only opens."""
    exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'")
    if not exists.fetchone()[0]:
        return 0
    return int(con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0])


def migrate(con: duckdb.DuckDBPyConnection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply every migration newer than the file's version, each in its own transaction; return the new version."""
    version = current_version(con)
    for number, statements in sorted(migrations, key=lambda m: m[0]):
        if number <= version:
            continue
        con.begin()
        try:
            for statement in statements:
                con.execute(statement)
            con.execute("INSERT INTO schema_version VALUES (?, current_timestamp)", [number])
            con.commit()
        except BaseException:
            con.rollback()
            raise
        version = number
    return version
