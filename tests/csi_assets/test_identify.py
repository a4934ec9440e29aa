"""Identification end to end on a real synthetic project: audio files in, ranked performances or works out, through
the same decode → CQT → segment embedding path as the references, with a model trained here for a minute; p-values
that account for the search and never claim more than the null sample supports."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import soxr

from csi_assets.assets import serving
from csi_assets.cli import main as csi
from csi_assets.identify import Identifier
from csi_assets.references import reference_rows
from csi_assets.store import Store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import models as model_store
from csi_assets.testsets import feature_item
from csi_model import hparams
from csi_model.audio import load_audio
from csi_model.augment import TempoRange
from csi_model.checkpoint import load_generator
from csi_model.synth import generate_covers
from csi_model.training import train
from tests.graph_fixtures import make_project, materialize
from tests.serving_fixtures import ORIGINALS_ONLY, materialize_data, random_model, register_model, serving_hparams

WORKS, PERFS, SECONDS = 5, 5, 6.0
TRAINED_HPARAMS = serving_hparams(
    chunk_frame=(72, 60, 48), chunk_s=72 * 2 * 0.04, learning_rate=0.004, max_epochs=40,
    spec_augmentation=hparams.SpecAugHParams(roll_pitch=hparams.RollPitchHParams(prob=0.8, shift_num=6)))
"""A window that spans a whole 6 s clip, pitch-roll augmentation and (in the fixture) the product's default
feature-domain tempo augmentation: enough to learn the synthetic works' transposition- and tempo-invariant content
in about 40 s of CPU training (without tempo augmentation one held-back rendition, played at another tempo, ranked
its work third on some CPUs)."""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Five works × five performances in the catalog, a model trained on all of them, their reference
    embeddings, and a sixth rendition of every work that the catalog does not hold."""
    root = tmp_path_factory.mktemp("identify")
    project = make_project(root, works=WORKS, perfs=PERFS, seconds=SECONDS, data_hparams=ORIGINALS_ONLY)
    materialize_data(project)
    hp = TRAINED_HPARAMS
    references = reference_rows(project.store, project.resources["dataset"].layout(project.dataset))
    result = train(hp, [feature_item(r) for r in references], project.training_dir, device="cpu",
                   tempo=TempoRange(0.8, 1.2))
    model = random_model(hp, result.num_classes)
    load_generator(result.latest_checkpoint, model)
    model_id = register_model(project, model, hp, epoch=result.last_epoch)
    assert materialize(project, [serving.reference_embeddings]).success
    held = root / "held_back"
    generate_covers(held, WORKS, PERFS + 1, seed=0, seconds=SECONDS)  # same works; rendition PERFS is new
    queries = [held / "wav" / f"w{w:03d}_p{PERFS}.wav" for w in range(WORKS)]
    return project, model_id, queries


@pytest.fixture(scope="module")
def strangers(served, tmp_path_factory):
    """One recording each of four works the catalog does not hold (same generator, work indexes 5..8)."""
    folder = tmp_path_factory.mktemp("strangers")
    generate_covers(folder, WORKS + 4, 1, seed=0, seconds=SECONDS)
    return [folder / "wav" / f"w{w:03d}_p0.wav" for w in range(WORKS, WORKS + 4)]


def _cli(project, *args: str) -> list[str]:
    return ["identify", *args, "--dataset-dir", str(project.dataset_dir), "--store", str(project.store_path)]


def test_held_back_renditions_rank_their_work_first(served) -> None:
    project, model_id, queries = served
    results = Identifier(project.store_path, project.dataset_dir).identify(queries, top=WORKS, works=True)
    ranks = [[m.work for m in r.matches].index(f"work_{w:03d}") + 1 for w, r in enumerate(results)]
    assert all(r.model == model_id for r in results)
    # By chance a work would be first one time in five, and all five in the top two 1 % of the time.
    assert ranks.count(1) >= 3 and max(ranks) <= 2, ranks


def test_json_lists_every_query_with_ranked_matches(served, capsys) -> None:
    project, model_id, queries = served
    assert csi(_cli(project, *map(str, queries[:3]), "--top", "4", "--json")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [q["query"] for q in printed] == list(map(str, queries[:3]))
    for query in printed:
        assert query["model"] == model_id and len(query["matches"]) == 4
        assert [m["rank"] for m in query["matches"]] == [1, 2, 3, 4]
        assert query["n_compared"] == WORKS * PERFS and 0 < query["p_pair_floor"] < 0.01
        assert all(set(m) == {"rank", "perf", "work", "distance", "z", "p", "p_pair", "p_floored"}
                   for m in query["matches"])
        distances = [m["distance"] for m in query["matches"]]
        assert distances == sorted(distances) and len({m["perf"] for m in query["matches"]}) == 4
        assert all(0.0 <= m["p_pair"] <= m["p"] <= 1.0 and isinstance(m["z"], float) for m in query["matches"])
        assert all(isinstance(m["p_floored"], bool) for m in query["matches"])
        assert all(m["perf"].startswith(m["work"].replace("work_", "w")) for m in query["matches"])


def test_works_mode_ranks_each_work_once_by_its_nearest_performance(served, capsys) -> None:
    project, _, queries = served
    assert csi(_cli(project, str(queries[0]), "--top", str(WORKS * PERFS), "--json")) == 0
    perfs = json.loads(capsys.readouterr().out)[0]["matches"]
    assert csi(_cli(project, str(queries[0]), "--works", "--top", "3", "--json", "--calibrated")) == 0
    works = json.loads(capsys.readouterr().out)[0]["matches"]
    assert len(works) == 3 and len({m["work"] for m in works}) == 3
    for match in works:
        nearest = min((m for m in perfs if m["work"] == match["work"]), key=lambda m: m["distance"])
        assert match["perf"] == nearest["perf"]
        assert match["distance"] == pytest.approx(nearest["distance"], abs=1e-5)
    assert csi(_cli(project, str(queries[0]), "--works", "--calibrated")) == 0
    table = capsys.readouterr().out
    assert "best perf" in table and "p" in table.split("\n")[1]


def test_a_recording_in_another_format_rate_and_channels_finds_itself(served, tmp_path) -> None:
    project, _, _ = served
    source = project.dataset_dir / "wav" / "w002_p1.wav"
    signal = load_audio(source)
    stereo = np.stack([signal, 0.5 * signal], axis=1)
    copy = tmp_path / "copy.flac"
    sf.write(copy, soxr.resample(stereo, 16000, 44100), 44100)
    [result] = Identifier(project.store_path, project.dataset_dir).identify([copy], top=1)
    assert result.matches[0].perf == "w002_p1" and result.matches[0].distance < 0.01


def test_clear_errors_exit_2_without_traceback(served, tmp_path, capsys) -> None:
    project, model_id, queries = served
    query = str(queries[0])
    empty = tmp_path / "empty.duckdb"
    assert csi(["identify", query, "--dataset-dir", str(project.dataset_dir), "--store", str(empty)]) == 2
    assert "materialize reference_embeddings first" in capsys.readouterr().err

    Store(empty).schema_version()  # a store with tables but nothing in them
    assert csi(["identify", query, "--dataset-dir", str(project.dataset_dir), "--store", str(empty)]) == 2
    assert "no promoted model" in capsys.readouterr().err

    row = model_store.get_model(project.store, model_id)
    model_store.register_model(Store(empty), **{k: getattr(row, k) for k in (
        "model_id", "dataset", "training_dir", "checkpoint", "epoch", "fingerprint", "hparams", "metrics",
        "input_contract")},
        promote=True)
    assert csi(["identify", query, "--dataset-dir", str(project.dataset_dir), "--store", str(empty)]) == 2
    assert "materialize reference_embeddings first" in capsys.readouterr().err


def _bad_queries(tmp_path) -> dict[str, str]:
    """{path: expected reason} for each kind of query that cannot be answered: caught by the header check
    (missing, directory, undecodable) or only when decoded (silent) or embedded (too short)."""
    (tmp_path / "folder.wav").mkdir()
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEnot really audio")
    sf.write(tmp_path / "silent.wav", np.zeros(16000 * 2, dtype=np.float32), 16000)
    sf.write(tmp_path / "short.wav", np.sin(np.arange(1600) * 0.2).astype(np.float32), 16000)
    return {str(tmp_path / "missing.wav"): "file not found", str(tmp_path / "folder.wav"): "is a directory",
            str(tmp_path / "broken.wav"): "cannot decode", str(tmp_path / "silent.wav"): "silent audio",
            str(tmp_path / "short.wav"): "too short"}


def test_every_good_query_is_answered_and_every_bad_one_listed(served, tmp_path, capsys) -> None:
    project, _, queries = served
    bad = _bad_queries(tmp_path)
    rng = np.random.default_rng(0)
    order = [str(q) for q in queries[:3]] + list(bad)
    rng.shuffle(order)
    assert csi(_cli(project, *order, "--json", "--top", "2")) == 1
    out = capsys.readouterr()
    entries = json.loads(out.out)
    assert [e["query"] for e in entries] == order
    for entry in entries:
        if entry["query"] in bad:
            assert bad[entry["query"]] in entry["error"] and entry["query"] in entry["error"]
        else:
            assert len(entry["matches"]) == 2 and "error" not in entry
    err_lines = out.err.strip().splitlines()
    assert all(any(path in line and reason in line for line in err_lines) for path, reason in bad.items())
    assert "3 of 8 queries answered" in out.err and "Traceback" not in out.err

    assert csi(_cli(project, str(queries[0]), *bad)) == 1
    text = capsys.readouterr()
    assert str(queries[0]) in text.out and not any(path in text.out for path in bad)


def test_no_answerable_query_exits_2_listing_each(served, tmp_path, capsys) -> None:
    project, _, _ = served
    bad = _bad_queries(tmp_path)
    assert csi(_cli(project, *bad)) == 2
    err = capsys.readouterr().err
    assert all(path in err and reason in err for path, reason in bad.items()) and "Traceback" not in err


def test_search_p_of_strangers_is_not_small_and_no_p_beats_the_null_sample(served, strangers, capsys) -> None:
    """Queries of works absent from the references have a best match by chance only: per search that must not
    look significant, even though per pair it does; and no p goes below 1/(n_pairs + 1)."""
    project, model_id, queries = served
    n_pairs = embedding_store.calibration(project.store, "dataset", model_id).calibration.n_pairs
    floor = 1.0 / (n_pairs + 1)
    results = Identifier(project.store_path, project.dataset_dir).identify([*strangers, *queries], top=WORKS * PERFS)
    for result in results:
        assert result.n_compared == WORKS * PERFS and result.p_pair_floor == floor
        assert all(m.p_pair >= floor and m.p >= 1.0 - (1.0 - floor) ** result.n_compared for m in result.matches)
        assert all(m.p_pair == floor for m in result.matches if m.p_floored)
    best_of_strangers = [r.matches[0] for r in results[:len(strangers)]]
    # Per pair every stranger's chance match looks significant; per search none does.
    assert max(m.p_pair for m in best_of_strangers) < 0.05 < min(m.p for m in best_of_strangers), best_of_strangers
    assert csi(_cli(project, str(strangers[0]), str(queries[0]), "--calibrated", "--top", str(WORKS * PERFS))) == 0
    table = capsys.readouterr().out
    assert "p_pair" in table and f"a search of {WORKS * PERFS} unrelated performances" in table
    shown = (results[0], results[len(strangers)])  # the two queries of the table
    # A match nearer than every null pair is printed as an upper bound, never as a smaller number.
    assert any(m.p_floored for r in shown for m in r.matches) == (f"< {floor:.1e}" in table)
