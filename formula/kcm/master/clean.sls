{#- Removes <config_dir>/kcm.conf; the salt-master drops the engine, reactor and kcm_alert
    settings at its next restart. The synced runners stay (they are inert without it). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}

include:
  - {{ tplroot }}.config.paths

kcm-master-clean-config-validated:
  kcm_config.validated:
    - name: kcm:master
    - config: {{ {"master": kcm.master} | json }}
    - section: master_clean
    - require:
      - kcm_config: kcm-config-paths-validated

kcm-master-clean-config:
  file.absent:
    - name: {{ (kcm.master.config_dir ~ '/kcm.conf') | json }}
    - require:
      - kcm_config: kcm-master-clean-config-validated
