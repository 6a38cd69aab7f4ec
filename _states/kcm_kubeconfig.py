"""
State that writes a kubeconfig with the CA, client certificate and key embedded from the
PKI files on disk, so a renewed certificate is carried into the kubeconfig on the next run.
"""

import base64
import logging
import os

import salt.utils.data
import yaml

log = logging.getLogger(__name__)

__virtualname__ = "kcm_kubeconfig"


def __virtual__():
    return __virtualname__


def _b64(path, pillar_key=None):
    """The base64 of a PEM file; in test mode, of what this run will write there from
    ``pillar_key`` (file.managed's contents_pillar, newline-terminated), so a dry run
    predicts the kubeconfig change a PKI rotation brings."""
    if pillar_key and __opts__.get("test"):
        # __pillar__ of the state run: the pillar= override of state.apply included.
        text = str(salt.utils.data.traverse_dict_and_list(__pillar__, pillar_key, "", delimiter=":"))
        if text and not text.endswith("\n"):
            text += "\n"
        return base64.b64encode(text.encode()).decode()
    # Root reads it: a regular file of root's, never through a link or from a FIFO.
    return base64.b64encode(__utils__["kcm_kubeconfig.read_trusted"](path)).decode()  # noqa: F821


def _render(
    server, cluster, ca_file, cert_file, key_file, user_name="system:kube-controller-manager", pillar_keys=None
):
    """Return the kubeconfig text for the given files (read now)."""
    keys = pillar_keys or {}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_file, keys.get("ca"))},
            }
        ],
        "users": [
            {
                "name": user_name,
                "user": {
                    "client-certificate-data": _b64(cert_file, keys.get("cert")),
                    "client-key-data": _b64(key_file, keys.get("key")),
                },
            }
        ],
        "contexts": [{"name": "default", "context": {"cluster": cluster, "user": user_name}}],
        "current-context": "default",
        "preferences": {},
    }
    return yaml.safe_dump(doc, default_flow_style=False, sort_keys=True)


def managed(
    name,
    server,
    cluster,
    ca_file,
    cert_file,
    key_file,
    user="root",
    group="root",
    mode="0600",
    ca_pillar=None,
    cert_pillar=None,
    key_pillar=None,
):
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
            - ca_pillar: kcm:pki:ca_cert

    ca_pillar, cert_pillar, key_pillar
        The pillar keys the same run writes those files from (``kcm.pki``): in test mode
        their text is used instead of the files on disk.
    """
    missing = [p for p in (ca_file, cert_file, key_file) if not os.path.isfile(p)]
    if missing:
        if __opts__.get("test"):
            return {
                "name": name,
                "result": None,
                "comment": f"kubeconfig {name} would be written once {', '.join(missing)} exist",
                "changes": {"written": name},
            }
        return {
            "name": name,
            "result": False,
            "changes": {},
            "comment": f"cannot write kubeconfig {name}: missing {', '.join(missing)}",
        }
    try:
        contents = _render(
            server,
            cluster,
            ca_file,
            cert_file,
            key_file,
            pillar_keys={"ca": ca_pillar, "cert": cert_pillar, "key": key_pillar},
        )
    except ValueError as exc:
        return {"name": name, "result": False, "changes": {}, "comment": f"cannot write kubeconfig {name}: {exc}"}
    ret = __states__["file.managed"](
        name=name,
        contents=contents,
        user=user,
        group=group,
        mode=mode,
        makedirs=True,
        follow_symlinks=False,
        show_changes=False,
    )
    ret["name"] = name
    return ret
