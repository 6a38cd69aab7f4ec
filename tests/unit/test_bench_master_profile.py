"""bench/master_profile.py sums py-spy's samples of a salt-master into the parts a reader of
docs/bench.md is told about: a sample with the formula's code on its stack is the formula's
(what it calls included); any other counts for the leaf-most frame that names a part of Salt."""

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "bench" / "master_profile.py"
SPEC = importlib.util.spec_from_file_location("bench_master_profile", PATH)
profile = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(profile)

ENGINE = (
    'process 10:"salt-master EngineProcess";run (salt/engines/__init__.py:100);'
    "handle_batch (kcm_alert.py:40);verify (kcm_trust.py:77);verify (cryptography/hazmat/rsa.py:12)"
)
MWORKER = 'process 11:"salt-master MWorker-0";_handle_payload (salt/master.py:1100);decrypt (salt/crypt.py:1500)'
PUBLISH = 'process 12:"EventPublisher";handle_publish (salt/utils/event.py:900);loads (salt/payload.py:60)'


@pytest.mark.parametrize(
    "stack, part",
    [
        (ENGINE, "formula: kcm_alert engine, runner and utils"),
        (MWORKER, "Salt: crypto (AES of each request, RSA of keys)"),
        (PUBLISH, "Salt: serialization (msgpack)"),
        ('process 13:"x";<module> (threading.py:1)', profile.OTHER),
    ],
)
def test_a_sample_counts_for_the_formula_or_the_leaf_most_part_of_salt(stack, part):
    assert profile.part_of(stack) == part


def test_samples_are_summed_into_cpu_seconds_at_the_sampling_rate():
    lines = [f"{ENGINE} 150", f"{MWORKER} 50", f"{MWORKER} 25", "a truncated line", ""]

    totals = profile.shares(lines, rate=100)

    assert totals == {
        "formula: kcm_alert engine, runner and utils": 1.5,
        "Salt: crypto (AES of each request, RSA of keys)": 0.75,
    }
    table = profile.table(totals, reports=300)
    assert table[-1] == "| all sampled | 2.25 | 100 % | 7.50 |"
    assert "| formula: kcm_alert engine, runner and utils | 1.50 | 67 % | 5.00 |" in table
