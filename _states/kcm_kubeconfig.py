"""
State that writes a kubeconfig with the CA, client certificate and key embedded from the
PKI files on disk, so a renewed certificate is carried into the kubeconfig on the next run.
"""

import base64
import logging
import os

import yaml

log = logging.getLogger(__name__)

__virtualname__ = "kcm_kubeconfig"


def __virtual__():
    return __virtualname__


def _b64(path):
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode()


def _render(server, cluster, ca_file, cert_file, key_file, user_name="system:kube-controller-manager"):
    """Return the kubeconfig text for the given files (read now)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority-data": _b64(ca_file)}}
        ],
        "users": [
            {
                "name": user_name,
                "user": {"client-certificate-data": _b64(cert_file), "client-key-data": _b64(key_file)},
            }
        ],
        "contexts": [{"name": "default", "context": {"cluster": cluster, "user": user_name}}],
        "current-context": "default",
        "preferences": {},
    }
    return yaml.safe_dump(doc, default_flow_style=False, sort_keys=True)


def managed(name, server, cluster, ca_file, cert_file, key_file, user="root", group="root", mode="0600"):
    """
    Manage a kubeconfig whose certificates are embedded from files; its contents are never
    shown in the state output.

    .. code-block:: yaml

        kcm-kubeconfig-file:
          kcm_kubeconfig.managed:
            - name: /etc/k8s/kubeconfig/kube-controller-manager.kubeconfig
            - server: https://10.10.10.20:6443
            - cluster: kubernetes
            - ca_file: /etc/k8s/ssl/ca.pem
            - cert_file: /etc/k8s/ssl/kube-controller-manager.pem
            - key_file: /etc/k8s/ssl/kube-controller-manager-key.pem
    """
    missing = [p for p in (ca_file, cert_file, key_file) if not os.path.isfile(p)]
    if missing:
        if __opts__.get("test"):
            return {
                "name": name,
                "result": None,
                "changes": {},
                "comment": f"kubeconfig {name} would be written once {', '.join(missing)} exist",
            }
        return {
            "name": name,
            "result": False,
            "changes": {},
            "comment": f"cannot write kubeconfig {name}: missing {', '.join(missing)}",
        }
    contents = _render(server, cluster, ca_file, cert_file, key_file)
    ret = __states__["file.managed"](
        name=name,
        contents=contents,
        user=user,
        group=group,
        mode=mode,
        makedirs=True,
        show_changes=False,
    )
    ret["name"] = name
    return ret
