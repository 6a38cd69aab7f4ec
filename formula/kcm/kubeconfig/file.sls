{#- One kubeconfig, CA and client certificate and key embedded from the PKI files, used
    for --kubeconfig, --authentication-kubeconfig and --authorization-kubeconfig (through
    systemd's LoadCredential= copy, kcm_systemd.credentials). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - {{ tplroot }}.config
  - {{ tplroot }}.pki

kcm-kubeconfig-directory:
  kcm_install.directories_owned:
    - name: kcm-kubeconfig
    - directories: {{ {'kcm:paths:kubeconfig': kcm.paths.kubeconfig} | json }}
    - user: {{ kcm.user | json }}
    - require:
      - kcm_config: kcm-config-validated

kcm-kubeconfig-file:
  kcm_kubeconfig.managed:
    - name: {{ files.kubeconfig | json }}
    - server: {{ kcm.apiserver | json }}
    - cluster: {{ kcm.cluster | json }}
    - ca_file: {{ files.ca_cert | json }}
    - cert_file: {{ files.cert | json }}
    - key_file: {{ files.key | json }}
    {#- the PEMs this run writes from pillar: a dry run predicts from them #}
    - ca_pillar: kcm:pki:ca_cert
    {%- if kcm.pki.mode == 'pillar' %}
    - cert_pillar: kcm:pki:cert
    - key_pillar: kcm:pki:key
    {%- endif %}
    {#- root's alone; KCM reads systemd's copy, or (systemd < 247) it as the KCM group #}
    - user: root
    - group: {{ ('root' if kcm.credentials.mode == 'systemd' else kcm.group) | json }}
    - mode: {{ ('0600' if kcm.credentials.mode == 'systemd' else '0640') | json }}
    - require:
      - kcm_install: kcm-kubeconfig-directory
      - sls: {{ tplroot }}.pki.files
