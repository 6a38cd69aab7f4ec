{#- What every clean requires: the paths and the service name it removes come from pillar,
    and a bad one (a service name with ../) is refused before anything is removed. No PKI
    is needed to clean, so none is passed (state arguments are printed by show_sls). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}

kcm-config-paths-validated:
  kcm_config.validated:
    - name: kcm
    - config: {{ {"kcm": salt['kcm_config.without_pems'](kcm)} | json }}
    - section: paths
