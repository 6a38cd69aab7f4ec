{#- One kubeconfig, CA and client certificate and key embedded from the PKI files, used
    for --kubeconfig, --authentication-kubeconfig and --authorization-kubeconfig. #}
{%- from tpldir ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - .config
  - .pki

kcm-kubeconfig-directory:
  file.directory:
    - name: {{ kcm.paths.kubeconfig }}
    - user: {{ kcm.user }}
    - group: {{ kcm.group }}
    - mode: '0755'
    - makedirs: true
    - require:
      - kcm_config: kcm-config-validated

kcm-kubeconfig-file:
  kcm_kubeconfig.managed:
    - name: {{ files.kubeconfig }}
    - server: {{ kcm.apiserver }}
    - cluster: {{ kcm.cluster }}
    - ca_file: {{ files.ca_cert }}
    - cert_file: {{ files.cert }}
    - key_file: {{ files.key }}
    - user: {{ kcm.user }}
    - group: {{ kcm.group }}
    - require:
      - file: kcm-kubeconfig-directory
      - sls: {{ tpldir }}.pki
