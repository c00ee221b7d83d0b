"""The caches a lease's processes fill (``jupyter_tt.caches``): tt-metal's compiled kernels per device set,
converted weights per model, in the user's own folder, bounded with least-recently-used eviction."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from jupyter_tt.caches import GIB, CacheKind, Caches, Hold, lease_environment
from jupyter_tt.config import TTSettings
from jupyter_tt.errors import ConfigError
from tests.support.kernels import run

pytestmark = pytest.mark.usefixtures("kernelspecs")

# tt_transformers' ModelArgs (tt-metal models/tt_transformers/tt/model_config.py, 17a8a99): where it writes
# a Hugging Face model's converted weights, from TT_CACHE_PATH and HF_MODEL.
VENDOR_CACHE_PATH = textwrap.dedent("""
    import os
    HF_MODEL, CACHE_PATH, device_name = os.getenv("HF_MODEL"), os.getenv("TT_CACHE_PATH"), "N300"
    if not CACHE_PATH:
        CACHE_PATH = os.path.join("model_cache", HF_MODEL, device_name)
    else:
        CACHE_PATH = os.path.join(CACHE_PATH, device_name)
""")


def env_of(client, *names):
    out, _, error = run(client, f"import os, json; print(json.dumps([os.environ.get(n) for n in {list(names)!r}]))")
    assert error is None, error
    return json.loads(out)


def test_two_kernels_of_one_user_on_two_leases_never_share_a_jit_cache_and_a_restart_keeps_its_own(kernels):
    (km1, c1), (km2, c2) = kernels("tt-n300"), kernels("tt-n300")
    (first,), (second,) = env_of(c1, "TT_METAL_CACHE"), env_of(c2, "TT_METAL_CACHE")
    root = Path(os.environ["JUPYTER_TT_CACHE_DIR"])
    assert first != second  # tt-metal's rule: concurrent processes need their own (its PR #31110)
    for path in map(Path, (first, second)):
        assert path.parent == root / "tt-metal" and path.is_dir()
        assert stat.S_IMODE(path.stat().st_mode) == 0o700 and stat.S_IMODE(root.stat().st_mode) == 0o700
    about = json.loads((Path(first) / "about.json").read_text())
    assert about == {"devices": sorted(km1.provisioner.lease.bdfs)}
    assert [e.held for e in Caches(root).entries()] == [True, True]  # held while the leases last
    km1.restart_kernel(now=True)
    c1.wait_for_ready(timeout=60)
    assert env_of(c1, "TT_METAL_CACHE") == [first]  # the same cards: their kernels are compiled already
    km2.shutdown_kernel(now=True)
    assert {e.path: e.held for e in Caches(root).entries()} == {Path(first): True, Path(second): False}


def test_a_kernel_whose_environment_names_its_model_keeps_converted_weights_in_its_users_cache_not_the_model_folder(
        kernels, tmp_path):
    model = tmp_path / "models" / "Llama-3.1-8B-Instruct"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    before = sorted(p.name for p in model.rglob("*"))
    model.chmod(0o555)  # a shared, read-only model folder
    try:
        km, client = kernels("tt-n300", env={**os.environ, "HF_MODEL": str(model)})
        out, _, error = run(client, VENDOR_CACHE_PATH + "os.makedirs(CACHE_PATH, exist_ok=True); "
                                    "open(os.path.join(CACHE_PATH, 'w.tensorbin'), 'w').write('x'); print(CACHE_PATH)")
        assert error is None, error
        written = Path(out.strip())
        assert written.is_relative_to(Path(os.environ["JUPYTER_TT_CACHE_DIR"]) / "tt-weights")
        assert (written / "w.tensorbin").is_file()
        assert sorted(p.name for p in model.rglob("*")) == before  # the model folder saw no write
        # Without jupyter-tt, tt_transformers would have written inside the model folder.
        out, _, _ = run(client, "import os\nos.environ.pop('TT_CACHE_PATH')\n" + VENDOR_CACHE_PATH + "print(CACHE_PATH)")
        assert out.strip().startswith(str(model))
    finally:
        model.chmod(0o755)


def fill(caches: Caches, kind: CacheKind, key: str, mib: int, used_at: float) -> Path:
    path = caches.entry(kind, key)
    (path / "blob").write_bytes(b"\0" * (mib << 20))
    os.utime(path / ".lock", (used_at, used_at))
    return path


def test_past_its_bound_the_least_recently_used_entries_nobody_holds_go_first(tmp_path):
    caches = Caches(tmp_path / "cache", limit_bytes=10 << 20)
    now = time.time()
    oldest = fill(caches, CacheKind.TT_METAL, "a", 4, now - 300)
    held_old = fill(caches, CacheKind.TT_WEIGHTS, "b", 4, now - 200)
    newer = fill(caches, CacheKind.TTNN_WEIGHTS, "c", 4, now - 100)
    # Another process holds b (a model server of the same user): eviction must not pull it from under it.
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from jupyter_tt.caches import Hold
        hold = Hold(Path({str(held_old)!r})); print("held", flush=True); time.sleep(60)""")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        fill(caches, CacheKind.TT_METAL, "d", 4, now)  # 16 MiB in all, over the bound of 10
        _, hold = caches.use(CacheKind.TT_METAL, "d")  # taking an entry brings the cache under its bound
        hold.close()
        # a, then c (b is held, so the next least recently used goes instead)
        assert {e.key for e in caches.entries()} == {"b", "d"} and not oldest.exists() and not newer.exists()
        assert held_old.exists() and caches.total() <= caches.limit_bytes
    finally:
        holder.kill()
        holder.wait()
    fill(caches, CacheKind.TTNN_WEIGHTS, "e", 4, now)
    removed = caches.evict()
    assert [e.key for e in removed] == ["b"]  # no longer held, and now the least recently used
    assert caches.total() <= caches.limit_bytes


def test_an_entry_held_in_this_process_survives_clear_and_its_hold_ends_with_close(tmp_path):
    caches = Caches(tmp_path / "cache", limit_bytes=GIB)
    path, hold = caches.use(CacheKind.TT_METAL, "x")
    fill(caches, CacheKind.TT_WEIGHTS, "y", 1, time.time())
    assert [e.key for e in caches.clear()] == ["y"] and path.exists()
    hold.close()
    assert [e.key for e in caches.clear()] == ["x"] and not path.exists()


def test_a_hold_on_an_entry_evicted_meanwhile_is_refused_and_use_makes_it_again(tmp_path):
    caches = Caches(tmp_path / "cache")
    path = caches.entry(CacheKind.TT_METAL, "z")
    caches.clear()
    with pytest.raises((FileNotFoundError, ConfigError)):
        Hold(path)
    again, hold = caches.use(CacheKind.TT_METAL, "z")
    assert again == path and path.is_dir()
    hold.close()


def test_the_bound_and_folder_are_settings_and_a_bad_bound_says_what_to_give(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_TT_CACHE_LIMIT_GB", "2.5")
    caches = Caches.from_settings(TTSettings())
    assert caches.limit_bytes == int(2.5 * GIB) and caches.root == Path(os.environ["JUPYTER_TT_CACHE_DIR"])
    assert TTSettings().environment()["JUPYTER_TT_CACHE_LIMIT_GB"] == "2.5"  # kernels and model servers inherit it
    monkeypatch.setenv("JUPYTER_TT_CACHE_LIMIT_GB", "lots")
    with pytest.raises(ConfigError, match="JUPYTER_TT_CACHE_LIMIT_GB='lots': give a number of GiB"):
        _ = TTSettings().cache_limit_gb


def test_a_cache_folder_others_may_write_is_refused(tmp_path):
    root = tmp_path / "shared"
    root.mkdir(mode=0o777)
    root.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by other users"):
        lease_environment(Caches(root), ["0000:04:00.0"], "N300")


def test_jupyter_tt_cache_lists_entries_and_clears_what_nobody_uses(tmp_path):
    caches = Caches(os.environ["JUPYTER_TT_CACHE_DIR"])
    fill(caches, CacheKind.TT_WEIGHTS, "k1", 1, time.time() - 60)
    _, hold = caches.use(CacheKind.TT_METAL, "k2", {"devices": ["0000:04:00.0"]})
    tt = [sys.executable, "-m", "jupyter_tt.cli", "cache"]
    listed = json.loads(subprocess.run([*tt, "--json"], capture_output=True, text=True, check=True).stdout)
    assert [(e["key"], e["held"]) for e in listed["entries"]] == [("k1", False), ("k2", True)]
    assert listed["limit_bytes"] == 100 * GIB  # the default bound
    table = subprocess.run(tt, capture_output=True, text=True, check=True).stdout
    assert "least recently used first" in table and "k2" in table and "yes" in table
    cleared = subprocess.run([*tt, "--clear"], capture_output=True, text=True, check=True).stdout
    assert cleared.startswith("removed 1 entries")
    hold.close()
