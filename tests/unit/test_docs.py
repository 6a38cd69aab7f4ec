"""The pillar reference (docs/pillar.md) is the defaults, and pillar.example covers every key."""

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, prefix + (key,))
        else:
            yield ":".join(prefix + (key,))


def test_the_pillar_reference_matches_defaults():
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/pillar_reference.py"), "--check", str(REPO / "docs/pillar.md")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_every_default_has_a_description_in_the_reference():
    sys.path.insert(0, str(REPO / "scripts"))
    import pillar_reference

    undocumented = [key for key, _, text in pillar_reference.rows() if not text]
    assert undocumented == []


def test_pillar_example_sets_every_section_of_the_defaults():
    defaults = yaml.safe_load((REPO / "formula/kcm/defaults.yaml").read_text())["kcm"]
    example = yaml.safe_load((REPO / "pillar.example").read_text())["kcm"]
    optional = {
        "pki:signer_cert",
        "pki:signer_key",
        "pki:ca_server",
        "pki:signing_policy",
        "pki:days_valid",
        "pki:days_remaining",
        "pki:key_algo",
        "pki:key_size",
    }
    present = set(leaves(example))
    missing = sorted(
        key
        for key in set(leaves(defaults)) - optional
        if key not in present and not any(p.startswith(key + ":") for p in present)
    )
    assert missing == [], f"pillar.example lacks {missing}"
