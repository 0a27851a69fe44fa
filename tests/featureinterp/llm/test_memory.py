import os
import subprocess
import sys

import pytest

from featureinterp.llm.memory import limit_malloc_arenas


def test_arenas_are_capped_unless_the_user_set_them(monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas(2) is True
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas(2) is False
    with pytest.raises(ValueError, match="at least 1"):
        limit_malloc_arenas(0)


def test_threads_after_the_cap_share_the_arenas():
    """Eight threads allocating: with the cap, glibc reports at most 2 arenas (malloc_info)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    code = """
import ctypes, threading, os, tempfile
from featureinterp.llm.memory import limit_malloc_arenas
limit_malloc_arenas(2)
def work():
    blocks = [bytearray(4096) for _ in range(200)]
    ev.wait()
ev = threading.Event()
ts = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in ts]
libc = ctypes.CDLL("libc.so.6")
libc.fdopen.restype = ctypes.c_void_p
libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fflush.argtypes = [ctypes.c_void_p]
f = tempfile.TemporaryFile()
fp = libc.fdopen(os.dup(f.fileno()), b"w")
libc.malloc_info(0, fp); libc.fflush(fp)
ev.set(); [t.join() for t in ts]
f.seek(0); print(f.read().decode().count("<heap nr="))
"""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert int(out.stdout.strip()) <= 2


def test_arena_environment_respects_the_user_and_the_platform():
    from featureinterp.llm.memory import arena_environment

    assert arena_environment({"PATH": "/bin"}, "linux") == {"PATH": "/bin", "MALLOC_ARENA_MAX": "2"}
    assert arena_environment({"MALLOC_ARENA_MAX": "8"}, "linux") is None
    assert arena_environment({}, "darwin") is None


def test_console_script_runs_with_the_arena_variable_set(tmp_path):
    """The installed `featureinterp` script re-executes itself with MALLOC_ARENA_MAX=2: the
    re-executed process reports it (via a sitecustomize on PYTHONPATH that prints its environment)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    script = os.path.join(os.path.dirname(sys.executable), "featureinterp")
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\nprint('ARENA=' + os.environ.get('MALLOC_ARENA_MAX', '-'), file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env["PYTHONPATH"] = str(tmp_path)
    out = subprocess.run([script, "presets", "list"], capture_output=True, text=True, env=env, check=True)
    assert out.stderr.splitlines() == ["ARENA=-", "ARENA=2"]  # the script, then its re-execution
    assert "embedded" in out.stdout


def test_freed_heap_memory_goes_back_to_the_os():
    """Blocks below glibc's mmap threshold freed around a few live ones stay resident until
    release_free_memory trims the heap (a fresh interpreter, so the heap is only ours)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    code = """
import os
from featureinterp.llm.memory import release_free_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
blocks = [bytearray(b"x" * 60_000) for _ in range(3000)]  # ~170 MiB in 60 kB heap blocks
keep = blocks[::500]  # a few live blocks pin the heap's top
del blocks
before = rss()
released = release_free_memory()
print(before - rss(), released)
"""
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    freed, released = out.stdout.split()
    assert released == "True" and float(freed) > 100, out.stdout
