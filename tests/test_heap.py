"""heap.keep_freed_memory: glibc keeps freed arrays, so training steps stop faulting pages in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from minimal_icl.heap import keep_freed_memory

# Minor page faults per training step at batch 256: with keep_freed_memory at most
# KEPT_FAULTS (measured 0.02), with glibc's defaults more than DEFAULT_FAULTS (measured
# 580), so the two bounds tell the settings apart by far.
KEPT_FAULTS = 10
DEFAULT_FAULTS = 100


def glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


def test_keep_freed_memory_is_set_once():
    first = keep_freed_memory()
    assert keep_freed_memory() is first
    assert first == glibc()


FAULTS_PER_STEP = """
import resource, sys
import minimal_icl.heap as heap
from minimal_icl import init_params
from minimal_icl.data import regression_prompts
from minimal_icl.train import optimizer_init, paper_setting, train_step
if sys.argv[1] == "defaults":
    heap._done.append(False)  # keep_freed_memory has "run": glibc keeps its defaults
setup = paper_setting()
params = init_params(setup.config, seed=0)
state = optimizer_init(setup.optimizer, params)
batches = [regression_prompts(256, setup.n_context, setup.d, seed=i) for i in range(4)]
def step(i):
    global params, state
    params, state, _ = train_step(params, state, setup.config, batches[i % 4],
                                  setup.optimizer, 1e-3)
for i in range(20):
    step(i)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(100):
    step(i)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 100)
"""


def faults_per_step(heap_setting: str) -> float:
    """Minor page faults per training step at batch 256 in a fresh process (the setting
    is per process), after twenty steps, with keep_freed_memory ("set") or glibc's
    defaults ("defaults")."""
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_STEP, heap_setting],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    return float(result.stdout)


@pytest.mark.skipif(not glibc(), reason="mallopt is glibc's")
def test_training_steps_do_not_fault_pages_in():
    """At batch 256, train_step (which sets keep_freed_memory) faults no page in after
    its first steps; with glibc's defaults the same steps fault hundreds a step (measured
    0.02 against 580), so the first number tests the setting, not glibc."""
    kept = faults_per_step("set")
    defaults = faults_per_step("defaults")
    assert kept < KEPT_FAULTS, kept
    assert defaults > DEFAULT_FAULTS, defaults  # the setting is what keeps the heap
