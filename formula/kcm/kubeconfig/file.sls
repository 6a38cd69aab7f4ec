{#- One kubeconfig, CA and client certificate and key embedded from the PKI files, used
    for --kubeconfig, --authentication-kubeconfig and --authorization-kubeconfig. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}
{%- set files = kcm.files %}

include:
  - {{ tplroot }}.config
  - {{ tplroot }}.pki

kcm-kubeconfig-directory:
  file.directory:
    - name: {{ kcm.paths.kubeconfig | json }}
    - user: {{ kcm.user | json }}
    - group: {{ kcm.group | json }}
    - mode: '0755'
    - makedirs: true
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
    - user: {{ kcm.user | json }}
    - group: {{ kcm.group | json }}
    - require:
      - file: kcm-kubeconfig-directory
      - sls: {{ tplroot }}.pki.files
