{#- Validate the merged config before anything on disk changes; every other state of the
    formula requires this one. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}

kcm-config-validated:
  kcm_config.validated:
    - name: kcm
    - config: {{ kcm | json }}
