"""Faults on disk and bad input through the public functions: detected and rebuilt, or refused clearly.

- Artifacts: a truncated or corrupted cached index, an index cached for another model, a build killed halfway,
  a missing image in a pool, an image path that leaves the data root.
- Fuzz: random and hostile query inputs through search, compare, the map placement and the API's image
  handling; the only exception allowed out is the UI's UserError (shown to the person as it is).
- Untrusted checkpoints: weights only from safetensors, no remote code unless asked.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.map_tab import place_query
from app.search_tab import api_image, search_api
from app.services import Services
from app.usecases import UserError, compare, search
from tests.app_fixture import build_services
from tests.mbeir_fixture import build_fixture
from trace_core.embed_pool import cache_path, expected_manifest, pool_index
from trace_core.loading import ModelNotFoundError, load_model
from trace_core.mbeir import discover_pairs, load_pair


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> Services:
    return build_services(tmp_path_factory.mktemp("robust"), with_analysis=False, with_map=True)


# ------------------------------------------------------------------------------------------ artifacts
@pytest.fixture()
def pool_setup(services, tmp_path):
    (pair,) = discover_pairs(services.root, "test", "mscoco_task0")
    _, pool, _ = load_pair(pair)
    cache = tmp_path / "cache"
    fresh = pool_index(services.encoder, pool, services.root, cache, pair.pool_file.stem, progress=False)
    folder = cache_path(cache, pair.pool_file.stem, expected_manifest(services.encoder, pool))
    return pair, pool, cache, folder, fresh


def _reload(services, pair, pool, cache):
    return pool_index(services.encoder, pool, services.root, cache, pair.pool_file.stem, progress=False)


@pytest.mark.parametrize("damage", ["truncate-embeddings", "corrupt-embeddings", "garbage-manifest", "delete-ids"])
def test_a_damaged_cached_index_is_detected_and_rebuilt_identical(services, pool_setup, damage, caplog):
    pair, pool, cache, folder, fresh = pool_setup
    files = {p.name: p for p in folder.iterdir()}
    if damage == "truncate-embeddings":
        f = next(p for n, p in files.items() if n.endswith(".npy"))
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "corrupt-embeddings":  # same size, one flipped byte: only the checksum sees it
        f = next(p for n, p in files.items() if n.endswith(".npy"))
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "garbage-manifest":
        files["manifest.json"].write_text("{not json")
    else:
        next(p for n, p in files.items() if "ids" in n).unlink()
    caplog.set_level("INFO", logger="trace_core.embed_pool")
    again = _reload(services, pair, pool, cache)
    assert ("unusable" in caplog.text and "rebuilding" in caplog.text) or "no cached index" in caplog.text
    assert again.ids == fresh.ids and np.allclose(again.embeddings, fresh.embeddings, atol=1e-6)


def test_an_index_cached_for_another_model_is_never_loaded(services, pool_setup, caplog):
    pair, pool, cache, folder, fresh = pool_setup
    doc = json.loads((folder / "manifest.json").read_text())
    doc["manifest"]["model_revision"] = "someone-else"  # files intact, checksums valid: only the model differs
    (folder / "manifest.json").write_text(json.dumps(doc))
    again = _reload(services, pair, pool, cache)
    assert "rebuilding" in caplog.text and "model_revision" in caplog.text
    assert np.allclose(again.embeddings, fresh.embeddings, atol=1e-6)
    assert json.loads((folder / "manifest.json").read_text())["manifest"]["model_revision"] != "someone-else"


def test_a_build_killed_halfway_leaves_nothing_that_loads_and_the_next_start_rebuilds(services, pool_setup,
                                                                                      monkeypatch):
    pair, pool, cache, folder, fresh = pool_setup
    shutil.rmtree(folder)
    # what a kill during the save leaves: a temporary sibling folder with part of the files
    partial = folder.with_name(f".{folder.name}.abc123")
    partial.mkdir()
    (partial / "embeddings.npy").write_bytes(b"\x93NUMPY partial")
    from trace_core.index import storage

    written = []
    real_write = storage.write_file

    def killed(*args, **kwargs):  # the first file is written, then the process is killed
        if written:
            raise KeyboardInterrupt("killed")
        written.append(args[0])
        return real_write(*args, **kwargs)

    monkeypatch.setattr(storage, "write_file", killed)
    with pytest.raises(KeyboardInterrupt):
        _reload(services, pair, pool, cache)
    assert written and not folder.exists()  # the interrupted save published nothing
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.tmp-")]  # nor left it
    monkeypatch.undo()
    again = _reload(services, pair, pool, cache)
    assert folder.is_dir() and np.allclose(again.embeddings, fresh.embeddings, atol=1e-6)


def test_pairs_with_a_missing_or_escaping_image_are_left_out_with_a_note(services, tmp_path, monkeypatch):
    fx = build_fixture(tmp_path / "data")
    root = fx["root"]
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(secret)
    # a candidate image deleted from the cirr pool
    cand = next(json.loads(line) for line in fx["pool_files"]["cirr_task7"].read_text().splitlines()
                if line.strip() and json.loads(line)["img_path"])
    (root / cand["img_path"]).unlink()
    # an mscoco query whose image path leaves the data root
    qfile = fx["query_files"]["mscoco_task0"]
    lines = qfile.read_text().splitlines()
    first = json.loads(lines[0])
    first["query_img_path"], first["query_modality"] = "../secret.png", "image,text"
    qfile.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    loaded = Services.load("unused", root, "test", str(tmp_path / "c"), encoder=services.encoder,
                           embedding_map=False)
    assert sorted(loaded.tasks) == ["webqa_task1"]
    notes = " ".join(loaded.notes)
    assert "cirr_task7 is left out" in notes and cand["did"] in notes and "not found" in notes
    assert "mscoco_task0 is left out" in notes and first["qid"] in notes and "escapes the data root" in notes
    assert not any("secret" in p for p in opened)  # never read
    wfile = fx["query_files"]["webqa_task1"]
    w = [json.loads(line) for line in wfile.read_text().splitlines() if line.strip()]
    w[0]["query_img_path"] = "/etc/passwd"
    wfile.write_text("".join(json.dumps(o) + "\n" for o in w))
    with pytest.raises(ValueError, match="no usable"):  # nothing left: refused as a whole, clearly
        Services.load("unused", root, "test", str(tmp_path / "c"), encoder=services.encoder, embedding_map=False)


# ------------------------------------------------------------------------------------------ fuzz
def _texts(rng: random.Random) -> list:
    alphabet = "abc xyz 0123 ümlaut 漢字 🙂 \u202e \x00 \t\n <script>alert(1)</script> ../../etc/passwd"
    out = ["", " ", "\n\t", None, "a" * 2001, "x" * 2000, "🙂" * 50, "\x00\x01\x02", "%s%s%n", "' OR 1=1 --"]
    out += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200))) for _ in range(12)]
    out += [b"bytes", 12, ["list"]]
    return out


def _images(tmp: Path) -> list:
    broken = tmp / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    truncated = tmp / "truncated.png"
    Image.new("RGB", (64, 64), "red").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    text_file = tmp / "notes.txt"
    text_file.write_text("not an image")
    return [None, Image.new("RGB", (1, 1)), Image.new("RGB", (1, 3000)), Image.new("L", (3000, 1)),
            Image.new("RGBA", (40, 40), (0, 0, 0, 0)), Image.new("P", (20, 20)), Image.new("I;16", (30, 30)),
            Image.new("RGB", (9000, 9000)), str(broken), str(truncated), str(text_file), str(tmp), str(tmp / "nope.png"),
            "/etc/passwd", "../../../../etc/passwd"]


def test_fuzzed_queries_get_a_result_or_a_clear_message(services, tmp_path):
    rng = random.Random(1234)
    texts, images = _texts(rng), _images(tmp_path)
    # valid values weighted up, so that many trials get through to the model
    tasks = [*services.tasks] * 4 + ["nope_task9", "", None, "../cirr_task7"]
    modes = ["auto", "always", "never"] * 3 + ["sometimes", ""]
    ks = [1, 5, 10**12, "7", 3.0] * 3 + [0, -3, 2.7, float("nan"), float("inf"), "seven", None]
    served = refused = 0
    for trial in range(120):
        args = (rng.choice(tasks), rng.choice(texts), rng.choice(images), rng.choice(modes), rng.choice(ks))
        try:
            res = search(services, args[0], args[1], args[2], None, args[3], args[4])
        except UserError as exc:
            assert str(exc) and "Traceback" not in str(exc)
            refused += 1
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            pytest.fail(f"trial {trial}: {args!r} raised {type(exc).__name__}: {exc}")
        served += 1
        assert 1 <= len(res.hits) <= len(services.tasks[args[0]].pool)
        assert all(np.isfinite(h.score) for h in res.hits)
    assert served >= 5 and refused >= 10  # both paths exercised
    # and the model still answers normally afterwards
    assert search(services, "webqa_task1", "who?", None, None, "never", 3).hits


def test_fuzzed_compare_and_map_placement(services, tmp_path):
    rng = random.Random(99)
    texts, images = _texts(rng), _images(tmp_path)
    for _ in range(25):
        task, text, image = rng.choice([*services.tasks, "x"]), rng.choice(texts), rng.choice(images)
        calls = [(compare, (services, task, text, image, None, rng.choice([1, 4, "x", -1]))),
                 (place_query, (services, task, text, image, rng.choice(["auto", "never", "?"]), 3))]
        for fn, args in calls:
            try:
                fn(*args)
            except UserError:
                pass
            except Exception as exc:  # noqa: BLE001
                pytest.fail(f"{fn.__name__}{args[1:]!r}: {type(exc).__name__}: {exc}")


def test_the_api_reads_only_uploaded_files_or_the_data_root(services, tmp_path, monkeypatch):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(uploads))
    inside = uploads / "q.png"
    Image.new("RGB", (16, 16), "blue").save(inside)
    outside = tmp_path / "private.png"
    Image.new("RGB", (16, 16), "red").save(outside)
    assert api_image(services, {"path": str(inside)}).size == (16, 16)
    data_image = next(p for p in services.root.rglob("*.png"))
    assert api_image(services, str(data_image)) is not None
    link = uploads / "link.png"
    link.symlink_to(outside)
    for hostile in (str(outside), {"path": str(outside)}, str(uploads / ".." / "private.png"), str(link),
                    "/etc/passwd", {"path": None}, 42):
        with pytest.raises(UserError, match="uploaded file"):
            api_image(services, hostile)
    out = search_api(services, "", {"path": str(inside)}, "cirr_task7", "never", 3)
    assert out["route"] == "direct" and len(out["hits"]) == 3 and out["model"]["dim"] == 32
    # an uploaded file that is no image: a clear message that names the file but never a server folder
    broken = uploads / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(UserError, match="cannot be used") as caught:
        api_image(services, {"path": str(broken)})
    assert "broken.png" in str(caught.value) and str(uploads) not in str(caught.value)


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoints_load_only_safetensors_and_no_remote_code(tiny_qwen_dir, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_qwen_dir, pickled)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"pickle payloads are never opened")
    with pytest.raises(OSError, match="safetensors"):
        load_model(pickled)
    remote = tmp_path / "remote"
    shutil.copytree(tiny_qwen_dir, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    config["model_type"] = "evil"
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises((ValueError, OSError, ModelNotFoundError)):
        load_model(remote)  # trust_remote_code is off unless the caller asks for it
