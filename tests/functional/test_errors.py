"""The kcm execution module as Salt's loader builds it (both files under ``kcm.``): a call that
cannot answer raises CommandExecutionError with its reason in ``info`` and one line of text,
which is what salt-call prints after ``Error running 'kcm.<function>':``."""

import pytest
from salt.exceptions import CommandExecutionError


def _raised(call, **kwargs):
    with pytest.raises(CommandExecutionError) as excinfo:
        call(**kwargs)
    return excinfo.value


def test_both_files_answer_under_kcm(modules):
    # _modules/kcm.py: the lock; _modules/kcm_local.py: the binary and /healthz
    homes = {
        "leader": "kcm",
        "is_leader": "kcm",
        "cluster_id": "kcm",
        "status": "kcm",
        "version": "kcm_local",
        "args": "kcm_local",
        "preflight": "kcm_local",
        "health": "kcm_local",
    }
    found = {name: getattr(modules.kcm, name).func.__module__.rpartition(".")[2] for name in homes}
    assert found == homes


@pytest.mark.parametrize(
    "function, kwargs, reason, text",
    [
        (
            "leader",
            {"kubeconfig": "/nonexistent/kcm.kubeconfig"},
            "kubeconfig",
            "kubeconfig: /nonexistent/kcm.kubeconfig: cannot read it (No such file or directory)",
        ),
        (
            "is_leader",
            {"kubeconfig": "/nonexistent/kcm.kubeconfig"},
            "kubeconfig",
            "kubeconfig: /nonexistent/kcm.kubeconfig: cannot read it (No such file or directory)",
        ),
        (
            "version",
            {"binary": "/nonexistent/kube-controller-manager"},
            "binary",
            "binary: /nonexistent/kube-controller-manager does not exist",
        ),
        (
            "health",
            {"secure_port": 10257, "ca_cert": "/nonexistent/ca.pem"},
            "tls",
            "tls: cannot read CA certificate /nonexistent/ca.pem (No such file or directory)",
        ),
    ],
)
def test_a_call_that_cannot_answer_raises_one_line_with_its_reason(modules, function, kwargs, reason, text):
    exc = _raised(getattr(modules.kcm, function), **kwargs)
    assert exc.info["reason"] == reason
    assert str(exc) == text


def test_without_a_deployment_the_error_names_the_fix(modules):
    if modules.kcm_config.deployed():
        modules.file.remove(modules.kcm_config.resolve({})["files"]["deployed"])
    exc = _raised(modules.kcm.leader)
    assert exc.info["reason"] == "not_deployed"
    assert str(exc) == (
        "not_deployed: no kubeconfig= given and kcm is not deployed on this minion (run state.apply kcm first)"
    )
    assert _raised(modules.kcm.version).info["reason"] == "not_deployed"
    assert _raised(modules.kcm_pki.cert_status).info["reason"] == "not_deployed"
