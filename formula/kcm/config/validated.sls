{#- Validate the merged config before anything on disk changes; every other state of the
    formula requires this one. The state gets the config without PEM text (and the PEMs'
    fingerprints) and reads the PEMs from pillar itself: state arguments are printed by
    state.show_sls and show_lowstate, so no key may be one. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import kcm with context %}

kcm-config-validated:
  kcm_config.validated:
    - name: kcm
    - config: {{ {"kcm": salt['kcm_config.without_pems'](kcm)} | json }}
    - pems: {{ salt['kcm_config.pem_fingerprints'](kcm) | json }}
