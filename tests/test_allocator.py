"""The process re-executes itself under tcmalloc (jaxllm/allocator.py) and keeps the preload from its children."""
import os
import subprocess
import sys

import pytest

from jaxllm.allocator import find_tcmalloc

PROBE = ("from jaxllm.allocator import reexec_under_tcmalloc, tcmalloc_loaded; reexec_under_tcmalloc(); "
         "import os; print(tcmalloc_loaded(), repr(os.environ.get('LD_PRELOAD', '')), os.getpid())")


def probe(**env):
    base = {k: v for k, v in os.environ.items() if not k.startswith("JAXLLM_TCMALLOC") and k != "LD_PRELOAD"}
    p = subprocess.Popen([sys.executable, "-c", PROBE], env={**base, **env}, stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=60)
    loaded, preload, pid = out.split()
    return loaded == "True", preload, int(pid) == p.pid


# CI installs it (.ci/apt-packages.txt), so there a missing library fails instead of skipping
@pytest.mark.skipif(find_tcmalloc() is None and not os.environ.get("CI"),
                    reason="libtcmalloc not installed (Debian: libtcmalloc-minimal4)")
def test_reexec_loads_tcmalloc_in_the_same_pid_and_strips_the_preload_for_children():
    loaded, preload, same_pid = probe()
    assert loaded and same_pid  # exec, not a child: kill -9 of the pid still hits the run
    assert preload == "''"


def test_runs_without_tcmalloc_when_told():
    loaded, _, _ = probe(JAXLLM_TCMALLOC="0")
    assert not loaded
