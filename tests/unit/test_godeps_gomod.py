"""scripts/godeps_gomod.py: a go.mod for a Kubernetes release without one (v1.14), from its
Godeps.json, with every revision named by a version the module proxy serves for that commit."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("godeps_gomod", REPO / "scripts" / "godeps_gomod.py")
godeps_gomod = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(godeps_gomod)


@pytest.mark.parametrize(
    ("package", "module"),
    [
        ("github.com/docker/docker/pkg/term", "github.com/docker/docker"),
        ("bitbucket.org/bertimus9/systemstat", "bitbucket.org/bertimus9/systemstat"),
        ("golang.org/x/net/http2/hpack", "golang.org/x/net"),
        ("gonum.org/v1/gonum/graph/simple", "gonum.org/v1/gonum"),
        ("gopkg.in/natefinch/lumberjack.v2", "gopkg.in/natefinch/lumberjack.v2"),
        ("gopkg.in/gcfg.v1/scanner", "gopkg.in/gcfg.v1"),
        ("google.golang.org/grpc/balancer/roundrobin", "google.golang.org/grpc"),
        ("cloud.google.com/go/compute/metadata", "cloud.google.com/go"),
        ("k8s.io/utils/exec", "k8s.io/utils"),
        ("sigs.k8s.io/structured-merge-diff/fieldpath", "sigs.k8s.io/structured-merge-diff"),
        ("vbom.ml/util/sortorder", "vbom.ml/util"),
    ],
)
def test_module_root(package, module):
    assert godeps_gomod.module_root(package) == module


def test_module_pins_groups_packages_and_refuses_two_revisions():
    deps = {
        "Deps": [
            {"ImportPath": "golang.org/x/net/http2", "Rev": "a" * 40},
            {"ImportPath": "golang.org/x/net/context", "Rev": "a" * 40, "Comment": "v1.0"},
        ]
    }
    assert godeps_gomod.module_pins(deps) == {"golang.org/x/net": ("a" * 40, "")}
    deps["Deps"].append({"ImportPath": "golang.org/x/net/idna", "Rev": "b" * 40})
    with pytest.raises(ValueError, match="golang.org/x/net: two revisions"):
        godeps_gomod.module_pins(deps)


@pytest.mark.parametrize(
    ("comment", "tag"),
    [
        ("v1.1.0", "v1.1.0"),
        ("v1.0", "v1.0.0"),
        ("v21.4.0", "v21.4.0"),
        ("v1.3.1-coreos.6", "v1.3.1-coreos.6"),
        ("v1.2.0-beta.1", "v1.2.0-beta.1"),
        # git describe of a commit after a tag, a non-semver tag, none
        ("v0.2.0-14-g8e90cee79f8237", None),
        ("0.2-15-g8c31c18f31ede9", None),
        ("docs-v1.12.0-rc4-2016-07-15-9510-ga9fbbdc8dd8794", None),
        ("", None),
    ],
)
def test_exact_tag(comment, tag):
    assert godeps_gomod.exact_tag(comment) == tag


def test_reference_versions_reads_require_replace_and_pins_lines():
    text = """module k8s.io/kubernetes

go 1.12

require (
\tgithub.com/davecgh/go-spew v1.1.1
\tk8s.io/api v0.0.0
)

replace (
\tgolang.org/x/sys => golang.org/x/sys v0.0.0-20190209173611-3b5209105503
\tk8s.io/api => ./staging/src/k8s.io/api
)
# a comment
k8s.io/klog v0.0.0-20190306015804-8e90cee79f82
"""
    found = godeps_gomod.reference_versions(text)
    assert found["github.com/davecgh/go-spew"] == {"v1.1.1"}
    assert found["golang.org/x/sys"] == {"v0.0.0-20190209173611-3b5209105503"}
    assert found["k8s.io/klog"] == {"v0.0.0-20190306015804-8e90cee79f82"}
    assert found["k8s.io/api"] == {"v0.0.0"}


def test_candidates_hash_match_first_then_the_exact_tag():
    refs = {
        "k8s.io/klog": {"v0.3.1", "v0.0.0-20190306015804-8e90cee79f82"},
        "github.com/coreos/etcd": {"v3.3.13+incompatible"},
    }
    rev = "8e90cee79f823779174776412c13478955131846"
    assert godeps_gomod.candidates("k8s.io/klog", rev, "v0.2.0-14-g8e90cee79f8237", refs) == [
        "v0.0.0-20190306015804-8e90cee79f82"
    ]
    # a tag of v2 or later: +incompatible first (no go.mod then), the plain tag second
    assert godeps_gomod.candidates("github.com/coreos/etcd", "2" * 40, "v3.3.10", refs) == [
        "v3.3.10+incompatible",
        "v3.3.10",
    ]
    # another version of the same module is no candidate: it is another commit
    assert godeps_gomod.candidates("k8s.io/klog", "f" * 40, "", refs) == []


def test_choose_takes_the_first_served_and_names_the_rest():
    pins = {
        "github.com/coreos/etcd": ("2" * 40, "v3.3.10"),
        "vbom.ml/util": ("d" * 40, ""),
        "github.com/lib/pq": ("8" * 40, ""),
    }
    refs = {"vbom.ml/util": {"v0.0.0-20160121211510-dddddddddddd"}}
    served = {
        ("github.com/coreos/etcd", "v3.3.10+incompatible"): None,
        ("github.com/coreos/etcd", "v3.3.10"): "invalid version",
        ("vbom.ml/util", "v0.0.0-20160121211510-dddddddddddd"): "403 Forbidden",
    }
    versions, missing = godeps_gomod.choose(pins, refs, served)
    assert versions == {"github.com/coreos/etcd": "v3.3.10+incompatible"}
    assert "serves none of v0.0.0-20160121211510-dddddddddddd" in missing["vbom.ml/util"]
    assert "no known version" in missing["github.com/lib/pq"]


def test_parse_downloads_keys_by_module_and_version():
    stream = "\n".join(
        json.dumps(item, indent="\t")
        for item in [
            {"Path": "gopkg.in/yaml.v2", "Version": "v2.2.1+incompatible", "Error": "403 Forbidden"},
            {"Path": "gopkg.in/yaml.v2", "Version": "v2.2.1", "Dir": "/x"},
        ]
    )
    assert godeps_gomod.parse_downloads(stream) == {
        ("gopkg.in/yaml.v2", "v2.2.1+incompatible"): "403 Forbidden",
        ("gopkg.in/yaml.v2", "v2.2.1"): None,
    }


def test_render_requires_and_pins_every_module_and_maps_staging_to_local_dirs():
    text = godeps_gomod.render(
        "v1.14.2", {"golang.org/x/net": "v0.0.0-20190206173232-65e2d4e15006"}, ["client-go", "api"]
    )
    assert "module kcmformula.local/kubernetes" in text
    assert "\tk8s.io/kubernetes v1.14.2\n" in text
    assert "\tgolang.org/x/net v0.0.0-20190206173232-65e2d4e15006\n" in text
    assert "\tgolang.org/x/net => golang.org/x/net v0.0.0-20190206173232-65e2d4e15006\n" in text
    assert "\tk8s.io/api v0.0.0\n" in text and "\tk8s.io/api => ./staging/api\n" in text
    assert text.index("k8s.io/api =>") < text.index("k8s.io/client-go =>")


def test_pins_file_lines_are_module_and_pseudo_version():
    text = (REPO / "scripts" / "k8s-godeps-pins.txt").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == sorted(lines)
    found = godeps_gomod.reference_versions(text)
    assert sum(len(v) for v in found.values()) == len(lines)
