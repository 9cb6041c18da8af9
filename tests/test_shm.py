"""Large values between local processes go through shared memory, and leave nothing behind."""

import gc
import os

import dask.array as da
import numpy as np
from conftest import job_files

from wukong import Client, LocalCluster, wait
from wukong.store import shm


def test_large_intermediates_use_shared_memory_and_are_removed():
    x = da.random.RandomState(7).random_sample((2000, 2000), chunks=(1000, 1000))  # 8 MB blocks
    y = (x @ x.T).sum(axis=0)
    with LocalCluster(n_workers=2) as cluster:
        assert cluster.shm_dir is not None and os.path.isdir(cluster.shm_dir)
        client = Client(cluster, progress=False)
        np.testing.assert_allclose(y.compute(scheduler=client.get), y.compute(scheduler="sync"))
        assert cluster.store.deleted(10)  # after the results are returned (``Store.delete_job_soon``)
        assert os.listdir(cluster.shm_dir) == [shm.POOL]  # the job's files went with its keys, into the pool
        # the 8 MB blocks never entered Redis: its peak memory stays under one block
        assert cluster.store.mds.info("memory")["used_memory_peak"] < 8_000_000
        shm_dir = cluster.shm_dir
    assert not os.path.exists(shm_dir)


def test_large_results_come_back_writable_through_shared_memory():
    with LocalCluster(n_workers=1) as cluster:
        out = Client(cluster, progress=False).get({"a": (np.ones, (1000, 1000))}, "a")
        assert out.shape == (1000, 1000) and out.flags.writeable
        out[0, 0] = 2.0


def test_a_result_too_long_for_the_stream_reaches_the_client_through_its_file_alone():
    with LocalCluster(n_workers=1) as cluster:
        client, mds = Client(cluster, progress=False), cluster.store.mds

        def traffic(nbytes):  # bytes sent to Redis and GETs run by it, for a job of one result
            before = mds.info("stats")["total_net_input_bytes"], mds.info("commandstats").get("cmdstat_get", {})
            out = client.get({"a": (np.ones, nbytes // 8)}, "a")
            assert out.nbytes == nbytes and out.sum() == nbytes // 8
            assert cluster.store.deleted(10)  # its deletes too (``Store.delete_job_soon``)
            after = mds.info("stats")["total_net_input_bytes"], mds.info("commandstats").get("cmdstat_get", {})
            return after[0] - before[0], after[1].get("calls", 0) - before[1].get("calls", 0)

        small = traffic(8_000)  # on the stream
        big = traffic(4 * shm.SHM_MIN)  # in a file, mapped by the client without asking Redis where
        assert big[0] < small[0] + 16_000  # it never entered Redis
        assert big[1] == small[1]


def test_a_value_goes_to_a_file_from_the_size_the_writer_gives(cluster, monkeypatch):
    store, value = cluster.store, b"x" * 1000

    def in_file(name, **given):
        batch = store.batch()
        batch.kvs_set(name, value, **given)
        batch.execute()
        stored = store.mds.get(name)
        batch.undo()  # the key and its file
        assert not store.mds.exists(name) and not os.path.exists(os.path.join(cluster.shm_dir, shm.filename(name)))
        return shm.is_marker(stored)

    assert not in_file("wk:thresholds:d:1")  # under shm.SHM_MIN: Redis
    assert in_file("wk:thresholds:d:2", shm_min=1000)
    assert not in_file("wk:thresholds:d:3", shm_min=1001)
    monkeypatch.setattr(shm, "SHM_MIN", 1000)  # the default is read when writing, not when imported
    assert in_file("wk:thresholds:d:4")


def test_shared_memory_can_be_turned_off():
    x = da.random.RandomState(7).random_sample((2000, 2000), chunks=(1000, 1000))
    with LocalCluster(n_workers=1, shared_memory=False) as cluster:
        assert cluster.shm_dir is None
        np.testing.assert_allclose(
            (x + x.T).compute(scheduler=Client(cluster, progress=False).get), (x + x.T).compute()
        )
        assert cluster.store.mds.info("memory")["used_memory_peak"] > 8_000_000  # the blocks went through Redis


def test_a_value_written_in_pieces_reads_back_whole(tmp_path):
    pieces = [b"head", memoryview(bytearray(range(256)) * 40)[3:], b"", b"tail"]
    marker = shm.write(str(tmp_path), "wk:job:d:7", pieces)
    assert bytes(shm.read(marker)) == b"".join(bytes(p) for p in pieces)


def test_a_killed_clients_shared_memory_is_removed_by_the_next_cluster():
    """A client killed with SIGKILL cannot remove its directory on /dev/shm (nor the values
    in it); the next cluster on the machine does, and leaves a living cluster's alone."""
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import time
        from wukong import LocalCluster
        cluster = LocalCluster(n_workers=1)
        open(cluster.shm_dir + "/wk-a-value", "wb").write(b"x" * 1000)
        print(cluster.shm_dir, flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    killed = proc.stdout.readline().strip()
    with LocalCluster(n_workers=1) as living:
        assert os.path.isdir(killed)  # its client still holds it
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with LocalCluster(n_workers=1) as cluster:
            assert not os.path.exists(killed)
            assert os.path.isdir(living.shm_dir) and os.path.isdir(cluster.shm_dir)
    assert not os.path.exists(living.shm_dir)


def _pool(directory):
    return {e.name: e.inode() for e in os.scandir(os.path.join(directory, shm.POOL))}


def test_the_next_job_writes_into_the_files_of_the_last():
    """An ended job's files are kept (the pool) and the next job's values of about the
    same size are written into them: the same files, not new ones."""
    x = da.random.RandomState(7).random_sample((2000, 2000), chunks=(1000, 1000))
    y = (x @ x.T).sum(axis=0)
    expected = y.compute(scheduler="sync")
    with LocalCluster(n_workers=2) as cluster:
        client = Client(cluster, progress=False)
        np.testing.assert_allclose(y.compute(scheduler=client.get), expected)
        first = _pool(cluster.shm_dir)
        assert first
        np.testing.assert_allclose(y.compute(scheduler=client.get), expected)
        new = {name: inode for name, inode in _pool(cluster.shm_dir).items() if name not in first}
        # the second job's files are the first job's, written again.  How many values a job
        # stores varies a little (delayed I/O keeps some in memory, as timing allows), and a
        # file a worker still maps (an array not yet collected) is left, not taken
        reused = set(new.values()) & set(first.values())
        assert reused and len(reused) >= min(len(first), len(new)) - 1, (first, new)
        shm_dir = cluster.shm_dir
    assert not os.path.exists(shm_dir)


def test_a_released_held_value_leaves_its_file_to_the_pool():
    with LocalCluster(n_workers=1) as cluster:
        client = Client(cluster, progress=False)
        y = client.persist(da.ones((4, 65536), chunks=(1, 65536)))  # 4 held chunks of 512 KiB
        wait(list(dict(y.__dask_graph__()).values()))
        held = job_files(cluster)
        assert len(held) == 4
        inodes = {name: os.stat(os.path.join(cluster.shm_dir, name)).st_ino for name in held}
        del y
        gc.collect()
        client.futures.flush()
        assert job_files(cluster) == []
        kept = {name.partition("-")[2]: inode for name, inode in _pool(cluster.shm_dir).items()}
        assert {name: kept.get(name) for name in held} == inodes  # the same files, to be written again


def test_a_kept_file_somebody_maps_is_written_again_only_once_unmapped(tmp_path):
    directory = shm.make_dir("test-pool")
    try:
        value = np.arange(100_000, dtype="f8")
        held = shm.read(shm.write(directory, "wk:j1:d:1", memoryview(value).cast("B")))  # a result the user holds
        shm.remove_job(directory, "j1")
        kept = os.path.join(directory, shm.POOL, f"{value.nbytes}-wk-j1-d-1")
        assert list(_pool(directory)) == [os.path.basename(kept)]  # kept, mapped as it is
        inode = os.stat(kept).st_ino
        shm.write(directory, "wk:j2:d:1", memoryview(-value).cast("B"))
        assert list(_pool(directory)) == [os.path.basename(kept)]  # not written into: a new file instead
        assert os.stat(os.path.join(directory, "wk-j2-d-1")).st_ino != inode
        np.testing.assert_array_equal(np.frombuffer(held, "f8"), value)
        # one mapped after it was kept (a reader that opened it just before): left alone too
        with open(kept, "rb") as f:
            late = shm.mmap.mmap(f.fileno(), 0, access=shm.mmap.ACCESS_READ)
        mapping = held.obj
        held.release()
        mapping.close()
        shm.write(directory, "wk:j2:d:2", memoryview(2 * value).cast("B"))
        assert os.stat(os.path.join(directory, "wk-j2-d-2")).st_ino != inode
        np.testing.assert_array_equal(np.frombuffer(late, "f8"), value)
        late.close()
        # unmapped everywhere: the next write of about its size goes into its pages
        shm.write(directory, "wk:j2:d:3", memoryview(3 * value).cast("B"))
        assert os.stat(os.path.join(directory, "wk-j2-d-3")).st_ino == inode
        np.testing.assert_array_equal(np.frombuffer(shm.read(shm.marker(directory, "wk:j2:d:3")), "f8"), 3 * value)
        assert _pool(directory) == {}
    finally:
        shm.remove_dir(directory)


def test_a_write_takes_a_kept_file_close_to_its_size_and_else_the_closest():
    directory = shm.make_dir("test-pool")
    try:
        pool = os.path.join(directory, shm.POOL)
        os.makedirs(pool, exist_ok=True)
        sizes = {"a": 1000, "b": 1500, "c": 1900, "d": 1990, "e": 5000}  # d within 1/16 of 2000
        for name, size in sizes.items():
            with open(os.path.join(pool, f"{size}-{name}"), "wb") as f:
                f.truncate(size)
        shm.write(directory, "wk:j:d:1", b"x" * 2000)  # d: taken as soon as it is read
        assert sorted(_pool(directory)) == ["1000-a", "1500-b", "1900-c", "5000-e"]
        shm.write(directory, "wk:j:d:2", b"y" * 2000)  # none close left: the closest that fits (c)
        assert sorted(_pool(directory)) == ["1000-a", "1500-b", "5000-e"]
        shm.write(directory, "wk:j:d:3", b"z" * 100)  # none fits (within 2x): a new file
        assert sorted(_pool(directory)) == ["1000-a", "1500-b", "5000-e"]
        for i, fill in ((1, b"x"), (2, b"y"), (3, b"z")):
            size = 100 if i == 3 else 2000
            assert bytes(shm.read(shm.marker(directory, f"wk:j:d:{i}"))) == fill * size
    finally:
        shm.remove_dir(directory)


def test_the_pool_is_bounded_and_emptied_when_idle(monkeypatch):
    directory = shm.make_dir("test-pool")
    try:
        monkeypatch.setattr(shm, "pool_cap", lambda: 3 * 300_000)
        for i in range(5):
            shm.write(directory, f"wk:j1:d:{i}", b"x" * 300_000)
        shm.remove_job(directory, "j1")
        assert len(_pool(directory)) == 3 and os.listdir(directory) == [shm.POOL]
        shm.trim_pool(directory, idle_s=60)
        assert len(_pool(directory)) == 3
        shm.trim_pool(directory, idle_s=0)
        assert _pool(directory) == {}
    finally:
        shm.remove_dir(directory)


def test_a_write_that_fits_no_kept_file_takes_one_nobody_took_for_a_while(monkeypatch):
    """Files an earlier job left, of sizes this job does not write, go as it writes: a
    write that fits no kept file takes one idle for ``POOL_IDLE_S`` and cuts it to its
    size; while none has been idle that long, it makes a new file and the pool stays."""
    directory = shm.make_dir("test-pool")
    try:
        pool = os.path.join(directory, shm.POOL)
        for name, size in (("a", 40_000), ("b", 50_000)):
            with open(os.path.join(pool, f"{size}-{name}"), "wb") as f:
                f.write(b"o" * size)
        monkeypatch.setattr(shm, "POOL_IDLE_S", 3600.0)
        shm.write(directory, "wk:j:d:1", b"x" * 1000)  # no fit, and none idle long enough: a new file
        assert sorted(_pool(directory)) == ["40000-a", "50000-b"]
        monkeypatch.setattr(shm, "POOL_IDLE_S", 0.0)
        inodes = set(_pool(directory).values())
        shm.write(directory, "wk:j:d:2", b"y" * 1000)  # no fit: the first idle one, cut to size
        assert len(_pool(directory)) == 1
        path = shm.marker(directory, "wk:j:d:2")[len(shm.MARKER) :].decode()
        assert os.stat(path).st_ino in inodes and os.stat(path).st_size == 1000
        assert bytes(shm.read(shm.marker(directory, "wk:j:d:2"))) == b"y" * 1000
        assert bytes(shm.read(shm.marker(directory, "wk:j:d:1"))) == b"x" * 1000
    finally:
        shm.remove_dir(directory)


def test_the_pool_keeps_a_quarter_of_the_memory_and_half_of_what_is_available(monkeypatch):
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < shm._available() <= total  # this machine's, read for real
    monkeypatch.setattr(shm, "_available", lambda: total)
    assert shm.pool_cap() == total // 4
    monkeypatch.setattr(shm, "_available", lambda: total // 10)
    assert shm.pool_cap() == total // 20
    monkeypatch.setattr(shm, "_available", lambda: None)  # no /proc/meminfo: an eighth, halved
    assert shm.pool_cap() == total // 16
